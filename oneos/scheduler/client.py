"""The client of the scheduler (RPC target ``scheduler``, served by the kernel leader).

One method per handler of :class:`oneos.scheduler.service.SchedulerService`,
with typed parameters, each returning a Deferred of a typed result: an
agent's record is an :class:`~oneos.agents.info.AgentInfo`, a pipeline's
stages are :class:`StageSpec`, a pipe between agents a :class:`PipeInfo`
(:mod:`oneos.scheduler.table` prints the tables of both).

Inside a runtime the RPC client fails at once when no kernel leader is
known ("no kernel leader right now ..."), the CLI likewise from its
view of the network (after waiting up to 5 s for an election under way).
Calls take the scheduler's direct channel once it is open
(:class:`SchedulerClient`), as the file system's do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from oneos.agents.info import AgentInfo, MalformedAgentInfo, OutputTarget, PipeInfo
from oneos.scheduler.placement import NoFittingRuntime  # noqa: F401  (registers the scheduler's wire kind)

TARGET = "scheduler"
#: Methods that change nothing: when a direct channel breaks before answering one, it is asked again over the bus.
RETRY_SAFE = ("explain", "ps", "pipes", "locate")
#: a kill's SIGTERM-to-SIGKILL grace when it names none (the runtimes' default)
KILL_GRACE = 5.0
#: seconds a waiting kill's call may take beyond the grace (the scheduler waits grace + 2 s at most)
KILL_WAIT_SLACK = 5.0


@dataclass(frozen=True)
class StageSpec:
    """One stage of a pipeline: a program, where it may run, whose it is, and (shell) its streams."""

    program: str
    args: tuple[str, ...] = ()
    #: a runtime it must run on (``@RUNTIME``)
    runtime: str | None = None
    #: tags its runtime must have (``@tag:T``)
    tags: tuple[str, ...] = ()
    user: str = ""
    #: variables added to its environment
    env: Mapping[str, str] | None = None
    #: where its stdout goes when it is the last stage (earlier stages' stdout is the next one's stdin)
    stdout: OutputTarget | None = None
    stderr: OutputTarget | None = None
    #: a OneOS file to feed the first stage (its runtime reads it)
    stdin_file: str | None = None
    #: devices its runtime must have, each in state ok (``@dev:NAME``)
    near: tuple[str, ...] = ()

    def encode(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "program": self.program,
            "args": list(self.args),
            "runtime": self.runtime,
            "tags": list(self.tags),
            "user": self.user,
        }
        if self.env is not None:
            out["env"] = dict(self.env)
        if self.stdout is not None:
            out["stdout"] = self.stdout.encode()
        if self.stderr is not None:
            out["stderr"] = self.stderr.encode()
        if self.stdin_file is not None:
            out["stdin_file"] = self.stdin_file
        if self.near:
            out["near"] = list(self.near)
        return out

    @classmethod
    def decode(cls, body: object) -> StageSpec:
        """Read a stage as the ``pipeline`` request carries it; :class:`MalformedAgentInfo` if it is not one."""
        if not isinstance(body, Mapping):
            raise MalformedAgentInfo(f"a pipeline stage is an object, not {type(body).__name__}")
        program = body.get("program")
        if not isinstance(program, str) or not program:
            raise MalformedAgentInfo("a pipeline stage needs 'program' (a non-empty string)")
        args, tags, near = body.get("args") or [], body.get("tags") or [], body.get("near") or []
        for key, value in (("args", args), ("tags", tags), ("near", near)):
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise MalformedAgentInfo(f"pipeline stage field {key!r} must be a list of strings")
        env = body.get("env")
        if env is not None and (
            not isinstance(env, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        ):
            raise MalformedAgentInfo("pipeline stage field 'env' must map strings to strings")
        for key in ("runtime", "user", "stdin_file"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise MalformedAgentInfo(f"pipeline stage field {key!r} must be a string")
        return cls(
            program=program,
            args=tuple(args),
            runtime=body.get("runtime") or None,
            tags=tuple(tags),
            user=str(body.get("user") or ""),
            env=None if env is None else dict(env),
            stdout=None if body.get("stdout") is None else OutputTarget.decode(body["stdout"]),
            stderr=None if body.get("stderr") is None else OutputTarget.decode(body["stderr"]),
            stdin_file=body.get("stdin_file") or None,
            near=tuple(near),
        )


class SchedulerClient:
    """Typed calls to the scheduler.

    With *direct* (the default) the calls take the scheduler's direct
    channel once it is open (:meth:`oneos.pubsub.rpc.RPCClient.enable_direct`):
    one hop to the leader instead of two through the broker, for a caller
    that calls it more than once (a shell session, the desktop); a one-shot
    command's single call goes over the bus.
    """

    def __init__(self, rpc: Any, timeout: float | None = None, *, direct: bool = True) -> None:
        self.rpc = rpc
        #: seconds to wait for an answer (None: the RPC client's default); each method may say otherwise
        self.timeout = timeout
        enable = getattr(rpc, "enable_direct", None)  # a test's recording double has none
        if direct and enable is not None:
            enable(TARGET, retry_safe=RETRY_SAFE)

    def _call(self, method: str, timeout: float | None, **args: Any) -> defer.Deferred:
        return self.rpc.call(TARGET, method, timeout=self.timeout if timeout is None else timeout, **args)

    def spawn(
        self,
        program: str,
        args: Sequence[str] = (),
        *,
        runtime: str | None = None,
        tags: Sequence[str] = (),
        memory_mb: int | None = None,
        restart: str | None = None,
        env: Mapping[str, str] | None = None,
        stdout: OutputTarget | None = None,
        stdin: bool = True,
        stderr: OutputTarget | None = None,
        stdin_file: str | None = None,
        user: str | None = None,
        near: Sequence[str] = (),
        timeout: float | None = None,
    ) -> defer.Deferred:
        """Place and start one program; fires with its :class:`AgentInfo` (``extra["placement"]`` says why there).

        *near*: devices its runtime must have, each in state ok.
        """
        extra: dict[str, Any] = {}
        if near:
            extra["near"] = list(near)
        for key, value in (("memory_mb", memory_mb), ("restart", restart), ("stdin_file", stdin_file), ("user", user)):
            if value is not None:
                extra[key] = value
        if env is not None:
            extra["env"] = dict(env)
        if stdout is not None:
            extra["stdout"] = stdout.encode()
        if stderr is not None:
            extra["stderr"] = stderr.encode()
        return self._call(
            "spawn", timeout, program=program, args=list(args), runtime=runtime, tags=list(tags), stdin=stdin, **extra
        ).addCallback(AgentInfo.decode)

    def pipeline(self, stages: Sequence[StageSpec], timeout: float | None = None) -> defer.Deferred:
        """Start every stage, join each stdout to the next stdin runtime to runtime: a list of :class:`AgentInfo`."""
        d = self._call("pipeline", timeout, stages=[s.encode() for s in stages])
        return d.addCallback(lambda infos: [AgentInfo.decode(i) for i in infos])

    def explain(
        self,
        program: str,
        runtime: str | None = None,
        tags: Sequence[str] = (),
        memory_mb: int = 0,
        near: Sequence[str] = (),
        timeout: float | None = None,
    ) -> defer.Deferred:
        """How the scheduler ranks the runtimes for *program* (text)."""
        extra: dict[str, Any] = {"near": list(near)} if near else {}
        return self._call(
            "explain", timeout, program=program, runtime=runtime, tags=list(tags), memory_mb=memory_mb, **extra
        )

    def ps(self, all: bool = False, timeout: float | None = None) -> defer.Deferred:
        """The process table: a list of :class:`AgentInfo` (the states as users see them: lost, restarting ...)."""
        return self._call("ps", timeout, all=all).addCallback(lambda rows: [AgentInfo.decode(r) for r in rows])

    def pipes(self, timeout: float | None = None) -> defer.Deferred:
        """Every pipe between agents: a list of :class:`PipeInfo`."""
        return self._call("pipes", timeout).addCallback(lambda rows: [PipeInfo.decode(r) for r in rows])

    def kill(
        self,
        agent_id: str,
        grace: float | None = None,
        user: str | None = None,
        timeout: float | None = None,
        wait: bool = False,
    ) -> defer.Deferred:
        """Stop an agent for good (its job is not restarted); fires with its :class:`AgentInfo`.

        *agent_id*: the full id or a prefix only one agent's id starts with
        (as for :meth:`pause`, :meth:`resume` and :meth:`locate`). *wait*:
        fire once it ended (its final state), at most the grace and a few
        seconds later; the call's timeout grows to cover that.
        """
        args: dict[str, Any] = {}
        if grace is not None:
            args["grace"] = grace
        if user is not None:
            args["user"] = user
        if wait:
            args["wait"] = True
            if timeout is None:
                timeout = max(self.timeout or 0.0, (KILL_GRACE if grace is None else grace) + KILL_WAIT_SLACK)
        return self._call("kill", timeout, agent_id=agent_id, **args).addCallback(AgentInfo.decode)

    def pause(self, agent_id: str, user: str | None = None, timeout: float | None = None) -> defer.Deferred:
        args = {} if user is None else {"user": user}
        return self._call("pause", timeout, agent_id=agent_id, **args).addCallback(AgentInfo.decode)

    def resume(self, agent_id: str, user: str | None = None, timeout: float | None = None) -> defer.Deferred:
        args = {} if user is None else {"user": user}
        return self._call("resume", timeout, agent_id=agent_id, **args).addCallback(AgentInfo.decode)

    def locate(self, agent_id: str, timeout: float | None = None) -> defer.Deferred:
        """Where an agent runs (its :class:`AgentInfo`, from the process table)."""
        return self._call("locate", timeout, agent_id=agent_id).addCallback(AgentInfo.decode)
