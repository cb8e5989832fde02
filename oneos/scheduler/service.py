"""The scheduler kernel service: places agents, keeps the process table.

Runs on the kernel leader (under the ``kernel`` role host), RPC target ``scheduler``.  It places each agent
with :mod:`oneos.scheduler.placement` over the live membership, asks the
chosen runtime to spawn it, wires pipelines runtime-to-runtime, and watches
the retained agent statuses to build the grid-wide process table.  When a
runtime dies its running agents are marked *lost*; those started with
``restart=on-failure`` are started again on another runtime.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from oneos.agents.host import KEEP_ENDED
from oneos.agents.manager import ENDED, LOST, AgentError
from oneos.agents.program import interpreter_for
from oneos.pubsub import messages, topics
from oneos.pubsub.rpc import RPCServer
from oneos.scheduler.placement import Needs, explain, place

log = Logger()

TARGET = "scheduler"


class SchedulerService(service.Service):
    """Placement, the process table and restarts, for the whole network."""

    name = "scheduler"

    def __init__(self, client: Any, rpc: Any, membership: Any, reactor: Any) -> None:
        self.client = client
        self.membership = membership
        self.rpc = rpc
        self.reactor = reactor
        self.table: dict[str, dict[str, Any]] = {}
        self.specs: dict[str, dict[str, Any]] = {}
        self._sub: Any = None
        self.server = RPCServer(
            client,
            TARGET,
            {
                "spawn": self.spawn,
                "pipeline": self.pipeline,
                "explain": self.explain,
                "ps": self.ps,
                "pipes": self.pipes,
                "kill": lambda agent_id, grace=None: self._forward(agent_id, "agent_kill", grace=grace),
                "pause": lambda agent_id: self._forward(agent_id, "agent_pause"),
                "resume": lambda agent_id: self._forward(agent_id, "agent_resume"),
                "locate": self.locate,
            },
        )

    def startService(self) -> None:
        super().startService()
        self.server.start()
        self.client.subscribe(topics.ALL_AGENTS, self._on_agent).addCallback(lambda sub: setattr(self, "_sub", sub))
        self.membership.on_change(self._check_runtimes)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if self._sub is not None:
            self._sub.cancel()
        return self.server.stop()

    # -- the table --------------------------------------------------------------
    def _on_agent(self, message: Any) -> None:
        if not message.payload:
            agent_id = message.topic.rsplit("/", 1)[-1]
            self.table.pop(agent_id, None)
            return
        try:
            body = messages.decode(message.payload, "agent.status")
            agent_id = messages.require(body, "id", str)
            messages.require(body, "runtime", str)
        except messages.MalformedMessage as e:
            log.warn("dropped malformed agent status on {topic}: {error}", topic=message.topic, error=str(e))
            return
        self.table[agent_id] = body

    def ps(self, all: bool = False) -> list[dict[str, Any]]:
        rows = [r for r in self.table.values() if all or r["state"] not in ENDED or r["state"] == LOST]
        return sorted(rows, key=lambda r: (r["runtime"], r.get("uptime", 0)))

    def pipes(self) -> list[dict[str, Any]]:
        """Every pipe between agents: from, to, bytes so far and average rate."""
        out = []
        for row in self.table.values():
            target = str(row.get("stdout_to", ""))
            if not target.startswith("pipe:"):
                continue
            uptime = max(float(row.get("uptime", 0)), 1e-3)
            sent = int(row.get("stdout_bytes", 0))
            out.append({"from": f"{row['id']}@{row['runtime']}", "to": target[5:], "state": row["state"],
                        "bytes": sent, "mb_per_s": round(sent / uptime / 1e6, 2)})
        return sorted(out, key=lambda p: p["from"])

    def locate(self, agent_id: str) -> dict[str, Any]:
        row = self.table.get(agent_id)
        if row is None:
            raise AgentError(f"no agent {agent_id!r} in the network")
        return row

    def _forward(self, agent_id: str, method: str, **args: Any) -> defer.Deferred:
        row = self.locate(agent_id)
        return self.rpc.call(row["runtime"], method, agent_id=agent_id, **args)

    # -- placement ----------------------------------------------------------------
    @staticmethod
    def _needs(program: str, runtime: str | None, tags: list[str] | None, exclude: list[str] | None, memory_mb: int) -> Needs:
        return Needs(interpreter=interpreter_for(program), runtime=runtime, tags=tuple(tags or ()),
                     exclude=tuple(exclude or ()), memory_mb=int(memory_mb or 0))

    def explain(self, program: str, runtime: str | None = None, tags: list[str] | None = None, memory_mb: int = 0) -> str:
        return explain(self.membership.live(), self._needs(program, runtime, tags, None, memory_mb))

    @defer.inlineCallbacks
    def spawn(self, program: str, args: list[str] | None = None, runtime: str | None = None, tags: list[str] | None = None,
              exclude: list[str] | None = None, memory_mb: int = 0, restart: str = "no", cwd: str | None = None,
              env: dict[str, str] | None = None, stdout: str = "attach", stdin: bool = True, agent_id: str | None = None,
              stderr: str = "attach", stdin_file: str | None = None) -> Any:
        """Place and start one agent; fires with its info (incl. the runtime chosen)."""
        verdict = place(self.membership.live(), self._needs(program, runtime, tags, exclude, memory_mb))
        info = yield self.rpc.call(verdict.runtime, "agent_spawn", program=program, args=list(args or []), cwd=cwd, env=env,
                                   memory_mb=memory_mb, restart=restart, stdout=stdout, stdin=stdin, agent_id=agent_id,
                                   stderr=stderr, stdin_file=stdin_file)
        self.table[info["id"]] = info
        if restart == "on-failure":
            self.specs[info["id"]] = {"program": program, "args": list(args or []), "runtime": None, "tags": tags,
                                      "memory_mb": memory_mb, "restart": restart, "cwd": cwd, "env": env, "stdout": "discard",
                                      "stdin": False}
        info["placement"] = ", ".join(verdict.reasons)
        return info

    @defer.inlineCallbacks
    def pipeline(self, stages: list[dict[str, Any]]) -> Any:
        """Start every stage, then connect each stdout to the next stdin, runtime to runtime."""
        infos = []
        try:
            for i, stage in enumerate(stages):
                info = yield self.spawn(stage["program"], stage.get("args"), stage.get("runtime"), stage.get("tags"),
                                        stdin=True)
                infos.append(info)
            for left, right in zip(infos, infos[1:]):
                where = yield self.rpc.call(right["runtime"], "agent_stdin", agent_id=right["id"])
                yield self.rpc.call(left["runtime"], "agent_pipe_out", agent_id=left["id"],
                                    to=f"{right['id']}@{right['runtime']}", **where)
        except Exception:
            for info in infos:
                self.rpc.call(info["runtime"], "agent_kill", agent_id=info["id"]).addErrback(lambda f: None)
            raise
        return infos

    # -- failures -----------------------------------------------------------------
    def _check_runtimes(self) -> None:
        live = {s.id for s in self.membership.live()}
        for agent_id, row in list(self.table.items()):
            if row["runtime"] in live or row["state"] in ENDED:
                continue
            lost = {**row, "state": LOST, "reason": f"runtime {row['runtime']} died"}
            self.table[agent_id] = lost
            topic = topics.agent(row["runtime"], agent_id)
            self.client.publish(topic, messages.encode("agent.status", **lost), qos=1, retain=True)
            self.reactor.callLater(KEEP_ENDED, self.client.publish, topic, b"", 1, True)
            log.warn("agent {id} lost with runtime {rt}", id=agent_id, rt=row["runtime"])
            spec = self.specs.pop(agent_id, None)
            if spec is None and row.get("restart") == "on-failure":
                # started under an earlier leader: rebuild what the status tells
                spec = {"program": row["program"], "args": row.get("args", []), "restart": "on-failure",
                        "stdout": "discard", "stdin": False}
            if spec is not None:
                self._restart(agent_id, row["runtime"], spec)

    def _restart(self, old_id: str, dead_runtime: str, spec: dict[str, Any]) -> None:
        d = self.spawn(exclude=[dead_runtime], **spec)

        def done(info: dict[str, Any]) -> None:
            log.info("agent {old} restarted as {new} on {rt}", old=old_id, new=info["id"], rt=info["runtime"])

        d.addCallbacks(done, lambda f: log.error("could not restart agent {id}: {error}", id=old_id, error=f.getErrorMessage()))

