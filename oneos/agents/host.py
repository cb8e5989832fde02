"""Agents on one runtime, reachable from the whole network.

Wraps the :class:`AgentManager` with the runtime's RPC methods (spawn, kill,
pause, resume, list, attach, stdin, pipe) and publishes each agent's status
as a retained message, so any runtime or tool can build the grid-wide
process table and wait for an agent's exit without polling.

Programs that live in the OneOS file system (an absolute path that does not
exist on this host) are fetched into ``$ONEOS_HOME/cache`` first.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from oneos.agents.info import DISCARD, ENDED, AgentError, OutputTarget
from oneos.agents.manager import AgentManager, AgentProcess, AgentSpec, InputClosed
from oneos.agents.program import ProgramError
from oneos.pubsub import messages, topics
from oneos.transfer import send

log = Logger()

#: Ended agents' retained statuses are cleared after this many seconds.
KEEP_ENDED = 300.0
#: Seconds a pipe stage's output, once at its end, waits for the program's exit to say how it ended
#: (a program still running after closing its output ends the stream cleanly).
VERDICT_WAIT = 2.0


class _Discard:
    """Drains an output stream nobody attached to, so the program never blocks."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._next()

    def _next(self) -> None:
        self.stream.next().addCallback(lambda data: self._next() if data else None).addErrback(lambda f: None)


class StageOutput:
    """An agent's stdout as the source of a pipe to the next stage: cut short, it ends with an error.

    A pipe's end of file must not hide a producer that died: a program
    killed by a signal (``oneos kill``, a memory limit, SIGKILL) while it
    wrote would otherwise look like one that finished, and the next stage
    would report success on a truncated stream.  So once the output ends,
    the stream waits (at most ``wait`` seconds) for the program's exit: a
    signal ends the stream with an error (the next stage's runtime stops it,
    naming this one); an exit, any status, ends it cleanly, as UNIX does.
    """

    def __init__(self, agent: AgentProcess, clock: Any, wait: float = VERDICT_WAIT) -> None:
        self.agent = agent
        self.clock = clock
        self.wait = wait

    def next(self) -> defer.Deferred:
        """The Source of the copying path: the stream's bytes, then b'' or the program's death."""
        return self.agent.stdout.next().addCallback(lambda data: data or self.verdict().addCallback(lambda _: b""))

    def splice_out(self) -> Any:
        """The pipe for the kernel path (oneos/splice.py), with the same verdict at its end."""
        return self.agent.stdout.splice_out(ended=self.verdict)

    def verdict(self) -> defer.Deferred:
        """Fires (None) once the program exited, or ``wait`` seconds passed; fails if it was killed by a signal."""
        agent = self.agent
        if agent.state in ENDED:
            return defer.maybeDeferred(self._judge)
        d: defer.Deferred = defer.Deferred()

        def settle(_: Any = None) -> None:
            if not d.called:
                if timer.active():
                    timer.cancel()
                d.callback(None)

        timer = self.clock.callLater(self.wait, settle)

        def passthrough(result: Any) -> Any:
            settle()
            return result  # agent.ended is shared: leave its result as it was

        agent.ended.addBoth(passthrough)
        return d.addCallback(lambda _: self._judge())

    def _judge(self) -> None:
        agent = self.agent
        if agent.state in ENDED and agent.signal is not None:
            why = f" ({agent.reason})" if agent.reason else ""
            raise AgentError(
                f"{agent.spec.name or agent.id} on {agent.manager.runtime_id} was killed by signal "
                f"{agent.signal}{why} before the end of its output",
                "EPIPE",
            )


class AgentHost(service.Service):
    """The runtime's agents: RPC handlers, status publishing, program fetching."""

    name = "agents"  # type: ignore[assignment]  # Twisted: Service.name = None, so mypy infers type None

    def __init__(
        self,
        runtime_id: str,
        reactor: Any,
        client: Any,
        transfer: Any,
        fs: Callable[[str | None], Any],
        manager: AgentManager,
        *,
        home: Path,
        interval: float,
    ) -> None:
        self.runtime_id = runtime_id
        self.reactor = reactor
        self.client = client
        self.transfer = transfer
        #: the file-system client for a OneOS user (programs and redirections live in the OneOS tree, and
        #: a program's files are read and written with its owner's rights, never the runtime's)
        self._fs = fs
        self.interval = interval
        #: starts, watches and stops the processes (built by the runtime, which decides their account and limits)
        self.manager = manager
        self.manager.on_event(self._on_event)
        # Programs fetched from the tree are cached outside $ONEOS_HOME (which holds the runtime's keys),
        # readable by the account programs run as.
        self.cache = (
            Path(tempfile.gettempdir()) / f"oneos-programs-{runtime_id}"
            if manager.account is not None
            else Path(home) / "cache"
        )
        self._loop: task.LoopingCall | None = None

    def startService(self) -> None:
        """Start the manager and refresh live agents' statuses every interval."""
        super().startService()
        self.manager.startService()
        self._loop = task.LoopingCall(self.refresh)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False).addErrback(lambda f: log.failure("agent refresh failed", f))
        self.client.add_listener(on_connect=self._republish_all)

    def _republish_all(self) -> None:
        """After a reconnect, say again how every recent agent stands, ended ones included.

        A restarted broker forgot its retained statuses; without this, a job
        waiting for its restart would vanish from the scheduler's view.
        """
        if not self.running:
            return
        for agent in list(self.manager.agents.values()):
            if agent.state not in ENDED or (agent.ended_at and time.time() - agent.ended_at < KEEP_ENDED):
                self._publish(agent.info())

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self.manager.stopService()

    @property
    def count(self) -> int:
        """Agents running here now (reported in the runtime's status)."""
        return len(self.manager.live_agents())

    def refresh(self) -> None:
        """Republish running agents so CPU, memory and uptime in ``oneos ps`` stay current."""
        if not self.client.connected:
            return
        for agent in self.manager.live_agents():
            self._publish(agent.info())

    def handlers(self) -> dict[str, Any]:
        """The runtime's agent methods, by RPC method name (their client: oneos.agents.client.AgentsClient)."""
        return {
            "agent_spawn": self.spawn,
            "agent_kill": self.kill,
            "agent_pause": lambda agent_id: self.manager.pause(agent_id).info(),
            "agent_resume": lambda agent_id: self.manager.resume(agent_id).info(),
            "agent_list": lambda: [a.info() for a in self.manager.agents.values()],
            "agent_attach": self.attach,
            "agent_stdin": self.stdin,
            "agent_pipe_out": self.pipe_out,
        }

    def kill(self, agent_id: str, grace: float | None = None, reason: str = "") -> dict[str, Any]:
        if reason:
            log.info("stopping agent {id}: {reason}", id=agent_id, reason=reason)
        return self.manager.kill(agent_id, grace, reason=reason).info()

    # -- status publishing ----------------------------------------------------
    def _publish(self, body: dict[str, Any]) -> None:
        topic = topics.agent(self.runtime_id, body["id"])
        payload = messages.encode("agent.status", **{k: v for k, v in body.items() if k != "event"})
        self.client.publish(topic, payload, qos=1, retain=True).addErrback(lambda f: None)

    def _on_event(self, body: dict[str, Any]) -> None:
        self._publish(body)
        if body["state"] in ENDED:
            self.reactor.callLater(KEEP_ENDED, self._clear, topics.agent(self.runtime_id, body["id"]), body["id"])

    def _clear(self, topic: str, agent_id: str) -> None:
        agent = self.manager.agents.get(agent_id)
        if agent is None or agent.state in ENDED:
            self.client.publish(topic, b"", qos=1, retain=True).addErrback(lambda f: None)

    def agents_memory_mb(self) -> float:
        return sum(a.info()["memory_mb"] for a in self.manager.live_agents())

    # -- RPC ------------------------------------------------------------------
    @defer.inlineCallbacks
    def spawn(
        self,
        program: str,
        args: list[str] | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        name: str = "",
        memory_mb: int = 0,
        restart: str = "no",
        agent_id: str | None = None,
        stdout: str = "attach",
        stdin: bool = True,
        stderr: str = "attach",
        stdin_file: str | None = None,
        job: str = "",
        incarnation: int = 0,
        history: dict[str, Any] | None = None,
        user: str = "",
    ) -> Any:
        """Start a program here; fires with the agent's info.

        *stdout*/*stderr*: ``attach`` (held until a reader attaches),
        ``discard``, ``file:PATH`` or ``append:PATH`` (a OneOS file, written
        through the file-system service and visible once the program's
        output ends), as :class:`~oneos.agents.info.OutputTarget` encodes
        them.  *stdin_file*: a OneOS file to feed the program.
        """
        out = OutputTarget.decode(stdout)  # a malformed target is refused before anything runs
        err = OutputTarget.discard() if out.kind == DISCARD else OutputTarget.decode(stderr)
        local = yield self._localise(program, user or None)
        if stdin_file:
            yield self._fs(user or None).stat(stdin_file)  # a missing input file is an error before anything runs
        environment = dict(os.environ)
        environment.update(env or {})
        environment["ONEOS_RUNTIME"] = self.runtime_id
        spec = AgentSpec(
            local,
            list(args or []),
            cwd=cwd,
            env=environment,
            name=name or os.path.basename(program),
            memory_limit_mb=int(memory_mb or 0),
            restart=restart,
            stdin=stdin,
            job=job,
            incarnation=int(incarnation),
            history=dict(history or {}),
            user=user,
        )
        agent = self.manager.spawn(spec, agent_id=agent_id)
        agent.stdout_to = out
        for target, stream in ((out, agent.stdout), (err, agent.stderr)):
            if target.kind == DISCARD:
                _Discard(stream)
            elif target.is_file:
                self._to_file(agent, stream, target)
        if stdin_file:
            self._from_file(agent, stdin_file)
        return agent.info(measure=False)  # just started: nothing to measure (see AgentProcess._measured)

    def _to_file(self, agent: AgentProcess, stream: Any, target: OutputTarget) -> None:
        path = target.where
        d = self._fs(agent.spec.user or None).write_from(path, stream, "append" if target.append else "truncate")

        def failed(f: Any) -> None:
            if agent.state not in ENDED:
                self.manager.kill(agent.id, reason=f"cannot write output to {path}: {f.getErrorMessage()}")

        d.addErrback(failed)

    def _from_file(self, agent: AgentProcess, path: str) -> None:
        d = self._fs(agent.spec.user or None).read_into(path, agent.stdin)

        def failed(f: Any) -> None:
            agent.stdin.finish()
            if agent.state not in ENDED:
                self.manager.kill(agent.id, reason=f"cannot read input from {path}: {f.getErrorMessage()}")

        d.addErrback(failed)

    @defer.inlineCallbacks
    def _localise(self, program: str, user: str | None = None) -> Any:
        """A host path for *program*, fetching it from the OneOS file system (as *user*) if needed."""
        if not os.path.isabs(program) or os.path.exists(program):
            return program
        from oneos.fs.errors import FSError

        fs = self._fs(user)
        try:
            st = yield fs.stat(program)
        except FSError:
            raise ProgramError(
                f"{program}: no such file on runtime {self.runtime_id} or in the OneOS file system"
            ) from None
        key = hashlib.sha256(f"{program}\0{st.mtime}\0{st.size}".encode()).hexdigest()[:16]
        target = self.cache / key / os.path.basename(program)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            for d in (target.parent, target.parent.parent):
                os.chmod(d, 0o755)
            data = yield fs.read(program)
            tmp = target.with_name(target.name + ".part")
            tmp.write_bytes(data)
            os.chmod(tmp, 0o755 if st.mode & 0o111 else 0o644)
            os.replace(tmp, target)
        return str(target)

    def _owned(self, agent_id: str, user: str | None) -> Any:
        """The agent, if *user* may use its streams (None: a runtime or the kernel; root: any)."""
        agent = self.manager.get(agent_id)
        owner = getattr(agent.spec, "user", "") or ""
        if user is not None and user != "root" and owner != user:
            raise AgentError(f"agent {agent_id} belongs to {owner or 'nobody'}, not {user}", "EPERM")
        return agent

    def attach(self, agent_id: str, stream: str = "stdout", user: str | None = None) -> dict[str, Any]:
        """A token to read the agent's stdout or stderr from."""
        agent = self._owned(agent_id, user)
        source = agent.stdout if stream == "stdout" else agent.stderr
        token, done = self.transfer.offer(source=source)
        done.addErrback(
            lambda f: log.info(
                "{stream} of agent {id} ended: {why}", stream=stream, id=agent_id, why=f.getErrorMessage()
            )
        )
        return {**self.transfer.where(), "token": token}

    def stdin(self, agent_id: str, source: str = "", user: str | None = None) -> dict[str, Any]:
        """A token to stream into the agent's stdin; the stream's end closes it.

        *source* names the pipeline stage feeding it (``NAME@RUNTIME``).  If
        that stream breaks (the sender's runtime died), the program is
        stopped with a reason naming it: a cut-off input must not look like
        a clean end of file, or the pipeline would report success on a
        truncated stream.
        """
        agent = self._owned(agent_id, user)
        token, done = self.transfer.offer(sink=agent.stdin)

        def broke(f: Any) -> None:
            log.info("input of agent {id} ended: {why}", id=agent_id, why=f.getErrorMessage())
            if f.check(defer.CancelledError, InputClosed):
                return  # its own doing: the writer is stopped instead (SIGPIPE), not the reader
            if source and agent.state not in ENDED:
                self.manager.kill(agent_id, reason=f"its input from {source} broke: {f.getErrorMessage()}")

        done.addErrback(broke)
        return {**self.transfer.where(), "token": token}

    def pipe_out(
        self, agent_id: str, host: str, port: int, token: str, to: str = "", user: str | None = None, tls: bool = False
    ) -> dict[str, Any]:
        """Send the agent's stdout to another runtime's sink (the next pipeline stage; *tls*: it listens with TLS)."""
        agent = self._owned(agent_id, user)
        agent.stdout_to = OutputTarget.pipe(to or f"{host}:{port}")
        d = send(self.reactor, host, port, token, StageOutput(agent, self.reactor), tls=bool(tls) or None)

        def broken(failure: Any) -> None:
            if agent.state not in ENDED:
                self.manager.kill(agent.id, reason=f"pipe to {host}:{port} broke: {failure.getErrorMessage()}")

        d.addErrback(broken)
        return {"ok": True}
