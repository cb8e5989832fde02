"""Streaming pipelines of the shell: pipes, back-pressure, SIGPIPE, mixed built-in/program pipelines.

Deterministic: the file system, the scheduler, the agents and the transfer
streams are in-memory fakes, and time is a ``task.Clock`` (the fake file
system hands out one chunk per clock tick, so the stages really interleave
instead of running one after the other).  A real runtime pushing 200 MiB
through ``cat F | wc -c`` and ``cat F | sha256sum`` while its peak RSS is
watched is in tests/integration/test_shell_ssh.py.
"""

from __future__ import annotations

import hashlib
import tracemalloc
from collections import Counter
from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.python.failure import Failure

from oneos.agents.info import OutputTarget
from oneos.errors import RPCTimeout
from oneos.fs import errors, paths
from oneos.fs.store import Stat
from oneos.runtime.status import RuntimeStatus
from oneos.scheduler.service import SchedulerService
from oneos.shell.builtins import context as builtin_context
from oneos.shell.builtins.context import Input
from oneos.shell.errors import BrokenPipe, ShellError
from oneos.shell.interpreter import Interpreter
from oneos.shell.session import Grid, Session
from oneos.shell.streams import PIPE_CHUNK, PIPE_LIMIT, PipeReader, PipeSink, StreamPipe
from oneos.transfer import TransferError

MiB = 1024 * 1024
CHUNK = 256 * 1024
#: The fake file system hands out (and takes) one chunk per TICK of the clock.
TICK = 0.001


# -- fakes ---------------------------------------------------------------------------------------


def pattern(size: int) -> Generated:
    return Generated(size)


class Generated:
    """A large file's content made on the fly (never whole in memory): a repeating line of 50 words."""

    UNIT = b" ".join(b"w%03d" % i for i in range(50)) + b"\n"

    def __init__(self, size: int) -> None:
        self.size = size

    def piece(self, offset: int, length: int) -> bytes:
        unit = self.UNIT
        start = offset % len(unit)
        reps = (start + length) // len(unit) + 2
        return (unit * reps)[start : start + length]

    def sha256(self) -> str:
        h = hashlib.sha256()
        for off in range(0, self.size, CHUNK):
            h.update(self.piece(off, min(CHUNK, self.size - off)))
        return h.hexdigest()

    def lines(self) -> int:
        return self.size // len(self.UNIT)  # a partial last line has no newline

    def words(self) -> int:
        full, rest = divmod(self.size, len(self.UNIT))
        return full * 50 + len(self.UNIT[:rest].split())


class Written:
    """What a streamed write produced: its size and digest (the bytes are not kept)."""

    def __init__(self) -> None:
        self.size = 0
        self.hash = hashlib.sha256()
        self.head = b""

    def add(self, data: bytes) -> None:
        self.size += len(data)
        self.hash.update(data)
        if len(self.head) < 4096:
            self.head += data[: 4096 - len(self.head)]


class StreamFS:
    """FSClient's streaming calls over an in-memory tree, one chunk per clock tick.

    ``files`` maps a path to bytes, a :class:`Generated` file, a
    :class:`Written` summary, or None for a directory.
    """

    def __init__(self, clock: task.Clock | None) -> None:
        self.clock = clock
        self.files: dict[str, Any] = {"/": None, "/home": None, "/tmp": None}
        self.reads_open = 0
        self.bytes_read = 0

    def _tick(self) -> defer.Deferred:
        if self.clock is None:
            return defer.succeed(None)
        return task.deferLater(self.clock, TICK, lambda: None)

    def _stat(self, path: str) -> Stat:
        if path not in self.files:
            raise errors.NotFound(path)
        data = self.files[path]
        size = 0 if data is None else (data.size if isinstance(data, (Generated, Written)) else len(data))
        return Stat(path, "dir" if data is None else "file", size, 0o644, "root", 0.0, 0.0)

    def stat(self, path: str) -> defer.Deferred:
        return defer.maybeDeferred(self._stat, path)

    def exists(self, path: str) -> defer.Deferred:
        return defer.succeed(path in self.files)

    def access(self, path: str, mode: str) -> defer.Deferred:
        return defer.maybeDeferred(self._stat, path)

    def glob(self, pattern: str, cwd: str = "/") -> defer.Deferred:
        return defer.succeed([])

    def _piece(self, path: str, offset: int, length: int) -> bytes:
        data = self.files[path]
        if isinstance(data, Generated):
            return data.piece(offset, length)
        return bytes(data[offset : offset + length])

    @defer.inlineCallbacks
    def read_into(self, path: str, sink: Any, offset: int = 0, length: int | None = None) -> Any:
        st = self._stat(path)
        if st.is_dir:
            raise errors.IsADirectory(path)
        end = st.size if length is None else min(st.size, offset + length)
        self.reads_open += 1
        try:
            pos = offset
            while pos < end:
                yield self._tick()
                piece = self._piece(path, pos, min(CHUNK, end - pos))
                pos += len(piece)
                self.bytes_read += len(piece)
                yield sink.write(piece)
            status = yield sink.finish()
        finally:
            self.reads_open -= 1
        return status

    @defer.inlineCallbacks
    def read(self, path: str, offset: int = 0, length: int | None = None) -> Any:
        parts: list[bytes] = []

        class Collect:
            def write(self, data: bytes) -> defer.Deferred:
                parts.append(data)
                return defer.succeed(None)

            def finish(self) -> defer.Deferred:
                return defer.succeed({})

        yield self.read_into(path, Collect(), offset, length)
        return b"".join(parts)

    @defer.inlineCallbacks
    def write_from(self, path: str, source: Any, mode: str = "truncate") -> Any:
        if paths.dirname(path) not in self.files:
            raise errors.NotFound(paths.dirname(path))
        written = Written()
        if mode == "append" and isinstance(self.files.get(path), bytes):
            written.add(self.files[path])
        while True:
            yield self._tick()
            data = yield source.next()
            if not data:
                break
            written.add(data)
        self.files[path] = written.head if written.size <= len(written.head) else written
        return self._stat(path)

    def write(self, path: str, data: bytes, mode: str = "truncate") -> defer.Deferred:
        from oneos.fs.client import BytesSource

        return self.write_from(path, BytesSource(data), mode)


class Out:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    @property
    def text(self) -> str:
        return self.data.decode()


class FakeAgent:
    """A program 'running on a runtime': an async function over in-memory stdin/stdout/stderr pipes."""

    def __init__(self, grid: FakeGrid, agent_id: str, program: str, args: list[str]) -> None:
        self.grid = grid
        self.id = agent_id
        self.program = program
        self.args = args
        self.stdin = StreamPipe(f"stdin of {agent_id}")
        self.stdout = StreamPipe(f"stdout of {agent_id}")
        self.stderr = StreamPipe(f"stderr of {agent_id}")
        self.ended: defer.Deferred = defer.Deferred()
        self.killed = False
        self.stdin_bytes = 0
        self.running = defer.Deferred.fromCoroutine(PROGRAMS[program](self))
        self.running.addBoth(self._exit)

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "runtime": "rt-1", "name": self.program}

    def _exit(self, result: Any) -> None:
        if self.ended.called:
            return
        self.stdin.close_reader()
        self.stdout.close()
        self.stderr.close()
        if isinstance(result, int):
            final = {**self.info(), "state": "exited", "exit_code": result}
        elif self.killed:
            final = {**self.info(), "state": "killed", "signal": 15}
        else:
            final = {**self.info(), "state": "failed", "reason": str(result)}
        self.ended.callback(final)

    def kill(self) -> None:
        self.killed = True
        self.running.cancel()


async def _copy(agent: FakeAgent, transform: Any) -> int:
    while True:
        data = await agent.stdin.next()
        if not data:
            return 0
        agent.stdout.write(transform(data))
        await agent.stdout.drain()


async def prog_upper(agent: FakeAgent) -> int:
    return await _copy(agent, bytes.upper)


async def prog_cat(agent: FakeAgent) -> int:
    return await _copy(agent, lambda d: d)


async def prog_sha256sum(agent: FakeAgent) -> int:
    h = hashlib.sha256()
    while data := await agent.stdin.next():
        h.update(data)
    agent.stdout.write(f"{h.hexdigest()}  -\n".encode())
    return 0


async def prog_seq(agent: FakeAgent) -> int:
    """Numbers from 1 on, forever unless a count is given (stops only when killed)."""
    n = 0
    limit = int(agent.args[0]) if agent.args else None
    while limit is None or n < limit:
        block = b"".join(f"{i}\n".encode() for i in range(n + 1, n + 1001))
        n += 1000
        agent.stdout.write(block)
        await agent.stdout.drain()
    return 0


async def prog_head1(agent: FakeAgent) -> int:
    """Reads one chunk, prints it, exits without reading the rest (its stdin closes)."""
    data = await agent.stdin.next()
    agent.stdout.write(data.split(b"\n")[0] + b"\n")
    return 0


async def prog_fail3(agent: FakeAgent) -> int:
    while await agent.stdin.next():
        pass
    agent.stderr.write(b"fail3: bad input\n")
    return 3


PROGRAMS = {
    "upper": prog_upper,
    "xcat": prog_cat,
    "sha256sum": prog_sha256sum,
    "seq": prog_seq,
    "head1": prog_head1,
    "fail3": prog_fail3,
}


class _StdinSink:
    """What the runtime's agent_stdin token leads to (errors as AgentError/StdinSink give them)."""

    def __init__(self, agent: FakeAgent) -> None:
        self.agent = agent

    def write(self, data: bytes) -> defer.Deferred:
        try:
            self.agent.stdin.write(data)
        except BrokenPipe:
            return defer.fail(TransferError("the program no longer reads its input", "EPIPE"))

        def gone(f: Any) -> Any:
            f.trap(BrokenPipe)
            raise TransferError("the program closed its input", "EPIPE")

        self.agent.stdin_bytes += len(data)
        return self.agent.stdin.drain().addErrback(gone)

    def finish(self) -> defer.Deferred:
        self.agent.stdin.close()
        return defer.succeed({})

    def abort(self) -> None:
        self.agent.stdin.close()


class _OneRuntime:
    """The membership the fake scheduler places on: one live runtime, rt-1."""

    epoch = 1
    interval = 2.0
    synced = True

    def live(self) -> list[RuntimeStatus]:
        return [RuntimeStatus(id="rt-1", instance="rt-1", memory_limit_mb=4096, interpreters=("sh", "python3"))]


class FakeGrid:
    """The scheduler, the runtimes' agent RPCs and the transfer servers, in memory.

    The scheduler's ``pipeline`` is the real one (:class:`SchedulerService`
    over this grid as its RPC client): it spawns each stage with
    ``agent_spawn`` and joins them with ``agent_stdin`` + ``agent_pipe_out``,
    and stops what it started when a step fails.  ``calls`` counts every
    (caller, target, method) asked, the caller being "scheduler" for
    requests carrying its epoch, else "shell"; ``spawned``: the arguments of
    every ``agent_spawn``; ``fail``: method -> error raised when it is called; ``hold``: a Deferred the scheduler's answer to ``pipeline``
    waits for (once its agents are started and joined).
    ``unreachable``: stream kinds ("stdin", "stdout", "stderr") whose address cannot be connected to;
    ``vanish``: kinds whose sender disappears after the first chunk.
    """

    HOST, PORT = "10.9.8.7", 7070

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.agents: dict[str, FakeAgent] = {}
        self.tokens: dict[str, tuple[str, Any]] = {}
        self.unreachable: set[str] = set()
        self.vanish: set[str] = set()
        self.killed: list[str] = []
        self.calls: Counter[tuple[str, str, str]] = Counter()
        self.spawned: list[dict[str, Any]] = []
        self.fail: dict[str, Exception] = {}
        self.hold: defer.Deferred | None = None
        #: the file system the runtimes read '< FILE' from and write '> FILE' into
        self.fs: StreamFS | None = None
        self._n = 0
        self.scheduler = SchedulerService(None, self, _OneRuntime(), clock)
        self.scheduler.running = True

    def _token(self, kind: str, target: Any) -> dict[str, Any]:
        self._n += 1
        token = f"t{self._n}"
        self.tokens[token] = (kind, target)
        return {"host": self.HOST, "port": self.PORT + self._n, "token": token}

    def call(self, target: str, method: str, timeout: Any = 0, meta: Any = None, **kw: Any) -> defer.Deferred:
        """Answered a clock tick later, as over the network (never while the caller is still running)."""
        self.calls["scheduler" if meta else "shell", target, method] += 1
        return task.deferLater(self.clock, TICK, self._call, target, method, **kw)

    def running(self) -> list[str]:
        """The agents that have not ended."""
        return [a.id for a in self.agents.values() if not a.ended.called]

    async def _pipeline(self, **kw: Any) -> Any:
        infos = await self.scheduler.pipeline(**kw)
        if self.hold is not None:
            await self.hold
        return infos

    def _call(self, target: str, method: str, **kw: Any) -> Any:
        if method in self.fail:
            raise self.fail[method]
        if (target, method) == ("scheduler", "pipeline"):
            return defer.Deferred.fromCoroutine(self._pipeline(**kw))
        if (target, method) == ("scheduler", "kill"):
            self.killed.append(kw["agent_id"])
            self.agents[kw["agent_id"]].kill()
            return self.agents[kw["agent_id"]].info()
        if method == "agent_spawn":  # (the scheduler placed it on rt-1)
            if kw["program"] not in PROGRAMS:
                raise ShellError(f"{kw['program']}: command not found")
            self.spawned.append(kw)
            agent = FakeAgent(self, f"a-{len(self.agents) + 1}", kw["program"], kw["args"])
            self.agents[agent.id] = agent
            if kw.get("stdin_file"):  # the runtime reads '< FILE' for it
                agent.stdin.write(self.fs.files[kw["stdin_file"]])
                agent.stdin.close()
            out = OutputTarget.decode(kw["stdout"])
            if out.is_file:  # ... and writes '> FILE'
                self.fs.write_from(out.where, agent.stdout, "append" if out.kind == "append" else "truncate")
            return agent.info()
        agent = self.agents[kw["agent_id"]]
        if method == "agent_kill":  # (the scheduler stopping what it started)
            self.killed.append(agent.id)
            agent.kill()
            return agent.info()
        if method == "agent_stdin":
            return self._token("stdin", _StdinSink(agent))
        if method == "agent_attach":
            return self._token(kw["stream"], getattr(agent, kw["stream"]))
        if method == "agent_pipe_out":  # runtime to runtime: the left agent's stdout into the right one's stdin
            sent = self.send(None, kw["host"], kw["port"], kw["token"], agent.stdout)
            sent.addErrback(lambda f: agent.kill())  # a broken pipe stops the sender (its runtime's SIGPIPE)
            return {"ok": True}
        raise AssertionError(f"unexpected call {target}.{method}")

    # oneos.transfer.send / receive
    def send(self, reactor: Any, host: str, port: int, token: str, source: Any) -> defer.Deferred:
        kind, sink = self.tokens.pop(token)
        if kind in self.unreachable:
            return defer.fail(
                TransferError(f"cannot connect to stream address {host}:{port}: Connection refused", "ECONNREFUSED")
            )
        return defer.Deferred.fromCoroutine(_pump(self.clock, source, sink, vanish=False))

    def receive(self, reactor: Any, host: str, port: int, token: str, sink: Any) -> defer.Deferred:
        kind, source = self.tokens.pop(token)
        if kind in self.unreachable:
            return defer.fail(
                TransferError(f"cannot connect to stream address {host}:{port}: Connection refused", "ECONNREFUSED")
            )
        return defer.Deferred.fromCoroutine(_pump(self.clock, source, sink, vanish=kind in self.vanish))


async def _pump(clock: task.Clock, source: Any, sink: Any, vanish: bool) -> Any:
    """What a transfer does: source.next() into sink.write(), with the sink's back-pressure (a chunk a tick)."""
    sent = 0
    while True:
        await task.deferLater(clock, TICK, lambda: None)
        try:
            data = await source.next()
        except Exception as e:
            sink.abort()
            raise TransferError(str(e), getattr(e, "kind", "EIO")) from None
        if not data:
            return await sink.finish()
        if vanish and sent:
            sink.abort()
            raise TransferError("the sender vanished before the end of the stream", "EPIPE")
        sent += len(data)
        try:
            await sink.write(data)
        except TransferError:
            sink.abort()
            raise


class Subscription:
    def cancel(self) -> None:
        pass


class Harness:
    """An interpreter over StreamFS and FakeGrid; ``run`` drives the clock until the line ends."""

    def __init__(self, monkeypatch: Any, clock: bool = True) -> None:
        self.clock = task.Clock() if clock else None
        self.fs = StreamFS(self.clock)
        self.grid = FakeGrid(self.clock)
        self.grid.fs = self.fs
        monkeypatch.setattr("oneos.transfer.send", self.grid.send)
        monkeypatch.setattr("oneos.transfer.receive", self.grid.receive)
        self.out, self.err = Out(), Out()
        self.interp = Interpreter(
            Session("ann", home="/home"), Grid(self.fs, self.grid, None, self.clock), self.out, self.err
        )

        async def watch(info: Any) -> tuple[defer.Deferred, Any]:
            return self.grid.agents[info.id].ended, Subscription()

        self.interp.launcher.watch = watch  # type: ignore[method-assign]

    def start(self, line: str) -> list:
        result: list = []
        self.interp.execute(line).addBoth(result.append)
        return result

    def run(self, line: str, max_ticks: int = 1_000_000) -> int:
        result = self.start(line)
        ticks = 0
        while not result:
            assert self.clock is not None and self.clock.getDelayedCalls(), f"{line!r} hangs: nothing left to run"
            self.clock.advance(TICK)
            ticks += 1
            assert ticks < max_ticks, f"{line!r} did not end"
        return result[0]


@pytest.fixture
def h(monkeypatch):
    return Harness(monkeypatch)


class PeakPipes:
    """Records the most bytes any StreamPipe held at once (the shell's share of a pipeline's memory)."""

    def __init__(self, monkeypatch: Any) -> None:
        self.peak = 0
        original = StreamPipe.write
        probe = self

        def write(pipe: StreamPipe, data: bytes) -> None:
            original(pipe, data)
            probe.peak = max(probe.peak, pipe.size)

        monkeypatch.setattr(StreamPipe, "write", write)


# -- the pipe itself ----------------------------------------------------------------------------


def test_pipe_back_pressure_end_and_broken_reader():
    pipe = StreamPipe("p", limit=10)
    pipe.write(b"0123456789")
    assert pipe.drain().called  # at the limit: room
    pipe.write(b"x")
    room = pipe.drain()
    assert not room.called  # over it: the writer waits
    assert pipe.next().result == b"0123456789x" and room.called
    got = pipe.next()
    assert not got.called
    pipe.write(b"direct")
    assert got.result == b"direct"  # a waiting reader gets it at once
    pipe.add_writer()
    pipe.close()
    assert not pipe.next().called  # one writer left
    pipe.close()
    assert pipe.next().result == b""  # (the pending one got the end)
    broken = StreamPipe("q", limit=1)
    broken.write(b"ab")
    waiting = broken.drain()
    broken.close_reader()
    assert waiting.called and isinstance(waiting.result.value, BrokenPipe)
    waiting.addErrback(lambda f: None)
    with pytest.raises(BrokenPipe):
        broken.write(b"more")


def test_pipe_failure_reaches_the_reader_after_the_data_and_reads_can_be_cancelled():
    pipe = StreamPipe("p")
    pipe.write(b"data")
    pipe.fail(TransferError("gone", "EPIPE"))
    assert pipe.next().result == b"data"
    failed = pipe.next()
    assert isinstance(failed.result.value, TransferError)
    failed.addErrback(lambda f: None)
    other = StreamPipe("o")
    pending = other.next()
    pending.cancel()
    pending.addErrback(lambda f: None)
    other.write(b"later")  # not given to the cancelled read
    assert other.next().result == b"later"


def test_pipe_sink_drops_after_the_reader_went_and_says_so_once():
    pipe = StreamPipe("p", limit=4)
    told: list[str] = []
    sink = PipeSink(pipe, lambda: told.append("broken"))
    pipe.close()  # the stage's own share: the sink keeps it open
    waiting = sink.write(b"123456")
    assert not waiting.called
    pipe.close_reader()
    assert waiting.called and told == ["broken"]
    assert sink.write(b"more").called and told == ["broken"]
    sink.finish()
    assert pipe.ended


def test_input_lines_whole_and_limits():
    from oneos.shell.session import Job

    pipe = StreamPipe("p")
    for piece in (b"hel", b"lo\nwor", b"ld\nlast"):
        pipe.write(piece)
    pipe.close()
    inp = Input(PipeReader(pipe), Job(0, "t"))
    assert _sync(inp.readline()) == b"hello\n"
    assert _sync(inp.readline()) == b"world\n"
    assert _sync(inp.readline()) == b"last"
    assert _sync(inp.readline()) == b""
    big = StreamPipe("big")
    big.write(b"x" * 20)
    big.close()
    with pytest.raises(ShellError, match="too large to read whole"):
        _sync(Input(PipeReader(big), Job(0, "t")).readall(limit=10))
    assert big.reader_closed  # the writer is told to stop


def _sync(coro: Any) -> Any:
    results: list = []
    defer.Deferred.fromCoroutine(coro).addBoth(results.append)
    assert results, "in-memory pipes answer at once"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


# -- built-ins only ------------------------------------------------------------------------------


def test_yes_into_head_stops_yes(h):
    statuses: list[tuple[str, int]] = []
    original = Interpreter._unit

    async def spy(self, unit, *args):
        status = await original(self, unit, *args)
        statuses.append((unit[0].argv[0], status))
        return status

    h.interp._unit = spy.__get__(h.interp)  # type: ignore[method-assign]
    assert h.run("yes | head -n 3") == 0
    assert h.out.text == "y\ny\ny\n"
    assert sorted(statuses) == [("head", 0), ("yes", 141)]  # yes ended as on SIGPIPE, quietly
    assert h.err.text == ""
    assert h.run("yes hello world | head -n 2; yes | true; echo $?") == 0
    assert h.out.text.endswith("hello world\nhello world\n0\n")


def test_large_file_through_builtin_pipelines_stays_bounded(h, monkeypatch):
    size = 64 * MiB + 123
    big = pattern(size)
    h.fs.files["/big"] = big
    peak = PeakPipes(monkeypatch)
    tracemalloc.start()
    try:
        assert h.run("cat /big | wc -c") == 0
        assert h.run("cat /big | cat | cat | wc -l") == 0
        assert h.run("wc -c < /big") == 0
        assert h.run("cat /big > /tmp/copy") == 0
        _, top = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert h.run("cat /big | tee /tmp/teed | wc -w") == 0  # (word splitting is slow under tracemalloc)
    assert h.out.text.split() == [str(size), str(big.lines()), str(size), str(big.words())]
    for name in ("/tmp/copy", "/tmp/teed"):
        copy = h.fs.files[name]
        assert copy.size == size and copy.hash.hexdigest() == big.sha256()
    assert h.err.text == ""
    assert peak.peak <= PIPE_LIMIT + CHUNK  # a pipe never holds more than its limit and one write
    assert top < 16 * MiB, f"peak traced memory {top / MiB:.1f} MiB for a 64 MiB stream"


def test_head_and_tail_of_a_large_file_read_little(h):
    size = 64 * MiB
    h.fs.files["/big"] = big = pattern(size)
    unit, rest = len(big.UNIT), size % len(big.UNIT)
    assert h.run("head -n 2 /big | wc -l; tail -n 3 /big | wc -l") == 0
    assert h.out.text.split() == ["2", "2"]  # the last of the 3 lines has no newline
    assert h.fs.bytes_read < MiB
    h.out.data.clear()
    assert h.run("tail -n 3 /big") == 0
    assert bytes(h.out.data) == big.piece(size - rest - 2 * unit, 2 * unit + rest)
    h.out.data.clear()
    assert h.run("head -n 3000 /big | tail -n 1") == 0
    assert bytes(h.out.data) == big.UNIT and h.fs.bytes_read < 4 * MiB


def test_a_builtin_stopping_early_does_not_wait_for_the_whole_file(h):
    h.fs.files["/big"] = pattern(64 * MiB)
    assert h.run("cat /big | head -n 1 | wc -c; head -n 1 < /big") == 0
    assert h.out.text.split()[0] == str(len(Generated.UNIT))
    assert h.fs.bytes_read < 8 * MiB  # the line ended at once (the rest drains later, dropped)
    while h.clock.getDelayedCalls():
        h.clock.advance(TICK)
    assert h.fs.reads_open == 0  # and no read stays open


def test_word_counts_across_chunk_boundaries(h):
    h.fs.files["/w"] = (b"word " * (CHUNK // 5 + 1)) + b"\nsplit" + b"x" * (CHUNK - 3) + b" end\n"
    assert h.run("wc /w; cat /w | wc -w") == 0
    lines, words, chars = h.out.text.split()[:3]
    assert (int(lines), int(words), int(chars)) == (2, CHUNK // 5 + 3, len(h.fs.files["/w"]))
    assert h.out.text.split()[4] == words


def test_redirection_into_a_missing_directory_fails_loudly(h):
    assert h.run("yes > /nodir/f") == 1
    assert "no such file" in h.err.text and "/nodir" in h.err.text
    assert "/nodir/f" not in h.fs.files


def test_input_too_large_for_a_whole_read_fails_loudly(h, monkeypatch):
    from oneos.shell import builtins

    async def whole(ctx: Any, args: list[str]) -> int:
        data = await ctx.input()
        ctx.line(str(len(data)))
        return 0

    monkeypatch.setitem(builtins.BUILTINS, "whole", whole)
    monkeypatch.setattr(builtin_context, "MAX_INPUT", MiB)
    h.fs.files["/big"] = pattern(2 * MiB)
    assert h.run("cat /big | whole") == 1
    assert "too large to read whole" in h.err.text and h.out.text == ""


class PacedOut(Out):
    """A terminal with back-pressure: room again one clock tick after each write."""

    def __init__(self, clock: task.Clock) -> None:
        super().__init__()
        self.clock = clock

    def drain(self) -> defer.Deferred:
        return task.deferLater(self.clock, TICK, lambda: None)


def test_ctrl_c_stops_a_streaming_pipeline(h):
    h.interp.out = out = PacedOut(h.clock)
    result = h.start("yes | cat")
    for _ in range(50):
        h.clock.advance(TICK)
    assert not result and 0 < len(out.data) <= 51 * PIPE_CHUNK  # flowing, at the terminal's pace
    h.interp.interrupt()
    for _ in range(5):
        h.clock.advance(TICK)
    assert result == [130]
    assert not h.clock.getDelayedCalls()


def test_background_streaming_job(h):
    h.fs.files["/big"] = pattern(4 * MiB)
    assert h.run("cat /big | wc -c > /tmp/n &") == 0
    job = h.interp.session.jobs[1]
    while job.status is None:
        h.clock.advance(TICK)
    assert job.status == 0 and h.fs.files["/tmp/n"].strip() == str(4 * MiB).encode()


# -- built-ins and programs ----------------------------------------------------------------------


def test_mixed_pipelines_stream_both_ways(h):
    size = 16 * MiB + 5
    h.fs.files["/big"] = big = pattern(size)
    assert h.run("cat /big | sha256sum") == 0
    assert h.out.text == f"{big.sha256()}  -\n"
    h.out.data.clear()
    assert h.run("cat /big | xcat | wc -c") == 0  # built-in -> program -> built-in
    assert h.out.text.split() == [str(size)]
    h.out.data.clear()
    assert h.run("echo hello | upper | xcat | cat") == 0
    assert h.out.text == "HELLO\n"
    assert h.err.text == ""


def test_programs_wired_together_between_builtins(h):
    h.fs.files["/big"] = big = pattern(8 * MiB)
    assert h.run("cat /big | xcat | upper | xcat | sha256sum") == 0
    assert (
        h.out.text.split()[0]
        == hashlib.sha256(b"".join(big.piece(o, CHUNK).upper() for o in range(0, big.size, CHUNK))).hexdigest()
    )


def test_program_feeding_a_builtin_that_stops_early_is_stopped(h):
    assert h.run("seq | head -n 2") == 0  # seq never ends by itself
    assert h.out.text == "1\n2\n"
    assert h.grid.killed == ["a-1"]
    assert h.err.text == ""


def test_program_that_stops_reading_stops_the_builtin_before_it(h):
    assert h.run("yes | head1") == 0
    assert h.out.text == "y\n" and h.err.text == ""


def test_pipeline_status_is_the_last_stage(h):
    assert h.run("echo x | fail3") == 3
    assert "fail3: bad input" in h.err.text
    assert h.run("echo x | fail3 | wc -l") == 0
    assert h.run("echo x | nosuch | wc -l") == 0 and "command not found" in h.err.text
    assert h.run("echo x | nosuch") == 127


@pytest.mark.parametrize("kind", ["stdout", "stdin"])
def test_unreachable_stream_is_reported_with_its_address(h, kind):
    h.grid.unreachable.add(kind)
    status = h.run("echo data | upper | wc -c")
    assert status == 1
    what = "output of upper (a-1 on rt-1)" if kind == "stdout" else "input of upper (a-1 on rt-1)"
    assert f"oneos: {what}: cannot connect to stream address {FakeGrid.HOST}:" in h.err.text, h.err.text


def test_sender_vanishing_is_reported_and_fails_the_pipeline(h):
    h.fs.files["/big"] = pattern(4 * MiB)
    h.grid.vanish.add("stdout")
    assert h.run("cat /big | xcat") == 1
    assert "oneos: output of xcat (a-1 on rt-1): the sender vanished before the end of the stream" in h.err.text
    assert f"(stream address {FakeGrid.HOST}:" in h.err.text
    assert len(h.out.data) < 4 * MiB


def test_program_output_into_a_file_with_stderr(h):
    assert h.run("echo abc | fail3 > /tmp/both 2>&1") == 3
    assert h.fs.files["/tmp/both"] == b"fail3: bad input\n"
    assert h.run("echo abc | fail3 2>&1 | cat") == 0
    assert h.out.text == "fail3: bad input\n"


def test_consecutive_programs_are_started_and_joined_by_one_scheduler_call(h):
    h.fs.files["/in"] = b"abc\n"
    h.interp.session.env["KEEP"] = "1"
    h.interp.session.exported.add("KEEP")
    assert h.run("X=2 xcat < /in | upper | xcat > /tmp/o") == 0
    assert h.fs.files["/tmp/o"] == b"ABC\n"
    shell = {(t, m): n for (who, t, m), n in h.grid.calls.items() if who == "shell"}
    assert shell[("scheduler", "pipeline")] == 1
    assert ("scheduler", "spawn") not in shell and ("rt-1", "agent_pipe_out") not in shell
    assert ("rt-1", "agent_stdin") not in shell  # (the first reads '< /in' on its runtime)
    wired = {m: n for (who, _, m), n in h.grid.calls.items() if who == "scheduler"}
    assert wired == {"agent_spawn": 3, "agent_stdin": 2, "agent_pipe_out": 2}
    first, middle, last = h.grid.spawned
    assert [s["program"] for s in h.grid.spawned] == ["xcat", "upper", "xcat"]
    assert all(s["user"] == "ann" and s["stdin"] is True for s in h.grid.spawned)
    assert first["env"] == {"KEEP": "1", "X": "2", "ONEOS_CWD": "/home", "ONEOS_USER": "ann"}
    assert first["stdin_file"] == "/in" and middle["stdin_file"] is None
    assert last["stdout"] == OutputTarget.file("/tmp/o").encode() and middle["stdout"] == "attach"
    assert h.grid.running() == [] and h.err.text == ""


def test_a_job_stopped_while_the_scheduler_starts_it_has_its_programs_stopped_when_the_answer_comes(h):
    h.grid.hold = defer.Deferred()
    result = h.start("seq | xcat")
    while len(h.grid.agents) < 2 or not h.grid.calls["scheduler", "rt-1", "agent_pipe_out"]:
        h.clock.advance(TICK)  # both started and joined; the answer is held
    h.interp.interrupt()  # Ctrl-C
    h.clock.advance(TICK)
    assert result == [130]  # the shell stopped waiting at once
    assert sorted(h.grid.running()) == ["a-1", "a-2"] and h.grid.killed == []
    h.grid.hold.callback(None)  # the scheduler's answer arrives late
    for _ in range(10):
        h.clock.advance(TICK)
    assert sorted(h.grid.killed) == ["a-1", "a-2"] and h.grid.running() == []
    assert h.err.text == ""


@pytest.mark.parametrize(
    "line, failing, status, message",
    [
        ("echo x | xcat | upper", "pipeline", 1, "oneos: no answer from 'scheduler' to 'pipeline' within"),
        ("echo x | xcat | upper", "agent_pipe_out", 1, "oneos: no answer from 'rt-1' to 'agent_pipe_out' within"),
        ("echo x | xcat | nosuch | upper", None, 127, "oneos: nosuch: command not found"),
    ],
)
def test_a_failed_scheduler_pipeline_is_reported_and_leaves_nothing_running(h, line, failing, status, message):
    if failing is not None:
        h.grid.fail[failing] = RPCTimeout("scheduler" if failing == "pipeline" else "rt-1", failing, 40)
    assert h.run(line) == status
    assert h.err.text.startswith(message) and h.err.text.count("\n") == 1, h.err.text
    while h.clock.getDelayedCalls():
        h.clock.advance(TICK)
    started = sorted(h.grid.agents)
    assert started == ([] if failing == "pipeline" else ["a-1"] if failing is None else ["a-1", "a-2"])
    assert sorted(h.grid.killed) == started and h.grid.running() == []  # the scheduler stopped what it started


# -- a real runtime --------------------------------------------------------------------------------
