"""The scheduler kernel service: places agents, keeps the process table, restarts jobs.

Runs on the kernel leader (under the ``kernel`` role host), RPC target
``scheduler``.  It places each agent with :mod:`oneos.scheduler.placement`
over the live membership (counting placements it just made, so fifty at once
spread out), asks the chosen runtime to spawn it, wires pipelines
runtime-to-runtime, and watches the retained agent statuses to build the
grid-wide process table.

Failures (see docs/failures.md):

* Every command it sends a runtime carries its leadership *epoch*; runtimes
  refuse older ones, so a leader that lost its lease cannot start or kill
  anything.
* A runtime that vanishes has its running agents marked *lost*.  Jobs with a
  restart policy (:mod:`oneos.scheduler.restarts`) start again elsewhere only
  after ``disconnect_grace`` (a short cut restarts nothing), with back-off,
  a cap on attempts and a quarantine for programs that take their runtime
  down.  A job is a chain of *incarnations*; when a runtime comes back still
  running an incarnation that was restarted elsewhere, that older one is
  stopped (and the runtime logs why).
* Pending restarts are written into the ended agent's retained status, so a
  new leader continues them; agents of a dead leader are restarted like any.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from oneos.agents.client import RETRY_SAFE as AGENT_RETRY_SAFE
from oneos.agents.client import AgentsClient
from oneos.agents.host import KEEP_ENDED
from oneos.agents.info import ENDED, LOST, AgentError, AgentInfo, OutputTarget
from oneos.agents.program import interpreter_for
from oneos.pubsub import messages, topics
from oneos.pubsub.direct import DirectServer
from oneos.pubsub.rpc import RPCServer
from oneos.scheduler.client import KILL_GRACE, TARGET, StageSpec
from oneos.scheduler.pipes import PipeLog
from oneos.scheduler.placement import Needs, explain, place
from oneos.scheduler.restarts import LOST as OUTCOME_LOST
from oneos.scheduler.restarts import USER_KILL_REASON, RestartPolicy, decide, outcome_of

log = Logger()


def _names(near: Any) -> list[str]:
    """The device names of a ``near`` argument as the wire carries it; :class:`AgentError` if malformed."""
    if near is None:
        return []
    if not isinstance(near, (list, tuple)) or not all(isinstance(n, str) and n for n in near):
        raise AgentError("'near' must be a list of device names", "EINVAL")
    return list(near)


#: the OneOS user who may control every program
ADMIN = "root"
LIVE_STATES = ("running", "paused")
#: seconds a kill that waits for the end waits beyond the grace (SIGKILL and the status's way back)
KILL_WAIT_MARGIN = 2.0
#: matches an ambiguous id prefix's error lists at most
AMBIGUOUS_SHOWN = 8


def _job_of(agent_id: str, row: dict[str, Any]) -> str:
    return str(row.get("job") or row.get("id") or agent_id)


class ProcessTable(dict[str, dict[str, Any]]):
    """The process table (agent id -> its latest status), its rows also indexed by job.

    The scheduler asks, for every agent status it receives and for every row
    of ``ps``, whether a later incarnation of the row's job is in the table.
    Scanning the whole table for that made a burst of spawns quadratic (5 %
    of the leader's time after 300 spawns, the table holding every agent of
    the last 5 minutes); the index answers from the job's own rows, almost
    always one.  Any way of writing the table keeps the index (tests and
    the scheduler assign rows directly).
    """

    def __init__(self) -> None:
        super().__init__()
        #: job -> {agent id: row}, in the order the rows were first written
        self._jobs: dict[str, dict[str, dict[str, Any]]] = {}

    def of_job(self, job: str) -> list[dict[str, Any]]:
        """Every row of *job*."""
        return list(self._jobs.get(job, {}).values())

    def _unindex(self, agent_id: str) -> None:
        row = super().get(agent_id)
        if row is None:
            return
        rows = self._jobs.get(_job_of(agent_id, row))
        if rows is not None:
            rows.pop(agent_id, None)
            if not rows:
                del self._jobs[_job_of(agent_id, row)]

    def __setitem__(self, agent_id: str, row: dict[str, Any]) -> None:
        old = super().get(agent_id)
        if old is not None and _job_of(agent_id, old) != _job_of(agent_id, row):
            self._unindex(agent_id)
        super().__setitem__(agent_id, row)
        self._jobs.setdefault(_job_of(agent_id, row), {})[agent_id] = row

    def __delitem__(self, agent_id: str) -> None:
        self._unindex(agent_id)
        super().__delitem__(agent_id)

    def pop(self, agent_id: str, *default: Any) -> Any:
        self._unindex(agent_id)
        return super().pop(agent_id, *default)

    def setdefault(self, agent_id: str, row: dict[str, Any]) -> dict[str, Any]:
        if agent_id not in self:
            self[agent_id] = row
        return self[agent_id]

    def update(self, *others: Any, **rows: dict[str, Any]) -> None:
        for agent_id, row in dict(*others, **rows).items():
            self[agent_id] = row

    def popitem(self) -> tuple[str, dict[str, Any]]:
        agent_id = next(reversed(self))
        return agent_id, self.pop(agent_id)

    def clear(self) -> None:
        super().clear()
        self._jobs.clear()


class _HereFirst:
    """The RPC client as the scheduler's commands use it: its own runtime in-process, the others in one hop.

    A spawn placed on the leader itself went to the broker and back twice
    (request, answer); :meth:`oneos.pubsub.rpc.RPCClient.call_here` hands it
    to this process's own server for the target instead, through the same
    checks (the epoch fence, the caller's rights, the deadline).  A command
    to another runtime takes that runtime's direct channel once it is open
    (:meth:`~oneos.pubsub.rpc.RPCClient.enable_direct`, asked for at its
    first commands), where the same checks run; it goes over the bus until
    then, and whenever the channel is in doubt (module docstring of
    :mod:`oneos.pubsub.direct`).
    """

    def __init__(self, rpc: Any, here: Callable[[], str | None], direct: bool = True) -> None:
        self.rpc = rpc
        self.here = here
        self.direct = direct

    def call(self, target: str, method: str, timeout: float | None = None, meta: Any = None, **args: Any) -> Any:
        if target == self.here():
            local = getattr(self.rpc, "call_here", None)
            if local is not None:
                return local(target, method, timeout=timeout, meta=meta, **args)
        elif self.direct:
            enable = getattr(self.rpc, "enable_direct", None)  # a test's recording double may have none
            if enable is not None:
                enable(target, retry_safe=AGENT_RETRY_SAFE)  # once per target; then a look-up
        return self.rpc.call(target, method, timeout=timeout, meta=meta, **args)


class SchedulerService(service.Service):
    """Placement, the process table and restarts, for the whole network."""

    name = "scheduler"  # type: ignore[assignment]  # Twisted: Service.name = None, so mypy infers type None

    def __init__(
        self,
        client: Any,
        rpc: Any,
        membership: Any,
        reactor: Any,
        *,
        guard: Any = None,
        policy: RestartPolicy | None = None,
        direct_commands: bool = True,
        transfer: Any = None,
    ) -> None:
        self.client = client
        self.membership = membership
        self.rpc = rpc
        self.reactor = reactor
        self.policy = policy or RestartPolicy()
        #: commands to other runtimes take their direct channels when open (False: always the bus)
        self.direct_commands = direct_commands
        self.table: ProcessTable = ProcessTable()
        #: spawn arguments of jobs started under this leader (env and cwd are not in the status)
        self.specs: dict[str, dict[str, Any]] = {}
        self._timers: dict[str, IDelayedCall] = {}
        #: agent id -> when its lost status is cleared (cancelled when we stop: it is the next leader's then)
        self._forgets: dict[str, IDelayedCall] = {}
        #: runtime -> [(expires, memory MB)]: placements made but not yet in the runtime's status
        self._reserved: dict[str, list[tuple[float, int]]] = {}
        #: every pipe joined (or seen), kept a while after it finished with its final byte count
        self.pipe_log = PipeLog(reactor.seconds)
        #: agent id -> kills waiting to see it end, each with the runtime's answer (what it gets if we stop first)
        self._end_waiters: dict[str, list[tuple[defer.Deferred, dict[str, Any]]]] = {}
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
                "kill": self.kill,
                "pause": self.pause,
                "resume": self.resume,
                "locate": self.locate,
            },
            guard=guard,
            clients=("spawn", "pipeline", "explain", "ps", "pipes", "kill", "pause", "resume", "locate"),
        )
        #: the runtime's transfer server: the target is served on a direct channel beside its streams
        self.transfer = transfer
        #: the ``scheduler`` target on a direct TCP channel (made at start when there is a transfer server)
        self.direct: DirectServer | None = None

    def startService(self) -> None:
        super().startService()
        self.server.start()
        self._listen_direct()
        d = self.client.subscribe(topics.ALL_AGENTS, self._on_agent)
        d.addCallback(lambda sub: setattr(self, "_sub", sub))
        # Once every retained agent status is here, settle what the last leader left: agents of dead
        # runtimes (its own included), restarts it had scheduled.
        d.addCallback(lambda _: self.client.barrier())
        d.addCallback(lambda _: self._check_runtimes())
        d.addErrback(lambda f: log.failure("scheduler could not read the process table", f))
        self.membership.on_change(self._check_runtimes)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        for timer in (*self._timers.values(), *self._forgets.values()):
            if timer.active():
                timer.cancel()
        self._timers.clear()
        self._forgets.clear()
        for agent_id in list(self._end_waiters):
            self._ended(agent_id, self.table.get(agent_id))
        if self._sub is not None:
            self._sub.cancel()
        stopped = self.server.stop()
        direct, self.direct = self.direct, None
        return stopped if direct is None else direct.stop_beside(stopped)  # the next leader answers on the bus

    def _listen_direct(self) -> None:
        """Serve the target on a direct channel too, on the interface the runtime's streams listen on.

        As the file-system service does: a client that calls the scheduler
        often (a shell session, the desktop) sends its calls in one hop
        instead of two through the broker.  The guard (this runtime leads
        under a live lease) holds on the channel as on the bus; once it says
        no, the channels are cut and the clients' calls go over the bus,
        where the next leader answers.  Clients that cannot reach the port
        keep using the bus.
        """
        if getattr(self.transfer, "port", None) is None:
            return
        self.direct = DirectServer(self.reactor, self.server, tls=getattr(self.transfer, "tls", None))
        self.direct.listen_beside(self.transfer)

    # -- commands to runtimes, fenced by our term -------------------------------------
    @property
    def agents(self) -> AgentsClient:
        """The runtimes' agent methods, each request carrying our leadership epoch (see :class:`_HereFirst`)."""
        return AgentsClient(
            _HereFirst(self.rpc, lambda: getattr(self.membership, "id", None), self.direct_commands),
            meta=lambda: {"epoch": self.membership.epoch},
        )

    # -- the table --------------------------------------------------------------
    def _on_agent(self, message: Any) -> None:
        if not message.payload:
            agent_id = message.topic.rsplit("/", 1)[-1]
            self.table.pop(agent_id, None)
            self.pipe_log.cleared(agent_id)
            return
        try:
            body = messages.decode(message.payload, "agent.status")
            agent_id = messages.require(body, "id", str)
            messages.require(body, "runtime", str)
        except messages.MalformedMessage as e:
            log.warn("dropped malformed agent status on {topic}: {error}", topic=message.topic, error=str(e))
            return
        body.pop("v", None)
        body.pop("type", None)
        old = self.table.get(agent_id, {})
        restored = False
        for kept in ("next_restart_at", "quarantined", "decided", "history"):
            if kept in old and kept not in body and body.get("state") == old.get("state"):
                body[kept] = old[kept]
                restored = True
        self.table[agent_id] = body
        self.pipe_log.seen(body)
        if body.get("state") in ENDED:
            self._ended(agent_id, body)
        if restored and body.get("state") in ENDED and self.running:
            self._republish(body)  # its runtime said it again without our decision: keep the decision on record
        if self.running:
            self._consider(body)

    def _live_ids(self) -> set[str]:
        return {s.id for s in self.membership.live()}

    def _job(self, row: dict[str, Any]) -> str:
        return str(row.get("job") or row["id"])

    def _newer(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """A later incarnation of *row*'s job that is running, starting or pending."""
        job, inc = self._job(row), int(row.get("incarnation", 0))
        for other in self.table.of_job(job):
            if other is not row and int(other.get("incarnation", 0)) > inc:
                return other
        return None

    def _consider(self, row: dict[str, Any]) -> None:
        """Act on one agent's news: stop a superseded incarnation, or decide a restart."""
        state = row.get("state")
        if state in LIVE_STATES:
            newer = self._newer(row)
            if newer is not None and row["runtime"] in self._live_ids():
                why = (
                    f"superseded by incarnation {newer.get('incarnation')} ({newer['id']} on {newer['runtime']}), "
                    f"started while {row['runtime']} was unreachable"
                )
                log.warn("stopping agent {id} on {rt}: {why}", id=row["id"], rt=row["runtime"], why=why)
                self.agents.kill(row["runtime"], row["id"], grace=2.0, reason=why).addErrback(
                    lambda f: log.warn("could not stop superseded agent {id}: {e}", id=row["id"], e=f.getErrorMessage())
                )
            return
        if state in ENDED and state != LOST:
            self._plan_restart(row, outcome_of(row))

    def _plan_restart(self, row: dict[str, Any], outcome: str, at_least: float = 0.0) -> None:
        if row.get("decided") or row.get("restart", "no") == "no" or self._newer(row) is not None:
            if row.get("next_restart_at") and row["id"] not in self._timers and not row.get("quarantined"):
                self._arm(row)  # a decision an earlier leader made: carry it out
            return
        now = self.reactor.seconds()
        decision = decide(self.policy, row.get("restart", "no"), outcome, row.get("history"), now)
        row["decided"] = True
        if decision.quarantined:
            row["quarantined"] = decision.quarantined
            row["history"] = decision.history
            log.warn("job {job} ({name}) {why}", job=self._job(row), name=row.get("name"), why=decision.quarantined)
        elif decision.restart:
            row["next_restart_at"] = now + max(decision.delay, at_least)
            row["history"] = decision.history
            self._arm(row)
        else:
            return
        self._republish(row)

    def _arm(self, row: dict[str, Any]) -> None:
        delay = max(0.0, float(row["next_restart_at"]) - self.reactor.seconds())
        old = self._timers.pop(row["id"], None)
        if old is not None and old.active():
            old.cancel()
        self._timers[row["id"]] = self.reactor.callLater(delay, self._restart, row["id"])

    def _republish(self, row: dict[str, Any]) -> None:
        """Keep the decision in the agent's retained status, so a new leader carries it out."""
        topic = topics.agent(row["runtime"], row["id"])
        self.client.publish(topic, messages.encode("agent.status", **row), qos=1, retain=True).addErrback(
            lambda f: None
        )

    def ps(self, all: bool = False) -> list[dict[str, Any]]:
        """The process table as users should see it: a dead runtime's agent is never 'running'."""
        live, now = self._live_ids(), self.reactor.seconds()
        rows = []
        for r in self.table.values():
            r = dict(r)
            if r.get("state") in LIVE_STATES and r["runtime"] not in live:
                r["state"] = LOST
                r["reason"] = r.get("reason") or f"runtime {r['runtime']} is unreachable"
            if r.get("quarantined"):
                r["state"], r["reason"] = "quarantined", r["quarantined"]
            elif r.get("next_restart_at") and self._newer(r) is None:
                r["state"] = f"restarting in {max(0, round(float(r['next_restart_at']) - now))} s"
            if all or r["state"] not in ENDED:
                rows.append(r)
        return sorted(rows, key=lambda r: (r["runtime"], r.get("uptime", 0)))

    def pipes(self) -> list[dict[str, Any]]:
        """Every pipe between agents, open or finished in the last minutes: from, to, state, bytes, average rate."""
        return [p.encode() for p in self.pipe_log.rows(self._live_ids())]

    def locate(self, agent_id: str) -> dict[str, Any]:
        """The agent *agent_id* names: its full id, or (as git does) a prefix only one agent's id starts with.

        Every command that takes an agent id resolves it here, so ``oneos
        kill a1b``, the shell's ``kill`` and the desktop agree.  No match is
        ESRCH; several are EINVAL, the message listing them.
        """
        row = self.table.get(agent_id)
        if row is not None:
            return row
        matches = sorted(i for i in self.table if agent_id and i.startswith(agent_id))
        if len(matches) == 1:
            return self.table[matches[0]]
        if not matches:
            raise AgentError(f"no agent {agent_id!r} in the network")
        shown = [
            f"{i} ({self.table[i].get('name') or '?'} on {self.table[i].get('runtime')}, {self.table[i].get('state')})"
            for i in matches[:AMBIGUOUS_SHOWN]
        ]
        more = f" and {len(matches) - AMBIGUOUS_SHOWN} more" if len(matches) > AMBIGUOUS_SHOWN else ""
        raise AgentError(
            f"agent id {agent_id!r} is ambiguous: it begins {', '.join(shown)}{more}; give more of it", "EINVAL"
        )

    @staticmethod
    def _may_control(row: dict[str, Any], user: str | None) -> None:
        """Users kill, pause and resume their own programs; the admin (root) any.

        *user* None is a caller that names nobody (the host's own CLI, the
        kernel): until the bus authenticates its clients, that is trusted.
        """
        owner = row.get("user") or ""
        if user is None or user == ADMIN or not owner or owner == user:
            return
        raise AgentError(f"agent {row['id']} belongs to {owner}, not {user}", "EPERM")

    def _forward(self, agent_id: str, method: str, user: str | None = None, **args: Any) -> defer.Deferred:
        """Pass a user's command on to the agent's runtime (once the user may); its answer as the wire has it."""
        row = self.locate(agent_id)
        self._may_control(row, user)
        runtime, agent_id = row["runtime"], row["id"]
        if method == "agent_kill":
            d = self.agents.kill(runtime, agent_id, **args)
        elif method == "agent_pause":
            d = self.agents.pause(runtime, agent_id)
        elif method == "agent_resume":
            d = self.agents.resume(runtime, agent_id)
        else:
            raise ValueError(f"not a command the scheduler forwards: {method!r}")
        return d.addCallback(AgentInfo.encode)

    def pause(self, agent_id: str, user: str | None = None) -> defer.Deferred:
        return self._forward(agent_id, "agent_pause", user=user)

    def resume(self, agent_id: str, user: str | None = None) -> defer.Deferred:
        return self._forward(agent_id, "agent_resume", user=user)

    def kill(self, agent_id: str, grace: float | None = None, user: str | None = None, wait: bool = False) -> Any:
        """A user's kill: the agent stops and its job is not restarted (a pending restart is cancelled).

        *wait*: answer once the agent's status says it ended (at most the
        grace and a little more), so the caller can tell the user the state it
        ended in (``killed``, or ``exited`` for a program that caught SIGTERM)
        rather than the ``running`` of the moment the signal was sent.
        """
        row = self.locate(agent_id)
        self._may_control(row, user)
        agent_id = row["id"]
        timer = self._timers.pop(agent_id, None)
        if timer is not None and timer.active():
            timer.cancel()
        if row.get("state") in ENDED:
            if row.get("next_restart_at"):
                row["next_restart_at"] = None
                row["reason"] = "restart cancelled by user"
                self._republish(row)
            return row
        d = self._forward(agent_id, "agent_kill", grace=grace, reason=USER_KILL_REASON)
        if wait:
            limit = (KILL_GRACE if grace is None else float(grace)) + KILL_WAIT_MARGIN
            d.addCallback(lambda answer: self._until_ended(agent_id, answer, limit))
        return d

    def _until_ended(self, agent_id: str, answer: dict[str, Any], limit: float) -> Any:
        """The agent's ended status once it arrives, or after *limit* seconds its latest (or *answer*)."""
        row = self.table.get(agent_id)
        if row is not None and row.get("state") in ENDED:
            return row
        d: defer.Deferred = defer.Deferred()
        waiter = (d, answer)
        self._end_waiters.setdefault(agent_id, []).append(waiter)

        def too_long() -> None:
            waiting = self._end_waiters.get(agent_id, [])
            if waiter in waiting:
                waiting.remove(waiter)
                if not waiting:
                    del self._end_waiters[agent_id]
                d.callback(self.table.get(agent_id) or answer)

        timer = self.reactor.callLater(limit, too_long)

        def settled(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return d.addBoth(settled)

    def _ended(self, agent_id: str, row: dict[str, Any] | None) -> None:
        """*agent_id* ended (*row*), or we stop (None: its latest status): answer the kills waiting for it."""
        for d, answer in self._end_waiters.pop(agent_id, []):
            if not d.called:
                d.callback(row or answer)

    # -- placement ----------------------------------------------------------------
    @staticmethod
    def _needs(
        program: str,
        runtime: str | None,
        tags: list[str] | None,
        exclude: list[str] | None,
        memory_mb: int,
        near: list[str] | None = None,
    ) -> Needs:
        return Needs(
            interpreter=interpreter_for(program),
            runtime=runtime,
            tags=tuple(tags or ()),
            exclude=tuple(exclude or ()),
            memory_mb=int(memory_mb or 0),
            near=tuple(near or ()),
        )

    def _view(self) -> list[Any]:
        """The live statuses, counting placements made since each runtime last reported."""
        now = self.reactor.seconds()
        out = []
        for status in self.membership.live():
            held = [r for r in self._reserved.get(status.id, []) if r[0] > now]
            self._reserved[status.id] = held
            if held:
                status = status.with_(
                    agents=status.agents + len(held), agents_memory_mb=status.agents_memory_mb + sum(m for _, m in held)
                )
            out.append(status)
        return out

    def _reserve(self, runtime: str, memory_mb: int) -> tuple[float, int]:
        # held until the runtime's own status (refreshed every interval) includes the agent
        entry = (self.reactor.seconds() + 2 * self.membership.interval + 1.0, int(memory_mb or 0))
        self._reserved.setdefault(runtime, []).append(entry)
        return entry

    def explain(
        self,
        program: str,
        runtime: str | None = None,
        tags: list[str] | None = None,
        memory_mb: int = 0,
        near: list[str] | None = None,
    ) -> str:
        return explain(self._view(), self._needs(program, runtime, tags, None, memory_mb, _names(near)))

    @defer.inlineCallbacks
    def spawn(
        self,
        program: str,
        args: list[str] | None = None,
        runtime: str | None = None,
        tags: list[str] | None = None,
        exclude: list[str] | None = None,
        memory_mb: int = 0,
        restart: str = "no",
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stdout: str = "attach",
        stdin: bool = True,
        agent_id: str | None = None,
        stderr: str = "attach",
        stdin_file: str | None = None,
        job: str = "",
        incarnation: int = 0,
        history: dict[str, Any] | None = None,
        user: str = "",
        near: list[str] | None = None,
    ) -> Any:
        """Place and start one agent; fires with its info (incl. the runtime chosen).

        *near*: devices its runtime must have, each in state ok (``oneos run --near``, ``@dev:NAME``).
        """
        out, err = OutputTarget.decode(stdout), OutputTarget.decode(stderr)  # malformed: refused before placing
        near = _names(near)
        verdict = place(self._view(), self._needs(program, runtime, tags, exclude, memory_mb, near))
        held = self._reserve(verdict.runtime, memory_mb)
        try:
            started = yield self.agents.spawn(
                verdict.runtime,
                program,
                list(args or []),
                cwd=cwd,
                env=env,
                memory_mb=memory_mb,
                restart=restart,
                stdout=out,
                stdin=stdin,
                agent_id=agent_id,
                stderr=err,
                stdin_file=stdin_file,
                job=job,
                incarnation=incarnation,
                history=history or {},
                user=user,
            )
        except Exception:
            if held in self._reserved.get(verdict.runtime, []):
                self._reserved[verdict.runtime].remove(held)
            raise
        info = started.encode()
        self.table.setdefault(info["id"], info)
        if restart != "no":
            self.specs[info.get("job") or info["id"]] = {
                "program": program,
                "args": list(args or []),
                "tags": tags,
                "near": near,
                "memory_mb": memory_mb,
                "restart": restart,
                "cwd": cwd,
                "env": env,
                "user": user,
            }
        info["placement"] = ", ".join(verdict.reasons)
        return info

    @defer.inlineCallbacks
    def pipeline(self, stages: list[dict[str, Any]], user: str | None = None) -> Any:
        """Start every stage, then connect each stdout to the next stdin, runtime to runtime.

        Each stage is a :class:`~oneos.scheduler.client.StageSpec` as the
        wire carries it; its ``env``, ``stdout``/``stderr`` targets and
        ``stdin_file`` (the shell's) are passed to its spawn.  *user* (a
        client identity's user, set by the RPC layer) owns every stage,
        whatever the stages say.
        """
        specs = [StageSpec.decode(stage) for stage in stages]
        if user is not None:
            specs = [replace(spec, user=user) for spec in specs]
        infos: list[dict[str, Any]] = []
        try:
            for spec in specs:
                info = yield self.spawn(
                    spec.program,
                    list(spec.args),
                    spec.runtime,
                    list(spec.tags),
                    stdin=True,
                    user=spec.user,
                    env=None if spec.env is None else dict(spec.env),
                    stdout=(spec.stdout or OutputTarget.attach()).encode(),
                    stderr=(spec.stderr or OutputTarget.attach()).encode(),
                    stdin_file=spec.stdin_file,
                    near=list(spec.near),
                )
                infos.append(info)
            for left, right in zip(infos, infos[1:], strict=False):
                where = yield self.agents.stdin(
                    right["runtime"], right["id"], source=f"{left['name']}@{left['runtime']}"
                )
                to = f"{right['id']}@{right['runtime']}"
                yield self.agents.pipe_out(left["runtime"], left["id"], where, to=to)
                # recorded now: the writer may already have ended, its last status never naming the pipe
                self.pipe_log.joined(self.table.get(left["id"], left), self.table.get(right["id"], right), to)
        except Exception:
            for info in infos:
                self.agents.kill(info["runtime"], info["id"]).addErrback(lambda f: None)
            raise
        return infos

    # -- failures -----------------------------------------------------------------
    def _check_runtimes(self) -> None:
        """Mark the agents of vanished runtimes lost; plan their jobs' restarts after the grace."""
        if not self.running or not self.membership.synced:
            return  # a view we cannot trust (we are reconnecting) must not declare anyone lost
        live = self._live_ids()
        now = self.reactor.seconds()
        for agent_id, row in list(self.table.items()):
            if row["runtime"] in live:
                continue
            if row["state"] == LOST:
                self._plan_restart(row, OUTCOME_LOST, at_least=self.policy.disconnect_grace)
                continue
            if row["state"] in ENDED:
                continue
            lost = {**row, "state": LOST, "reason": f"runtime {row['runtime']} is unreachable", "lost_at": now}
            self.table[agent_id] = lost
            log.warn("agent {id} lost with runtime {rt}", id=agent_id, rt=row["runtime"])
            self._plan_restart(lost, OUTCOME_LOST, at_least=self.policy.disconnect_grace)
            if not lost.get("decided") or not (lost.get("next_restart_at") or lost.get("quarantined")):
                self._republish(lost)
            topic = topics.agent(row["runtime"], agent_id)
            old = self._forgets.pop(agent_id, None)
            if old is not None and old.active():
                old.cancel()
            self._forgets[agent_id] = self.reactor.callLater(KEEP_ENDED, self._forget, topic, agent_id)

    def _forget(self, topic: str, agent_id: str) -> None:
        self._forgets.pop(agent_id, None)
        row = self.table.get(agent_id)
        if row is not None and row.get("state") == LOST and not row.get("next_restart_at"):
            self.client.publish(topic, b"", 1, True).addErrback(lambda f: None)

    def _restart(self, agent_id: str) -> None:
        self._timers.pop(agent_id, None)
        row = self.table.get(agent_id)
        if row is None or not self.running:
            return
        if row["state"] in LIVE_STATES or self._newer(row) is not None:
            return  # its runtime came back within the grace, or another incarnation runs
        if row["state"] == LOST and row["runtime"] in self._live_ids():
            return
        job = self._job(row)
        spec = dict(
            self.specs.get(job)
            or {
                "program": row["program"],
                "args": row.get("args", []),
                "restart": row.get("restart", "on-failure"),
                "user": row.get("user", ""),
            }
        )
        exclude = [row["runtime"]] if row["state"] == LOST else []
        incarnation = int(row.get("incarnation", 0)) + 1
        d = self.spawn(
            exclude=exclude,
            stdout="discard",
            stdin=False,
            job=job,
            incarnation=incarnation,
            history=row.get("history") or {},
            **spec,
        )

        def done(info: dict[str, Any]) -> None:
            log.info(
                "job {job}: {old} restarted as {new} on {rt} (incarnation {n})",
                job=job,
                old=agent_id,
                new=info["id"],
                rt=info["runtime"],
                n=incarnation,
            )
            row["next_restart_at"] = None
            self._republish(row)

        def failed(f: Any) -> None:
            delay = min(self.policy.cap, max(self.policy.base, 2 * float(row.get("_retry", self.policy.base))))
            row["_retry"] = delay
            row["next_restart_at"] = self.reactor.seconds() + delay
            log.error(
                "could not restart job {job} ({error}); trying again in {delay:.0f}s",
                job=job,
                error=f.getErrorMessage(),
                delay=delay,
            )
            self._arm(row)

        d.addCallbacks(done, failed)
