"""The agent manager: runs programs as child processes of this runtime.

One :class:`AgentProcess` (a Twisted ProcessProtocol) per agent.  Output is
pulled, not pushed: each stream (stdout, stderr) is an :class:`OutputStream`
that pauses reading from the child while whoever consumes it is behind, so
a slow consumer slows the program instead of filling memory.  Nothing is
lost: the exit status is reported only after both streams reached their end.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import psutil
from twisted.application import service
from twisted.internet import defer, error, protocol, task
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.logger import Logger
from twisted.python.failure import Failure

from oneos.agents.info import (  # noqa: F401  (the states and AgentError are imported from here too)
    ENDED,
    EXITED,
    FAILED,
    KILLED,
    LOST,
    PAUSED,
    RUNNING,
    AgentError,
    AgentInfo,
    OutputTarget,
)
from oneos.agents.program import ProgramError, resolve_argv

log = Logger()

#: Output buffered per stream before the child is paused.
HIGH_WATER = 1024 * 1024


@dataclass(frozen=True)
class Account:
    """The OS account agents run as (never root by default: see :func:`agent_account`)."""

    name: str
    uid: int
    gid: int
    home: str


def agent_account(setting: str) -> Account | None:
    """The account for the ``run_as`` setting; None: run as the runtime's own user.

    ``auto`` (the default): a runtime running as root runs programs as
    ``nobody``, so a program (or whoever can submit one) never holds root on
    the machine, nor reads the runtime's keys in ``$ONEOS_HOME``; a runtime
    run by an ordinary user runs them as that user.  ``root`` asks for root
    explicitly; any other name is that account.
    """
    import pwd

    if setting in ("", "auto"):
        if os.geteuid() != 0:
            return None
        setting = "nobody"
    try:
        entry = pwd.getpwnam(setting)
    except KeyError:
        raise AgentError(f"run_as: no OS account {setting!r} on this machine", "EINVAL") from None
    if entry.pw_uid == os.geteuid():
        return None  # the runtime's own account (or root, asked for by name)
    if os.geteuid() != 0:
        raise AgentError(
            f"run_as {setting!r}: only a runtime started as root can run programs as another account", "EPERM"
        )
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def reachable_path(path: str) -> str:
    """The entries of a PATH that any account can search (a root-only ~/.pyenv would only give EACCES)."""

    def open_to_all(directory: str) -> bool:
        p = os.path.abspath(directory)
        while True:
            try:
                if not os.stat(p).st_mode & 0o001:
                    return False
            except OSError:
                return False
            parent = os.path.dirname(p)
            if parent == p:
                return True
            p = parent

    return os.pathsep.join(d for d in path.split(os.pathsep) if d and open_to_all(d))


#: Variables that change what a dynamically linked program loads or reads before ``main`` (glibc's
#: list of those it ignores for setuid programs, plus every ``LD_``/``MALLOC_`` one).  The wrappers
#: that drop privileges (``setsid``, ``env -C``, ``setpriv``) still run as root, so a program's
#: environment (which its user sets: ``LD_PRELOAD=/tmp/mine.so prog``) must not reach them.
LOADER_VARIABLES = frozenset(
    (
        "GCONV_PATH",
        "GETCONF_DIR",
        "GLIBC_TUNABLES",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "LOCPATH",
        "NIS_PATH",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "RES_OPTIONS",
        "TMPDIR",
        "TZDIR",
    )
)


def loader_variable(name: str) -> bool:
    """Whether *name* steers the dynamic loader or libc start-up (see :data:`LOADER_VARIABLES`)."""
    return name.startswith(("LD_", "MALLOC_")) or name in LOADER_VARIABLES


def split_loader_env(env: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """*env* without the loader variables (for the root wrappers), and those (set only after privileges drop)."""
    late = {k: v for k, v in env.items() if loader_variable(k)}
    return {k: v for k, v in env.items() if k not in late}, late


def session_argv(
    argv: list[str],
    account: Account | None = None,
    which: Callable[[str], str | None] = shutil.which,
    late_env: dict[str, str] | None = None,
) -> list[str] | None:
    """Wrap *argv* so the child starts a new session and dies with its runtime.

    Twisted's spawnProcess has no pre-exec hook, so util-linux does it:
    ``setsid`` gives the agent its own process group (it execs in place, no
    fork, since a fresh child is never a group leader, so the agent's pid is
    the group id) and ``setpriv --pdeathsig KILL`` makes the kernel kill the
    agent if the runtime process dies, so a SIGKILLed runtime leaves no
    orphans running behind the scheduler's back.  *which* finds them (the
    agent manager passes its remembered lookups).

    *late_env* (loader variables split off by :func:`split_loader_env`) is
    set by ``env`` after ``setpriv`` has dropped to *account*, so it only
    ever steers the program, never the wrappers running as root.  Raises
    AgentError if that cannot be done safely (no ``env``, a program path
    ``env`` would read as an assignment).
    """
    setsid = which("setsid")
    if setsid is None:
        return None
    setpriv = which("setpriv")
    if setpriv is not None:
        drop = ["--reuid", str(account.uid), "--regid", str(account.gid), "--clear-groups"] if account else []
        tail = list(argv)
        if late_env:
            env = which("env")
            if env is None or "=" in argv[0]:
                names = ", ".join(sorted(late_env))
                raise AgentError(f"cannot pass {names} to {argv[0]} safely (needs env and a path without '=')", "EPERM")
            tail = [env, "--", *(f"{k}={v}" for k, v in sorted(late_env.items())), *argv]
        return [setsid, setpriv, "--pdeathsig", "KILL", *drop, "--", *tail]
    if late_env:
        raise AgentError("cannot set loader variables for a program without util-linux setpriv", "EPERM")
    return [setsid, *argv]


_T = TypeVar("_T")

#: Seconds a PATH lookup (where PATH finds a program; which PATH entries anyone may search) is reused.
LOOKUP_TTL = 5.0
#: Lookups remembered at most (the oldest is forgotten first).
LOOKUP_ENTRIES = 256


class Lookups:
    """PATH lookups remembered for LOOKUP_TTL seconds, each checked cheaply again before it is reused.

    Every spawn asked the file system the same questions: where PATH finds
    ``setsid``, ``setpriv`` and the program (a stat per PATH entry) and, for
    programs run as another account, which PATH entries anyone may search (a
    stat of every ancestor of every entry): half a millisecond of the
    reactor's time per spawn on a loaded machine.  The answers change only
    when software is installed or permissions change, so each is kept a few
    seconds; a program's path is also checked to still be an executable file
    before each reuse (two syscalls), so a removed program is never started
    from memory, and one installed earlier in PATH is found within the TTL.
    Failures are never remembered.
    """

    def __init__(self, seconds: Callable[[], float], ttl: float = LOOKUP_TTL, size: int = LOOKUP_ENTRIES) -> None:
        self.seconds = seconds
        self.ttl = ttl
        self.size = size
        self._entries: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any, compute: Callable[[], _T], valid: Callable[[Any], bool] | None = None) -> _T:
        """The remembered answer for *key* while fresh and *valid*; else *compute*'s, remembered unless None."""
        now = self.seconds()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now and (valid is None or valid(entry[1])):
            return entry[1]
        self._entries.pop(key, None)
        value = compute()
        if value is not None:
            if len(self._entries) >= self.size:
                del self._entries[next(iter(self._entries))]
            self._entries[key] = (now + self.ttl, value)
        return value

    def which(self, name: str) -> str | None:
        """``shutil.which(name)`` on the runtime's own PATH."""
        path = os.environ.get("PATH", os.defpath)
        return self.get(("which", name, path), lambda: shutil.which(name, path=path), _executable)

    def reachable_path(self, path: str) -> str:
        """:func:`reachable_path` of *path*."""
        return self.get(("reachable", path), lambda: reachable_path(path))

    def argv(self, program: str, args: list[str], path: str | None, cwd: str | None) -> list[str]:
        """:func:`~oneos.agents.program.resolve_argv`, the part naming the program remembered."""
        head = self.get(("argv", program, path, cwd), lambda: resolve_argv(program, [], path=path, cwd=cwd), _runnable)
        return [*head, *args]


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _runnable(head: list[str]) -> bool:
    """A resolved program (``[exe]`` or ``[interpreter, script]``) is still there to run."""
    return _executable(head[0]) and (len(head) == 1 or os.path.isfile(head[1]))


@functools.cache
def chdir_helper() -> str | None:
    """GNU ``env`` if it has ``-C DIR`` (coreutils 8.28+), asked once: a child then changes directory itself.

    Twisted starts a child with ``posix_spawn`` (vfork-like: the runtime's
    memory is not copied) only when it need not change directory; with a
    working directory it forks, which cost a runtime of 80 MB some 6 ms of
    its own CPU per spawn (30 ms at a load of 8) against under 1 ms.  So the
    directory change moves into the child's chain (``setsid env -C DIR --
    setpriv ...``), done as root where Twisted's fork did it.
    """
    env = shutil.which("env")
    if env is None:
        return None
    try:
        probe = subprocess.run(
            [env, "-C", "/", "--", env], env={}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return env if probe.returncode == 0 else None


#: Bytes read from a child's pipe per wakeup (Twisted reads 8 KiB, which
#: caps a pipe at a few hundred MB/s of reactor wakeups).
READ_SIZE = 1024 * 1024


#: fcntl F_SETPIPE_SZ (Linux): a 1 MiB pipe means 16x fewer wakeups than 64 KiB.
_F_SETPIPE_SZ = 1031
PIPE_SIZE = 1024 * 1024


def _grow_pipe(fd: int) -> None:
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # not Linux, or over /proc/sys/fs/pipe-max-size: keep the default


def _read_large(reader: Any) -> Any:
    """``doRead`` for a child's output pipe that takes up to READ_SIZE bytes at once."""
    try:
        data = os.read(reader.fd, READ_SIZE)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EINTR):
            return None
        return CONNECTION_LOST
    if not data:
        return CONNECTION_DONE
    reader.dataReceived(data)
    return None


RESTART_POLICIES = ("no", "on-failure", "always")


class ProgramEnv(Protocol):
    """What a program's environment gets from the runtime beyond the spec's (the device gateway's token).

    ``grant`` is asked once per start, with the agent's id and OneOS owner,
    and answers variables to add (``PYTHONPATH`` is put in front of the
    program's own rather than replacing it); ``revoke`` is told when the
    agent has ended, or failed to start, so what was granted dies with it.
    """

    def grant(self, agent_id: str, user: str) -> dict[str, str]: ...

    def revoke(self, agent_id: str) -> None: ...


@dataclass
class AgentSpec:
    """What to run and how."""

    program: str
    args: list[str] = field(default_factory=list)
    cwd: str | None = None
    env: dict[str, str] | None = None
    name: str = ""
    memory_limit_mb: int = 0
    restart: str = "no"  # "no" | "on-failure" | "always"
    stdin: bool = True  # keep the child's stdin open for writing
    #: the job this agent is one incarnation of ('' = its own id): restarts keep the job, not the agent id
    job: str = ""
    #: which start of the job this is (0 first); a returning runtime's older incarnation is superseded
    incarnation: int = 0
    #: the scheduler's restart bookkeeping, carried so a new leader picks it up (oneos.scheduler.restarts)
    history: dict[str, Any] = field(default_factory=dict)
    #: the OneOS user the program belongs to (who may kill, pause and resume it)
    user: str = ""


class OutputStream:
    """One output stream of a child: a bounded queue consumers pull from.

    ``next()`` fires with the next bytes, or ``b''`` at the end — the same
    shape as :class:`oneos.transfer.Source`, so a stream can be sent straight
    into a pipe.
    """

    def __init__(
        self, pause: Callable[[], None], resume: Callable[[], None], pipe: Callable[[], Any] | None = None
    ) -> None:
        self._pause = pause
        self._resume = resume
        #: the child's pipe reader (Twisted's ProcessReader), when there is one to lend to a splice pump
        self._pipe = pipe
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._ended = False
        self._waiter: defer.Deferred | None = None
        self._paused = False
        self._may_pause = True
        #: a splice pump has the pipe (oneos.splice): nothing is read into this queue meanwhile
        self._spliced = False
        self.total = 0

    def splice_out(self, ended: Callable[[], defer.Deferred] | None = None) -> _SplicedOutput | None:
        """Lend the child's pipe to a splice pump (:class:`oneos.splice.PipeOutput`), or None if it cannot be.

        Only a live pipe with no reader waiting on :meth:`next` qualifies.
        *ended* says, once the pipe has ended, whether the output is whole
        (default: always).
        """
        reader = self._pipe() if self._pipe is not None else None
        if (
            reader is None
            or self._spliced
            or self._ended
            or self._waiter is not None
            or not getattr(reader, "connected", False)
            or getattr(reader, "disconnecting", False)
        ):
            return None
        return _SplicedOutput(self, reader, ended)

    def no_more_pausing(self) -> None:
        """The producer has exited; what remains is bounded, so never pause again."""
        self._may_pause = False

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        if self._waiter is not None and not self._chunks:
            d, self._waiter = self._waiter, None
            d.callback(data)
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._size >= HIGH_WATER and not self._paused and self._may_pause:
            self._paused = True
            self._pause()

    def end(self) -> None:
        self._ended = True
        if self._waiter is not None and not self._chunks:
            d, self._waiter = self._waiter, None
            d.callback(b"")

    @property
    def ended(self) -> bool:
        return self._ended and not self._chunks

    def next(self) -> defer.Deferred:
        if self._chunks:
            data = b"".join(self._chunks)
            self._chunks.clear()
            self._size = 0
            if self._paused:
                self._paused = False
                self._resume()
            return defer.succeed(data)
        if self._ended:
            return defer.succeed(b"")
        if self._waiter is not None:
            return defer.fail(AgentError("this output stream already has a reader", "EBUSY"))
        self._waiter = defer.Deferred()
        return self._waiter


class InputClosed(AgentError):
    """The program closed its input (or ended): what a stream into it fails with, as SIGPIPE would a UNIX writer.

    Its own choice, not a fault to stop it for (a ``head -c 100`` that read
    enough); the writer is the one that stops.
    """

    def __init__(self, message: str = "the program closed its input") -> None:
        super().__init__(message, "EPIPE")


class StdinSink:
    """Writes to a child's stdin with back-pressure (``write`` waits while the pipe is full)."""

    def __init__(self, agent: AgentProcess) -> None:
        self.agent = agent
        self.paused = False
        self._waiters: list[defer.Deferred] = []
        self.closed = False
        #: told when the program closes its input while a splice pump has the pipe
        self._on_closed: Callable[[], None] | None = None
        self._spliced = False

    def splice_in(self) -> _SplicedInput | None:
        """Lend the child's input pipe to a splice pump (:class:`oneos.splice.PipeInput`), or None if it cannot be.

        Only an untouched pipe qualifies (nothing written through Twisted,
        whose buffer would otherwise have to drain first): a pipeline
        stage's input, fed by its pipe alone.
        """
        writer = self.agent._reader(0)
        if (
            writer is None
            or self._spliced
            or self.closed
            or self.agent.stdin_bytes
            or self.agent.state in ENDED
            or not getattr(writer, "connected", False)
            or getattr(writer, "disconnecting", False)
        ):
            return None
        return _SplicedInput(self, writer)

    # IPushProducer, registered on the child's stdin writer
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def stopProducing(self) -> None:
        self.closed = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(InputClosed())
        closed, self._on_closed = self._on_closed, None
        if closed is not None:
            closed()

    def write(self, data: bytes) -> defer.Deferred:
        if self.closed or self.agent.transport is None or self.agent.state in ENDED:
            return defer.fail(InputClosed("the program no longer reads its input"))
        self.agent.transport.writeToChild(0, data)
        self.agent.stdin_bytes += len(data)
        if not self.paused:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiters.append(d)
        return d

    def finish(self) -> defer.Deferred:
        if not self.closed and self.agent.transport is not None:
            self.closed = True
            try:
                self.agent.transport.closeStdin()
            except Exception:
                pass
        return defer.succeed({"bytes": self.agent.stdin_bytes})

    def abort(self) -> None:
        self.finish()


class _SplicedOutput:
    """A child's output pipe lent to a splice pump (implements :class:`oneos.splice.PipeOutput`).

    Twisted's ProcessReader stays the pipe's one registered reader (so its
    end still closes the pipe and ends the stream the usual way); only what
    it does when the pipe is readable changes, and changes back on release.
    """

    def __init__(self, stream: OutputStream, reader: Any, ended: Callable[[], defer.Deferred] | None) -> None:
        self.stream = stream
        self.reader = reader
        self.fd: int = reader.fd
        self._ended = ended
        self._normal = reader.doRead
        self._eof = False
        stream._spliced = True

    def take_buffered(self) -> bytes:
        data = b"".join(self.stream._chunks)
        self.stream._chunks.clear()
        self.stream._size = 0
        self.stream._paused = False
        return data

    def start(self, readable: Callable[[], None]) -> None:
        def do_read() -> None:
            readable()

        self.reader.doRead = do_read
        self.reader.resumeProducing()

    def pause(self) -> None:
        self.reader.pauseProducing()

    def resume(self) -> None:
        self.reader.resumeProducing()

    def moved(self, n: int) -> None:
        self.stream.total += n

    @property
    def exited(self) -> bool:
        return not self.stream._may_pause

    def at_eof(self) -> None:
        self._eof = True
        self.reader.loseConnection()  # closes the pipe soon; outConnectionLost then ends the stream

    def ended(self) -> defer.Deferred:
        return self._ended() if self._ended is not None else defer.succeed(None)

    def release(self) -> None:
        if not self.stream._spliced:
            return
        self.stream._spliced = False
        if not self._eof:
            self.reader.doRead = self._normal
            self.reader.resumeProducing()  # what the program still writes is read (and paused) as before


class _SplicedInput:
    """A child's input pipe lent to a splice pump (implements :class:`oneos.splice.PipeInput`)."""

    def __init__(self, sink: StdinSink, writer: Any) -> None:
        self.sink = sink
        self.fd: int = writer.fd
        sink._spliced = True

    def start(self, closed: Callable[[], None]) -> None:
        self.sink._on_closed = closed

    def moved(self, n: int) -> None:
        self.sink.agent.stdin_bytes += n

    def closed_error(self) -> BaseException:
        return InputClosed()

    def release(self) -> None:
        self.sink._on_closed = None
        self.sink._spliced = False


class AgentProcess(protocol.ProcessProtocol):
    """One running program."""

    def __init__(self, manager: AgentManager, agent_id: str, spec: AgentSpec, argv: list[str]) -> None:
        self.manager = manager
        self.id = agent_id
        self.spec = spec
        self.argv = argv
        self.state = RUNNING
        self.pid: int | None = None
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.reason = ""
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.stdin_bytes = 0
        #: where stdout goes: attach, discard, file:PATH, append:PATH, pipe:AGENT@RUNTIME
        self.stdout_to = OutputTarget.attach()
        self.stdout = OutputStream(lambda: self._pause_fd(1), lambda: self._resume_fd(1), lambda: self._reader(1))
        self.stderr = OutputStream(lambda: self._pause_fd(2), lambda: self._resume_fd(2), lambda: self._reader(2))
        self.stdin = StdinSink(self)
        self.ended: defer.Deferred = defer.Deferred()
        self._kill_timer: IDelayedCall | None = None
        self._psutil: psutil.Process | None = None

    def _process(self) -> IProcessTransport:
        """The child's transport, there from ``spawnProcess`` on (Twisted types it as Optional)."""
        assert self.transport is not None, "not spawned yet"
        return self.transport

    # -- reading flow control ---------------------------------------------
    def _reader(self, fd: int) -> Any:
        pipes = getattr(self.transport, "pipes", {})
        return pipes.get(fd)

    def _pause_fd(self, fd: int) -> None:
        reader = self._reader(fd)
        if reader is not None:
            reader.pauseProducing()

    def _resume_fd(self, fd: int) -> None:
        reader = self._reader(fd)
        if reader is not None:
            reader.resumeProducing()

    # -- ProcessProtocol ----------------------------------------------------
    def connectionMade(self) -> None:
        self.pid = self._process().pid
        for fd in (0, 1, 2):
            pipe = self._reader(fd)
            if pipe is None:
                continue
            _grow_pipe(pipe.fd)
            if fd:
                pipe.doRead = functools.partial(_read_large, pipe)
        # No psutil.Process here: reading /proc/PID/stat of a child that is still exec'ing blocks until the
        # exec is done (milliseconds of the reactor's time per spawn); info() opens it at its first measure.
        writer = self._reader(0)
        if writer is not None:
            writer.registerProducer(self.stdin, True)
        if not self.spec.stdin:
            self._process().closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.stdout.feed(data)

    def errReceived(self, data: bytes) -> None:
        self.stderr.feed(data)

    def outConnectionLost(self) -> None:
        self.stdout.end()

    def errConnectionLost(self) -> None:
        self.stderr.end()

    def inConnectionLost(self) -> None:
        self.stdin.stopProducing()

    def processExited(self, reason: Failure) -> None:
        """The child is gone: let its last output in even if nobody reads it.

        Twisted reports the end only once every pipe is closed, and a paused
        pipe is never read to its end; what is left is at most one pipe
        buffer, so reading it unconditionally stays bounded.
        """
        self.stdout.no_more_pausing()
        self.stderr.no_more_pausing()
        self._resume_fd(1)
        self._resume_fd(2)

    def processEnded(self, reason: Failure) -> None:
        if self._kill_timer is not None and self._kill_timer.active():
            self._kill_timer.cancel()
        self.stdout.end()
        self.stderr.end()
        value = reason.value
        self.exit_code = getattr(value, "exitCode", None)
        self.signal = getattr(value, "signal", None)
        self.ended_at = time.time()
        if self.state != FAILED:
            self.state = KILLED if self.signal is not None else EXITED
        self.manager._ended(self)
        self.ended.callback(self)

    # -- control ------------------------------------------------------------
    def send_signal(self, name: str) -> None:
        """Send SIG*name* (TERM, KILL, STOP, CONT, INT...) to the agent's whole process group.

        Agents run in their own session (see :func:`session_argv`), so a shell
        script's children are signalled too and cannot keep the agent's
        pipes open after it was killed.
        """
        number = int(getattr(signal, "SIG" + name))
        if self.pid is not None and self.manager.own_session:
            try:
                os.killpg(self.pid, number)
                return
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self._process().signalProcess(number)
        except error.ProcessExitedAlready:
            pass

    def _measured(self) -> psutil.Process | None:
        """The child's psutil handle, opened at the first measure while it runs (its pid not yet reaped)."""
        if self._psutil is None and self.pid is not None and getattr(self.transport, "pid", None) is not None:
            try:
                self._psutil = psutil.Process(self.pid)
            except psutil.Error:
                pass
        return self._psutil

    def info(self, measure: bool = True) -> dict[str, Any]:
        """What the process table shows; *measure* False: CPU and memory as 0 (a program just started)."""
        cpu = rss = 0.0
        process = self._measured() if measure and self.state in (RUNNING, PAUSED) else None
        if process is not None:
            try:
                with process.oneshot():
                    cpu = process.cpu_percent(interval=None)
                    rss = process.memory_info().rss / 2**20
            except psutil.Error:
                pass
        end = self.ended_at or time.time()
        return AgentInfo(
            id=self.id,
            name=self.spec.name or os.path.basename(self.spec.program),
            program=self.spec.program,
            args=tuple(self.spec.args),
            runtime=self.manager.runtime_id,
            state=self.state,
            pid=self.pid,
            exit_code=self.exit_code,
            signal=self.signal,
            reason=self.reason,
            cpu_percent=round(cpu, 1),
            memory_mb=round(rss, 1),
            uptime=round(end - self.started_at, 3),
            restart=self.spec.restart,
            job=self.spec.job or self.id,
            user=self.spec.user,
            incarnation=self.spec.incarnation,
            history=dict(self.spec.history),
            stdin_bytes=self.stdin_bytes,
            stdout_bytes=self.stdout.total,
            stderr_bytes=self.stderr.total,
            stdout_to=self.stdout_to,
        ).encode()


EventListener = Callable[[dict[str, Any]], Any]


def _in_directory(run: list[str], cwd: str | None, wrapped: bool) -> tuple[list[str], str | None]:
    """*run* and the directory to give spawnProcess: None whenever the child can change directory itself.

    Twisted forks (copying the runtime's page tables) instead of using
    ``posix_spawn`` when asked for a directory other than the runtime's own
    (see :func:`chdir_helper`).  The helper goes after ``setsid`` (*wrapped*),
    where the command it runs is ``setpriv``'s path; a command whose path has
    ``=`` in it would read as a variable to ``env``, so that one still forks.
    """
    if cwd is None or os.path.abspath(cwd) == os.getcwd():
        return run, None
    env = chdir_helper()
    at = 1 if wrapped else 0
    if env is None or "=" in run[at]:
        return run, cwd
    return [*run[:at], env, "-C", cwd, "--", *run[at:]], None


class AgentManager(service.Service):
    """Spawns, tracks, signals and reaps this runtime's agents."""

    name = "agents"  # type: ignore[assignment]  # Twisted: Service.name = None, so mypy infers type None

    def __init__(
        self,
        reactor: Any,
        runtime_id: str,
        *,
        memory_limit_mb: int = 0,
        kill_grace: float = 5.0,
        check_interval: float = 1.0,
        clock: Any = None,
        keep_ended: int = 200,
        account: Account | None = None,
        program_env: ProgramEnv | None = None,
    ) -> None:
        self.reactor = reactor
        #: the OS account programs run as (None: the runtime's own)
        self.account = account
        #: adds to each program's environment what lets it open devices (oneos.devices.gateway); None: nothing
        self.program_env = program_env
        self.clock = clock or reactor
        self.runtime_id = runtime_id
        self.memory_limit_mb = memory_limit_mb
        self.kill_grace = kill_grace
        self.check_interval = check_interval
        self.keep_ended = keep_ended
        self.agents: dict[str, AgentProcess] = {}
        #: agents get their own process group (when util-linux setsid exists)
        self.own_session = shutil.which("setsid") is not None
        self._listeners: list[EventListener] = []
        self._loop: task.LoopingCall | None = None
        #: PATH lookups shared by every spawn (see Lookups)
        self.lookups = Lookups(self.clock.seconds)

    def on_event(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def _emit(self, agent: AgentProcess, event: str, *, measure: bool = True, **extra: Any) -> None:
        body = {"event": event, **agent.info(measure=measure), **extra}
        for listener in list(self._listeners):
            try:
                listener(body)
            except Exception:
                log.failure("agent event listener failed")

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self.check_limits)
        self._loop.clock = self.clock
        self._loop.start(self.check_interval, now=False)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        live = [a for a in self.agents.values() if a.state not in ENDED]
        for agent in live:
            self.kill(agent.id)
        done = defer.DeferredList([a.ended for a in live])

        # SIGKILL follows after kill_grace; never let a stuck child hold the
        # runtime's shutdown hostage beyond that.
        def give_up() -> None:
            if not done.called:
                done.callback([])

        timer = self.clock.callLater(self.kill_grace + 5.0, give_up)
        return done.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])

    # -- lifecycle -----------------------------------------------------------
    def new_id(self) -> str:
        while True:
            candidate = secrets.token_hex(4)
            if candidate not in self.agents:
                return candidate

    def live_agents(self) -> list[AgentProcess]:
        return [a for a in self.agents.values() if a.state in (RUNNING, PAUSED)]

    def spawn(self, spec: AgentSpec, agent_id: str | None = None) -> AgentProcess:
        """Start *spec*; raises ProgramError/AgentError with a plain reason."""
        if spec.restart not in RESTART_POLICIES:
            raise AgentError(f"unknown restart policy {spec.restart!r} ({', '.join(RESTART_POLICIES)})", "EINVAL")
        if spec.cwd is not None and not os.path.isdir(spec.cwd):
            raise ProgramError(f"working directory {spec.cwd} does not exist on runtime {self.runtime_id}", "ENOENT")
        env = dict(os.environ if spec.env is None else spec.env)
        cwd = spec.cwd
        if self.account is not None:
            # Nothing of the runtime's own (its home, its keys) is the program's business.
            env.pop("ONEOS_HOME", None)
            env.update(
                HOME=self.account.home,
                USER=self.account.name,
                LOGNAME=self.account.name,
                PATH=self.lookups.reachable_path(env.get("PATH", os.defpath)),
            )
            cwd = cwd or "/tmp"
        argv = self.lookups.argv(spec.program, spec.args, path=env.get("PATH"), cwd=cwd)
        agent = AgentProcess(self, agent_id or self.new_id(), spec, argv)
        late: dict[str, str] = {}
        if self.account is not None:
            env, late = split_loader_env(env)  # the wrappers run as root: see LOADER_VARIABLES
        wrapped = session_argv(argv, self.account, self.lookups.which, late) if self.own_session else None
        if wrapped is None and self.account is not None:
            raise AgentError(
                f"cannot run programs as {self.account.name}: util-linux setsid/setpriv are missing", "EPERM"
            )
        run, cwd = _in_directory(wrapped or argv, cwd, wrapped is not None)
        if self.program_env is not None:
            for key, value in self.program_env.grant(agent.id, spec.user).items():
                if key == "PYTHONPATH" and env.get(key):
                    value = os.pathsep.join((value, env[key]))
                env[key] = value
        try:
            self.reactor.spawnProcess(agent, run[0], run, env=env, path=cwd, childFDs={0: "w", 1: "r", 2: "r"})
        except OSError as e:
            if self.program_env is not None:
                self.program_env.revoke(agent.id)
            raise ProgramError(f"{spec.program}: {e.strerror or e}", "EACCES") from None
        self.agents[agent.id] = agent
        log.info("agent {id} started: {argv}", id=agent.id, argv=" ".join(argv))
        self._emit(agent, "started", measure=False)  # nothing to measure yet (and /proc would block: see _measured)
        return agent

    def _ended(self, agent: AgentProcess) -> None:
        if self.program_env is not None:
            self.program_env.revoke(agent.id)
        how = f"signal {agent.signal}" if agent.signal is not None else f"status {agent.exit_code}"
        log.info(
            "agent {id} ended ({how}){reason}", id=agent.id, how=how, reason=f": {agent.reason}" if agent.reason else ""
        )
        self._emit(agent, "ended")
        ended = [a for a in self.agents.values() if a.state in ENDED]
        for old in ended[: max(0, len(ended) - self.keep_ended)]:
            self.agents.pop(old.id, None)

    def get(self, agent_id: str) -> AgentProcess:
        agent = self.agents.get(agent_id)
        if agent is None:
            raise AgentError(f"no agent {agent_id!r} on runtime {self.runtime_id}")
        return agent

    def kill(self, agent_id: str, grace: float | None = None, reason: str = "") -> AgentProcess:
        """SIGTERM now, SIGKILL after *grace* seconds if it is still there."""
        agent = self.get(agent_id)
        if agent.state in ENDED:
            return agent
        if reason:
            agent.reason = reason
        if agent.state == PAUSED:
            agent.send_signal("CONT")  # a stopped process cannot act on SIGTERM
        agent.send_signal("TERM")
        grace = self.kill_grace if grace is None else grace
        if agent._kill_timer is None:

            def kill_late() -> None:
                if agent.state not in ENDED:
                    agent.send_signal("KILL")

            agent._kill_timer = self.clock.callLater(grace, kill_late)
        return agent

    def _switch(self, agent_id: str, want: str, signal_name: str, becomes: str, event: str) -> AgentProcess:
        agent = self.get(agent_id)
        if agent.state != want:
            raise AgentError(f"agent {agent_id} is {agent.state}, not {want}", "EINVAL")
        agent.send_signal(signal_name)
        agent.state = becomes
        self._emit(agent, event)
        return agent

    def pause(self, agent_id: str) -> AgentProcess:
        """SIGSTOP a running agent."""
        return self._switch(agent_id, RUNNING, "STOP", PAUSED, "paused")

    def resume(self, agent_id: str) -> AgentProcess:
        """SIGCONT a paused agent."""
        return self._switch(agent_id, PAUSED, "CONT", RUNNING, "resumed")

    def check_limits(self) -> None:
        """Enforce per-agent and per-runtime memory limits, with a reason."""
        total = 0.0
        live = self.live_agents()
        usage: list[tuple[float, AgentProcess]] = []
        for agent in live:
            mb = agent.info()["memory_mb"]
            total += mb
            usage.append((mb, agent))
            if agent.spec.memory_limit_mb and mb > agent.spec.memory_limit_mb:
                self.kill(
                    agent.id, grace=0.5, reason=f"memory limit exceeded: {mb:.0f} MB > {agent.spec.memory_limit_mb} MB"
                )
                agent.state = FAILED
        if self.memory_limit_mb and total > self.memory_limit_mb and usage:
            mb, biggest = max(usage, key=lambda pair: pair[0])
            if biggest.state not in ENDED:
                self.kill(
                    biggest.id,
                    grace=0.5,
                    reason=f"runtime memory limit exceeded: agents use {total:.0f} MB > {self.memory_limit_mb} MB; stopped the largest",
                )
                biggest.state = FAILED
