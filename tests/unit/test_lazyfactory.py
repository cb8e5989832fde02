"""Front doors that load their code on the first connection (oneos/lazyfactory.py).

The factory itself: the real one is made on the first connection only,
started once, reused, stopped with the port; a failure to make it closes
that connection and is tried again on the next.  And the reason it exists:
loading a runtime's modules (what ``twistd oneosd`` imports before it
starts) does not load the shell's session code, twisted.web or Autobahn.
Real logins through these doors are in tests/integration/test_shell_ssh.py
and the desktop tests.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from typing import Any, cast

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher

from oneos.lazyfactory import LazyFactory


class Recording(Factory):
    """A factory that counts its starts and stops and the protocols it built."""

    protocol = Protocol

    def __init__(self) -> None:
        self.events: list[str] = []

    def startFactory(self) -> None:
        self.events.append("start")

    def stopFactory(self) -> None:
        self.events.append("stop")

    def buildProtocol(self, addr: Any) -> Any:
        self.events.append(f"build {addr}")
        return super().buildProtocol(addr)


def test_the_real_factory_is_made_on_the_first_connection_and_reused() -> None:
    made: list[Recording] = []

    def make() -> Recording:
        made.append(Recording())
        return made[-1]

    lazy = LazyFactory(make, "a door")
    lazy.doStart()  # the port listens
    assert made == [] and lazy.real is None

    first = lazy.buildProtocol("A")
    second = lazy.buildProtocol("B")
    assert len(made) == 1
    real = made[0]
    assert real.events == ["start", "build A", "build B"]
    assert first is not None and first.factory is real and second is not None and second.factory is real

    lazy.doStop()  # the port stops listening: the real factory stops too
    assert real.events[-1] == "stop" and real.numPorts == 0 and lazy.real is None


def test_a_door_nobody_used_stops_without_making_anything() -> None:
    made: list[Recording] = []
    lazy = LazyFactory(lambda: made.append(Recording()), "a door")
    lazy.doStart()
    lazy.doStop()
    assert made == []


def test_a_failure_to_make_closes_that_connection_and_is_tried_again() -> None:
    tries: list[int] = []

    def make() -> Recording:
        tries.append(1)
        if len(tries) == 1:
            raise OSError("the page's files are gone")
        return Recording()

    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        lazy = LazyFactory(make, "the desktop")
        lazy.doStart()
        assert lazy.buildProtocol("A") is None  # Twisted closes a connection given no protocol
    finally:
        globalLogPublisher.removeObserver(observer)
    assert lazy.real is None
    said = [formatEvent(e) for e in events if "log_failure" in e]
    assert said == ["the desktop cannot serve a connection"]
    assert "the page's files are gone" in str(events[-1]["log_failure"].value)

    p = lazy.buildProtocol("B")
    assert p is not None and lazy.real is not None and lazy.real.events == ["start", "build B"]
    lazy.doStop()


#: modules a login (SSH, telnet, a browser) needs and a runtime nobody logs in to never loads
DOOR_CODE = (
    "oneos.shell.ssh",
    "oneos.shell.telnet",
    "oneos.shell.interpreter",
    "oneos.shell.parser",
    "oneos.desktop.web",
    "oneos.desktop.ws",
    "autobahn",
    "twisted.web.server",
    "twisted.conch.ssh.transport",
)


def test_loading_a_runtime_leaves_the_doors_code_unloaded() -> None:
    """What twistd imports for ``oneosd`` (the plugin's tap, the runtime's service tree) loads none of it."""
    script = (
        "import sys\n"
        "import oneos.runtime.tap, oneos.runtime.app, oneos.runtime.service, oneos.shell.service, "
        "oneos.desktop.service\n"
        f"print(repr(sorted(m for m in sys.modules if m.startswith({DOOR_CODE!r}))))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    loaded = ast.literal_eval(result.stdout.strip())
    assert loaded == [], f"loaded at start, though only a login needs them: {loaded}"
