"""The client of a runtime's agent methods: spawn, kill, pause, resume, list, attach, stdin, pipe_out.

Every runtime serves these on its own RPC target (its id; the handlers are
:meth:`oneos.agents.host.AgentHost.handlers`), so each method takes the
runtime first.  Results arrive typed: an agent's record as
:class:`~oneos.agents.info.AgentInfo`, a stream to connect to as
:class:`~oneos.transfer.StreamAddress`.

The scheduler's commands carry its leadership epoch in the request's meta
(*meta*, called at each request), so a runtime refuses those of an older
term; the shell's and the CLI's requests carry none.  The scheduler sends
them on each runtime's direct channel once it is open (one hop instead of
two through the broker; see :data:`RETRY_SAFE`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer

from oneos.agents.info import AgentInfo, OutputTarget
from oneos.transfer import StreamAddress

#: the agent methods a client identity (USER@TAG) may call on a runtime: its own programs' streams
CLIENT_METHODS = ("agent_attach", "agent_stdin", "agent_pipe_out")
#: the methods of a runtime's RPC target that change nothing, for a caller using its direct channel
#: (:meth:`oneos.pubsub.rpc.RPCClient.enable_direct`): when the channel breaks before answering one, it is
#: sent again over the bus.  ``agent_attach`` only hands out a token to read an output, which expires
#: unused.  Not ``agent_stdin``: its token, expiring unused, closes the program's input.
RETRY_SAFE = ("ping", "status", "members", "agent_list", "agent_attach", "device_list")


class AgentsClient:
    """Typed calls to the agent methods of any runtime."""

    def __init__(
        self, rpc: Any, timeout: float | None = None, meta: Callable[[], dict[str, Any]] | None = None
    ) -> None:
        self.rpc = rpc
        #: seconds to wait for an answer (None: the RPC client's default)
        self.timeout = timeout
        self.meta = meta

    def _call(self, runtime: str, method: str, **args: Any) -> defer.Deferred:
        if self.meta is not None:
            return self.rpc.call(runtime, method, timeout=self.timeout, meta=self.meta(), **args)
        return self.rpc.call(runtime, method, timeout=self.timeout, **args)

    def spawn(
        self,
        runtime: str,
        program: str,
        args: Sequence[str] = (),
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        memory_mb: int = 0,
        restart: str = "no",
        stdout: OutputTarget | None = None,
        stdin: bool = True,
        agent_id: str | None = None,
        stderr: OutputTarget | None = None,
        stdin_file: str | None = None,
        job: str = "",
        incarnation: int = 0,
        history: dict[str, Any] | None = None,
        user: str = "",
    ) -> defer.Deferred:
        """Start *program* on *runtime*; fires with its :class:`AgentInfo`."""
        return self._call(
            runtime,
            "agent_spawn",
            program=program,
            args=list(args),
            cwd=cwd,
            env=env,
            memory_mb=memory_mb,
            restart=restart,
            stdout=(stdout or OutputTarget.attach()).encode(),
            stdin=stdin,
            agent_id=agent_id,
            stderr=(stderr or OutputTarget.attach()).encode(),
            stdin_file=stdin_file,
            job=job,
            incarnation=incarnation,
            history=history or {},
            user=user,
        ).addCallback(AgentInfo.decode)

    def kill(
        self, runtime: str, agent_id: str, grace: float | None = None, reason: str | None = None
    ) -> defer.Deferred:
        """SIGTERM, then SIGKILL after *grace* seconds; *reason* is logged and kept in its record."""
        args: dict[str, Any] = {}
        if grace is not None:
            args["grace"] = grace
        if reason is not None:
            args["reason"] = reason
        return self._call(runtime, "agent_kill", agent_id=agent_id, **args).addCallback(AgentInfo.decode)

    def pause(self, runtime: str, agent_id: str) -> defer.Deferred:
        return self._call(runtime, "agent_pause", agent_id=agent_id).addCallback(AgentInfo.decode)

    def resume(self, runtime: str, agent_id: str) -> defer.Deferred:
        return self._call(runtime, "agent_resume", agent_id=agent_id).addCallback(AgentInfo.decode)

    def list_agents(self, runtime: str) -> defer.Deferred:
        """Every agent *runtime* still knows (ended ones included): a list of :class:`AgentInfo`."""
        return self._call(runtime, "agent_list").addCallback(lambda rows: [AgentInfo.decode(r) for r in rows])

    def attach(self, runtime: str, agent_id: str, stream: str = "stdout") -> defer.Deferred:
        """Where to read the agent's ``stdout`` or ``stderr`` from: a :class:`StreamAddress`."""
        return self._call(runtime, "agent_attach", agent_id=agent_id, stream=stream).addCallback(StreamAddress.decode)

    def stdin(self, runtime: str, agent_id: str, source: str | None = None) -> defer.Deferred:
        """Where to stream the agent's input to: a :class:`StreamAddress`.

        *source* names the stage feeding it (``NAME@RUNTIME``): if that
        stream breaks, the runtime stops the program with a reason naming it.
        """
        args = {} if source is None else {"source": source}
        return self._call(runtime, "agent_stdin", agent_id=agent_id, **args).addCallback(StreamAddress.decode)

    def pipe_out(self, runtime: str, agent_id: str, into: StreamAddress, to: str = "") -> defer.Deferred:
        """Send the agent's stdout into *into* (another agent's stdin); *to* names it (``AGENT@RUNTIME``)."""
        return self._call(runtime, "agent_pipe_out", agent_id=agent_id, to=to, **into.encode())
