"""The agent manager with real child processes."""

from __future__ import annotations

import hashlib
import os
import stat

import psutil
import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from oneos.agents.manager import EXITED, FAILED, KILLED, PAUSED, RUNNING, AgentError, AgentManager, AgentSpec
from oneos.agents.program import ProgramError, interpreter_for, resolve_argv


def within(d, what, seconds=30.0):
    timer = reactor.callLater(seconds, lambda: d.called or d.errback(AssertionError(f"timed out waiting for {what}")))
    return d.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])


@defer.inlineCallbacks
def eventually(check, what, seconds=10.0):
    """Poll *check* on the reactor until true; signals reach other processes asynchronously."""
    end = reactor.seconds() + seconds
    while not check():
        if reactor.seconds() > end:
            raise AssertionError(f"timed out waiting for {what}")
        yield task.deferLater(reactor, 0.02, lambda: None)


@defer.inlineCallbacks
def read_all(stream):
    out = []
    while True:
        data = yield stream.next()
        if not data:
            return b"".join(out)
        out.append(data)


class ManagerTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        self.events = []
        self.manager = AgentManager(reactor, "rt-test", check_interval=0.2, kill_grace=2)
        self.manager.on_event(self.events.append)
        self.manager.startService()

    def tearDown(self):
        return self.manager.stopService()

    @defer.inlineCallbacks
    def test_output_then_exit_code(self):
        agent = self.manager.spawn(AgentSpec("sh", ["-c", "echo out; echo err >&2; exit 3"]))
        out = yield within(read_all(agent.stdout), "stdout")
        err = yield within(read_all(agent.stderr), "stderr")
        yield within(agent.ended, "exit")
        self.assertEqual((out, err, agent.state, agent.exit_code), (b"out\n", b"err\n", EXITED, 3))
        self.assertEqual([e["event"] for e in self.events], ["started", "ended"])
        self.assertEqual(self.events[-1]["exit_code"], 3)

    @defer.inlineCallbacks
    def test_stdin_to_stdout_large_with_back_pressure(self):
        agent = self.manager.spawn(AgentSpec("cat"))
        block = os.urandom(64 * 1024)
        total = 32 * 2**20
        want = hashlib.sha256()

        @defer.inlineCallbacks
        def feed():
            for _ in range(total // len(block)):
                want.update(block)
                yield agent.stdin.write(block)
            yield agent.stdin.finish()

        got = hashlib.sha256()
        counted = [0]

        @defer.inlineCallbacks
        def drain():
            while True:
                data = yield agent.stdout.next()
                if not data:
                    return
                counted[0] += len(data)
                got.update(data)
                # a slow reader: the writer must wait instead of buffering
                if counted[0] % (4 * 2**20) < len(data):
                    yield task.deferLater(reactor, 0.05, lambda: None)

        yield within(defer.gatherResults([feed(), drain()]), "the copy through cat", 60)
        yield within(agent.ended, "cat to exit")
        self.assertEqual(counted[0], total)
        self.assertEqual(got.hexdigest(), want.hexdigest())

    @defer.inlineCallbacks
    def test_kill_pause_resume(self):
        agent = self.manager.spawn(AgentSpec("sleep", ["60"]))
        self.manager.pause(agent.id)
        self.assertEqual(agent.state, PAUSED)
        yield eventually(lambda: psutil.Process(agent.pid).status() == psutil.STATUS_STOPPED, "SIGSTOP to take effect")
        with self.assertRaises(AgentError):
            self.manager.pause(agent.id)
        self.manager.resume(agent.id)
        self.assertEqual(agent.state, RUNNING)
        yield eventually(lambda: psutil.Process(agent.pid).status() != psutil.STATUS_STOPPED, "SIGCONT to take effect")
        self.manager.kill(agent.id)
        yield within(agent.ended, "sleep to die")
        self.assertEqual((agent.state, agent.signal), (KILLED, 15))

    @defer.inlineCallbacks
    def test_sigterm_ignored_gets_sigkill_after_grace(self):
        agent = self.manager.spawn(AgentSpec("sh", ["-c", "trap '' TERM; echo ready; sleep 60"]))
        first = yield within(agent.stdout.next(), "ready")
        self.assertEqual(first, b"ready\n")
        self.manager.kill(agent.id, grace=0.3)
        yield within(agent.ended, "SIGKILL")
        self.assertEqual(agent.signal, 9)

    @defer.inlineCallbacks
    def test_memory_limit_is_enforced_with_a_reason(self):
        code = "import time\nx = bytearray(300 * 2**20)\nfor i in range(0, len(x), 4096): x[i] = 1\nprint('big', flush=True)\ntime.sleep(60)\n"
        agent = self.manager.spawn(AgentSpec("python3", ["-c", code], memory_limit_mb=100))
        yield within(agent.ended, "the memory limit", 60)
        self.assertEqual(agent.state, FAILED)
        self.assertIn("memory limit exceeded", agent.reason)

    @defer.inlineCallbacks
    def test_runtime_memory_limit_stops_the_largest_agent(self):
        self.manager.memory_limit_mb = 150
        code = "import time\nx = bytearray(200 * 2**20)\nfor i in range(0, len(x), 4096): x[i] = 1\ntime.sleep(60)\n"
        big = self.manager.spawn(AgentSpec("python3", ["-c", code]))
        small = self.manager.spawn(AgentSpec("sleep", ["60"]))
        yield within(big.ended, "the runtime memory limit", 60)
        self.assertEqual(big.state, FAILED)
        self.assertIn("runtime memory limit exceeded", big.reason)
        self.assertEqual(small.state, RUNNING)

    def test_unknown_agent_is_a_plain_error(self):
        with self.assertRaises(AgentError) as e:
            self.manager.kill("nope")
        self.assertIn("no agent 'nope'", str(e.exception))


def test_program_resolution(tmp_path):
    assert interpreter_for("x.py") == "python3" and interpreter_for("a.JS") == "node" and interpreter_for("run") is None
    script = tmp_path / "hello.py"
    script.write_text("print(1)")
    argv = resolve_argv("hello.py", ["a"], cwd=str(tmp_path))
    assert argv[0].endswith("python3") and argv[1:] == [str(script), "a"]
    with pytest.raises(ProgramError, match="command not found"):
        resolve_argv("no-such-program-xyz", [])
    with pytest.raises(ProgramError, match="no such file"):
        resolve_argv("missing.py", [], cwd=str(tmp_path))
    plain = tmp_path / "data.bin"
    plain.write_text("x")
    with pytest.raises(ProgramError, match="not executable"):
        resolve_argv(str(plain), [])
    plain.chmod(plain.stat().st_mode | stat.S_IXUSR)
    assert resolve_argv(str(plain), []) == [str(plain)]
    with pytest.raises(ProgramError, match="needs node"):
        resolve_argv("x.js", [], path="/nonexistent")
