"""Small things users ran into (issue 14 item 6), where the logic is pure: no process, no socket, no sleep.

* agent ids by a unique prefix, resolved once, in the scheduler; an ambiguous one names the matches;
* ``kill`` answering with the state the agent ended in (``ID killed``), ``pause``/``resume`` with theirs;
* ``pipes`` listing short-lived pipes, with their final byte counts, for a bounded while;
* ``oneos fs put f /tmp/`` landing in the directory, as cp; options after the arguments;
* ``oneos grid`` stopping when its output is closed;
* one log line per SSH login (conch's narration filtered);
* a runtime with no configured id keeping the one generated at its first start.

The real commands are exercised in tests/integration/test_cli_small.py.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher

from oneos.agents.info import AgentError, AgentInfo
from oneos.cli import control, fs, grid
from oneos.config import RUNTIME_ID_FILE, load_config, remembered_id
from oneos.errors import ConfigError
from oneos.pubsub import messages, topics
from oneos.runtime.status import RuntimeStatus
from oneos.scheduler.pipes import PipeLog
from oneos.scheduler.service import SchedulerService
from oneos.scheduler.table import format_control

# -- a scheduler on a clock, its runtimes faked -------------------------------------------------


class FakeRPC:
    """The runtimes' agent methods: records each call and answers at once."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.n = 0

    def call(self, target: str, method: str, timeout: Any = None, meta: Any = None, **args: Any) -> defer.Deferred:
        self.calls.append((target, method, args))
        if method == "agent_spawn":
            self.n += 1
            return defer.succeed(_row(f"s{self.n}", args["program"], target=target))
        if method == "agent_kill":  # SIGTERM sent: the runtime answers at once, the agent not ended yet
            return defer.succeed(_row(args["agent_id"], "sleep", target=target))
        if method == "agent_pause":
            return defer.succeed(_row(args["agent_id"], "sleep", target=target, state="paused"))
        if method == "agent_stdin":
            return defer.succeed({"host": "127.0.0.1", "port": 7000, "token": "t"})
        return defer.succeed({"ok": True})


class FakePubSub:
    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, **kw: Any) -> defer.Deferred:
        return defer.succeed(None)


class Membership:
    epoch, synced, interval = 1, True, 2.0

    def live(self) -> list[RuntimeStatus]:
        return [RuntimeStatus(id="rt-1", instance="rt-1", memory_limit_mb=4096, interpreters=("sh",))]

    def on_change(self, listener: Any) -> None:
        pass


def _row(agent_id: str, name: str, target: str = "rt-1", **over: Any) -> dict[str, Any]:
    return {"id": agent_id, "name": name, "program": name, "runtime": target, "state": "running", **over}


class Message:
    def __init__(self, topic: str, payload: bytes) -> None:
        self.topic, self.payload = topic, payload


def status(s: SchedulerService, row: dict[str, Any]) -> None:
    """An agent's retained status arrives, as from its runtime."""
    s._on_agent(Message(topics.agent(row["runtime"], row["id"]), messages.encode("agent.status", **row)))


@pytest.fixture
def sched() -> tuple[SchedulerService, Clock]:
    clock = Clock()
    s = SchedulerService(FakePubSub(), FakeRPC(), Membership(), clock)
    s.running = True
    return s, clock


def result_of(d: Any) -> Any:
    """What *d* (or a plain value) fired with; fails the test if it has not fired yet."""
    out: list[Any] = []
    defer.maybeDeferred(lambda: d).addBoth(out.append)
    assert out, "the call has not answered"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def answered(d: defer.Deferred) -> bool:
    """Whether *d* has a result now (a Deferred waiting on another has been called, but has none)."""
    return d.called and not d.paused


# -- agent ids by prefix ----------------------------------------------------------------------


def test_a_unique_prefix_names_its_agent_and_the_runtime_gets_the_full_id(sched):
    s, _ = sched
    for agent_id in ("a1b2c3d4", "a1f00000", "b7000000"):
        status(s, _row(agent_id, "sleep"))
    assert s.locate("b")["id"] == "b7000000" and s.locate("a1b")["id"] == "a1b2c3d4"
    assert s.locate("a1f00000")["id"] == "a1f00000"  # a full id is never ambiguous
    result_of(s.pause("a1b"))
    assert ("rt-1", "agent_pause", {"agent_id": "a1b2c3d4"}) in s.rpc.calls


def test_an_ambiguous_prefix_is_a_plain_error_listing_the_matches(sched):
    s, _ = sched
    status(s, _row("a1b2c3d4", "sleep"))
    status(s, _row("a1f00000", "yes", state="exited"))
    with pytest.raises(AgentError) as e:
        s.locate("a1")
    assert e.value.kind == "EINVAL"
    assert str(e.value) == (
        "agent id 'a1' is ambiguous: it begins a1b2c3d4 (sleep on rt-1, running), a1f00000 (yes on rt-1, exited); "
        "give more of it"
    )
    with pytest.raises(AgentError, match="no agent 'zz' in the network"):
        s.locate("zz")
    with pytest.raises(AgentError, match="no agent '' in the network"):
        s.locate("")
    assert not [c for c in s.rpc.calls if c[1] == "agent_kill"]


def test_many_matches_are_listed_up_to_a_bound(sched):
    s, _ = sched
    for i in range(12):
        status(s, _row(f"c{i:07d}", "sleep"))
    with pytest.raises(AgentError, match=r"c0000007 \(sleep on rt-1, running\) and 4 more; give more of it"):
        s.locate("c")


# -- kill says how the agent ended --------------------------------------------------------------


def test_a_waiting_kill_answers_with_the_ended_status(sched):
    s, clock = sched
    status(s, _row("a1b2c3d4", "sleep"))
    d = s.kill("a1b", wait=True)
    assert ("rt-1", "agent_kill", {"agent_id": "a1b2c3d4", "reason": "killed by user"}) in [
        (t, m, {k: v for k, v in a.items() if k != "grace"}) for t, m, a in s.rpc.calls
    ]
    assert not answered(d), "it waits for the end, not for the signal to be sent"
    clock.advance(0.05)
    status(s, _row("a1b2c3d4", "sleep", state="killed", signal=15))
    info = AgentInfo.decode(result_of(d))
    assert format_control(info) == "a1b2c3d4 killed"
    assert not clock.getDelayedCalls(), "the wait's timer is gone"


def test_a_kill_that_does_not_end_in_time_answers_with_the_latest_state(sched):
    s, clock = sched
    status(s, _row("a1b2c3d4", "sleep"))
    d = s.kill("a1b2c3d4", grace=1.0, wait=True)
    clock.advance(2.9)
    assert not answered(d)
    clock.advance(0.2)  # grace 1 s + 2 s
    assert result_of(d)["state"] == "running"


def test_a_kill_without_wait_answers_at_once_and_pause_says_paused(sched):
    s, _ = sched
    status(s, _row("a1b2c3d4", "sleep"))
    assert result_of(s.kill("a1b2c3d4"))["state"] == "running"
    assert format_control(AgentInfo.decode(result_of(s.pause("a1b2")))) == "a1b2c3d4 paused"


def test_the_client_waits_long_enough_for_a_waiting_kill():
    from oneos.scheduler.client import SchedulerClient

    seen: list[tuple[Any, dict[str, Any]]] = []

    class RPC:
        def call(self, target: str, method: str, timeout: Any = None, **args: Any) -> defer.Deferred:
            seen.append((timeout, args))
            return defer.Deferred()

    SchedulerClient(RPC(), timeout=10.0).kill("a1", wait=True)
    SchedulerClient(RPC(), timeout=10.0).kill("a1", grace=30.0, wait=True)
    SchedulerClient(RPC(), timeout=10.0).kill("a1")
    assert seen == [(10.0, {"agent_id": "a1", "wait": True}), (35.0, {"agent_id": "a1", "grace": 30.0, "wait": True}),
                    (10.0, {"agent_id": "a1"})]  # fmt: skip


# -- pipes, short-lived ones too -------------------------------------------------------------------


def test_a_pipe_whose_writer_ended_before_it_was_joined_is_listed_with_its_final_bytes(sched):
    s, _ = sched
    infos = result_of(s.pipeline([{"program": "echo", "args": ["hi"]}, {"program": "cat"}]))
    writer, reader = infos[0]["id"], infos[1]["id"]
    # echo ended at once: its last status still says 'attach' (the pipe was joined after it ended)
    status(s, _row(writer, "echo", state="exited", exit_code=0, stdout_bytes=3, uptime=0.01, stdout_to="attach"))
    status(s, _row(reader, "cat", state="exited", exit_code=0, stdin_bytes=3, uptime=0.02))
    [row] = s.pipes()
    assert row == {"from": f"{writer}@rt-1", "to": f"{reader}@rt-1", "state": "exited", "bytes": 3, "mb_per_s": 0.0}


def test_a_pipe_counts_what_its_reader_got_when_the_writer_reported_less():
    clock = Clock()
    log = PipeLog(clock.seconds)
    log.joined(_row("w", "gen", stdout_bytes=100), _row("r", "wc"), "r@rt-2")
    log.seen(_row("w", "gen", state="exited", stdout_bytes=900, uptime=1.0))
    log.seen(_row("r", "wc", runtime="rt-2", state="exited", stdin_bytes=1000))
    [row] = log.rows({"rt-1", "rt-2"})
    assert (row.state, row.bytes, row.mb_per_s) == ("exited", 1000, 0.0)


def test_finished_pipes_stay_a_while_then_go_and_open_ones_stay():
    clock = Clock()
    log = PipeLog(clock.seconds, keep=300.0, limit=3)
    log.joined(_row("open", "yes", stdout_bytes=5), _row("r0", "sleep"), "r0@rt-1")
    for i in range(5):
        log.joined(_row(f"w{i}", "echo", state="exited"), _row(f"r{i + 1}", "cat", state="exited"), f"r{i + 1}@rt-1")
        clock.advance(1)
    assert [p.source for p in log.rows({"rt-1"})] == ["open@rt-1", "w2@rt-1", "w3@rt-1", "w4@rt-1"]
    clock.advance(298.5)
    assert [p.source for p in log.rows({"rt-1"})] == ["open@rt-1", "w4@rt-1"]
    clock.advance(1)
    assert [(p.source, p.state) for p in log.rows({"rt-1"})] == [("open@rt-1", "running")]
    assert [p.state for p in log.rows(set())] == ["lost"], "a writer whose runtime is gone is not running"


def test_a_pipe_an_earlier_leader_joined_is_read_from_the_writers_status():
    clock = Clock()
    log = PipeLog(clock.seconds)
    log.seen(_row("r", "cat", runtime="rt-2", stdin_bytes=10))
    log.seen(_row("w", "seq", stdout_to="pipe:r@rt-2", stdout_bytes=10, uptime=2.0))
    log.seen(_row("r", "cat", runtime="rt-2", stdin_bytes=20))
    [row] = log.rows({"rt-1", "rt-2"})
    assert (row.source, row.target, row.bytes) == ("w@rt-1", "r@rt-2", 20)
    log.cleared("w")  # its retained status vanished while running (its runtime's record is gone)
    log.cleared("r")
    assert [p.state for p in log.rows({"rt-1", "rt-2"})] == ["gone"]
    clock.advance(301)
    assert log.rows({"rt-1", "rt-2"}) == []


def test_the_scheduler_forgets_a_cleared_status_but_the_pipe_keeps_its_figures(sched):
    s, _ = sched
    status(s, _row("w", "seq", stdout_to="pipe:r@rt-1", stdout_bytes=7, state="exited"))
    s._on_agent(Message(topics.agent("rt-1", "w"), b""))
    assert "w" not in s.table
    assert [(p["from"], p["bytes"]) for p in s.pipes()] == [("w@rt-1", 7)]


# -- oneos fs: cp's destinations, options anywhere ----------------------------------------------


@pytest.mark.parametrize(
    ("target", "is_dir", "expected"),
    [
        ("/tmp/", False, "/tmp/f.txt"),
        ("/tmp", True, "/tmp/f.txt"),
        ("/tmp//", True, "/tmp/f.txt"),
        ("/", True, "/f.txt"),
        ("/tmp/g.txt", False, "/tmp/g.txt"),
        ("out", True, "out/f.txt"),
    ],
)
def test_a_copy_into_a_directory_keeps_its_name(target, is_dir, expected):
    assert fs.destination(target, "f.txt", is_dir) == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["ls", "/tmp", "-l", "--pubsub", "mqtt://h:1"],
        ["--pubsub", "mqtt://h:1", "ls", "-l", "/tmp"],
        ["ls", "--pubsub", "mqtt://h:1", "/tmp", "-l"],
    ],
)
def test_fs_options_go_before_or_after_the_command_and_its_arguments(argv):
    args = fs._parse(argv)
    assert (args.command, args.path, args.long, args.pubsub) == ("ls", "/tmp", True, "mqtt://h:1")


def test_fs_options_given_once_keep_their_defaults_elsewhere():
    args = fs._parse(["--timeout", "3", "put", "a", "/tmp/", "--no-progress", "--append"])
    assert (args.local, args.remote, args.timeout, args.progress, args.append, args.pubsub) == (
        "a",
        "/tmp/",
        3.0,
        False,
        True,
        None,
    )
    args = fs._parse(["get", "/tmp/a"])
    assert (args.local, args.timeout, args.progress) == (".", 10.0, None)


def test_put_reads_files_and_pipes_and_refuses_the_rest(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    assert fs._local_input(str(tmp_path / "f")) == (tmp_path / "f", None, None)
    assert fs._local_input(str(tmp_path / "no"))[2] == f"{tmp_path / 'no'}: no such local file"
    assert "is a directory" in str(fs._local_input(str(tmp_path))[2])
    os.mkfifo(tmp_path / "fifo")
    writer = os.open(tmp_path / "fifo", os.O_RDWR)  # so opening the reading end does not wait
    try:
        path, fd, problem = fs._local_input(str(tmp_path / "fifo"))
        assert path is None and problem is None and fd is not None
        os.close(fd)
    finally:
        os.close(writer)


def test_a_pipe_source_reads_without_blocking_and_stops_when_interrupted():
    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    read_end, write_end = os.pipe()
    try:
        progress = fs.Progress("put -", None, io.StringIO(), False)
        source = fs.PipeSource(reactor, read_end, progress)
        first = source.next()
        assert source in reactor.readers and not first.called, "waits for the reactor, never blocks"
        source.doRead()  # a spurious wake-up: nothing to read yet
        assert not first.called
        os.write(write_end, b"abc")
        source.doRead()
        assert result_of(first) == b"abc" and source not in reactor.readers and progress.done == 3
        pending = source.next()
        source.stop()
        with pytest.raises(fs.Interrupted):
            result_of(pending)
        assert os.get_blocking(read_end), "the descriptor has its flags back"
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_pipe_source_gives_the_descriptor_its_flags_back():
    from twisted.internet.testing import MemoryReactorClock

    read_end, write_end = os.pipe()
    try:
        assert os.get_blocking(read_end)
        source = fs.PipeSource(MemoryReactorClock(), read_end, fs.Progress("put -", None, io.StringIO(), False))
        assert not os.get_blocking(read_end)
        os.close(write_end)
        d = source.next()
        source.doRead()
        assert result_of(d) == b"" and os.get_blocking(read_end), "at the end of the input"
    finally:
        os.close(read_end)


# -- options after the arguments -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "argv", "expected"),
    [
        ("ps", ["--json", "-a"], {"json": True, "all": True}),
        ("ps", ["-a", "--pubsub", "mqtt://h:1", "--json"], {"json": True, "all": True, "pubsub": "mqtt://h:1"}),
        ("kill", ["a1b", "--grace", "2"], {"agent_ids": ["a1b"], "grace": 2.0}),
        ("kill", ["a1b", "--pubsub", "mqtt://h:1", "c3"], {"agent_ids": ["a1b", "c3"], "pubsub": "mqtt://h:1"}),
        ("pause", ["a1", "--pubsub", "mqtt://h:1"], {"agent_ids": ["a1"], "pubsub": "mqtt://h:1"}),
        ("pipes", ["--json", "--pubsub", "u"], {"json": True, "pubsub": "u"}),
    ],
)
def test_control_commands_take_options_after_their_arguments(name, argv, expected):
    args = vars(control.parser_for(name).parse_intermixed_args(argv))
    assert {k: args[k] for k in expected} == expected


# -- oneos grid: a closed output stops it --------------------------------------------------------


class ClosedPipe:
    def write(self, text: str) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_output_stops_the_grid_once_and_a_childs_end_is_still_counted():
    stops: list[str] = []
    g = grid.Grid(Clock(), Path("/nonexistent"), 1, 1, 1883, ClosedPipe(), on_output_closed=lambda: stops.append("x"))
    g.note("starting")
    g.note("still starting")
    assert stops == ["x"] and g.output_closed
    child = grid.Child("rt-1", g.write, 4)
    child.outReceived(b"a line\npartial")

    class Ended:
        value = type("Done", (), {"exitCode": 0, "signal": None})()

    child.processEnded(Ended())
    assert child.ended.called and stops == ["x"]


def test_the_grids_children_lines_are_prefixed():
    out = io.StringIO()
    g = grid.Grid(Clock(), Path("/nonexistent"), 1, 1, 1883, out)
    child = grid.Child("rt-1", g.write, 4)
    child.outReceived(b"one\ntw")
    child.outReceived(b"o\n")
    assert out.getvalue() == "rt-1 | one\nrt-1 | two\n"


def test_a_stopping_grid_starts_nothing():
    g = grid.Grid(Clock(), Path("/nonexistent"), 1, 1, 1883, io.StringIO())
    g.stopping = True
    with pytest.raises(grid.GridStopped):
        g.spawn("rt-1", ["true"])


# -- SSH: one line per login ----------------------------------------------------------------------


def test_conchs_narration_is_dropped_but_its_warnings_pass():
    from oneos.shell import ssh

    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        ssh.SSHTransport._log.debug("NEW KEYS")
        ssh.SessionChannel._log.info("channel open")
        ssh._Connection._log.info("sending close {id}", id=0)
        ssh.session.log.info("exitCode: {exitCode!r}", exitCode=0)
        ssh.SSHTransport._log.warn("other side unimplemented packet #{seqnum}", seqnum=3)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert [(e["log_level"], e["log_format"]) for e in seen] == [
        (LogLevel.warn, "other side unimplemented packet #{seqnum}")
    ]


def test_a_normal_logout_is_not_logged_and_another_goodbye_is_one_info_line():
    from twisted.conch.ssh import transport

    from oneos.shell import ssh

    t = ssh.SSHTransport()
    t.source = "10.0.0.9"
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        t.receiveError(transport.DISCONNECT_BY_APPLICATION, b"disconnected by user")
        t.receiveError(transport.DISCONNECT_PROTOCOL_ERROR, b"bad packet")
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert [(e["log_level"], e["why"]) for e in seen] == [(LogLevel.info, "bad packet")]


# -- the runtime's id survives restarts --------------------------------------------------------------


def test_a_generated_id_is_kept_in_the_home_and_used_again(tmp_path):
    first = remembered_id(load_config(tmp_path))
    assert first.generated_id and (tmp_path / RUNTIME_ID_FILE).read_text() == first.id + "\n"
    again = remembered_id(load_config(tmp_path))
    assert again.id == first.id
    assert not list(tmp_path.glob(".runtime_id.*")), "no temporary file is left"


def test_an_explicit_id_wins_and_leaves_the_kept_one_alone(tmp_path):
    kept = remembered_id(load_config(tmp_path)).id
    assert remembered_id(load_config(tmp_path, {"id": "rt-7"})).id == "rt-7"
    (tmp_path / "config.json").write_text('{"id": "rt-9"}')
    assert remembered_id(load_config(tmp_path)).id == "rt-9"
    assert (tmp_path / RUNTIME_ID_FILE).read_text().strip() == kept


def test_the_id_written_first_wins(tmp_path, monkeypatch):
    (tmp_path / RUNTIME_ID_FILE).write_text("rt-first\n")
    assert remembered_id(load_config(tmp_path)).id == "rt-first"


def test_a_kept_id_that_is_not_an_id_is_a_plain_error(tmp_path):
    (tmp_path / RUNTIME_ID_FILE).write_text("not an id!\n")
    with pytest.raises(ConfigError, match="runtime_id"):
        remembered_id(load_config(tmp_path))


def test_the_runtime_options_use_the_kept_id(tmp_path):
    from oneos.runtime.tap import Options

    def parsed(*argv: str) -> str:
        options = Options()
        options.parseOptions(["--home", str(tmp_path), *argv])
        assert options.config is not None
        return options.config.id

    first = parsed()
    assert parsed() == first and parsed("--id", "rt-x") == "rt-x" and parsed("rt-y") == "rt-y"
    assert parsed() == first
