"""Fixtures that start real components: brokers, runtimes, a MongoDB-wire server, namespace networks.

What they start is built by :mod:`oneos.testing` (importable, no pytest, so
benchmarks share it); here each is wrapped so a test gets it fresh and every
process is stopped afterwards, also when the test fails.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from oneos.testing.brokers import BrokerProcess, mosquitto_binary, start_mosquitto, start_oneospsd
from oneos.testing.mongo import MongoServer, drop_database, mongo_server_from_env_or_start
from oneos.testing.netns import Network, available
from oneos.testing.runtimes import EmbeddedRuntime, RuntimeProcess, wait_for


@pytest.fixture
def amqtt_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """Our broker (``twistd oneospsd``, amqtt) as a real process on an ephemeral loopback port."""
    broker = start_oneospsd(tmp_path / "oneospsd")
    yield broker
    broker.stop()


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """Mosquitto as a real process on a free loopback port; skipped if it is not installed."""
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    broker = start_mosquitto(tmp_path / "mosquitto")
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    """One MongoDB-wire server for the whole session."""
    server = mongo_server_from_env_or_start(tmp_path_factory.mktemp("mongo"))
    yield server
    server.stop()


@pytest.fixture
def mongo_url(mongo_server: MongoServer) -> Iterator[str]:
    """``mongodb://host:port/<fresh database>``; the database is dropped afterwards."""
    url = mongo_server.fresh_url()
    yield url
    drop_database(mongo_server, urlsplit(url).path.lstrip("/"))


@pytest.fixture
def runtimes(tmp_path: Path) -> Iterator[Any]:
    """Start runtimes with ``runtimes(rid, url, *flags)``; all are stopped afterwards."""
    started: list[RuntimeProcess] = []

    def start(rid: str, url: str, *extra: str, config: dict | None = None) -> RuntimeProcess:
        rt = RuntimeProcess(rid, url, tmp_path / "homes", *extra, config=config)
        started.append(rt)
        return rt

    start.all = started  # type: ignore[attr-defined]
    yield start
    for rt in started:
        try:
            rt.stop()
        except Exception:
            rt.kill()


@pytest.fixture
def embedded_runtime(tmp_path: Path) -> Iterator[Callable[..., EmbeddedRuntime]]:
    """Start ``twistd oneosd`` with the embedded broker; waits until it leads the kernel."""
    started: list[EmbeddedRuntime] = []

    def start(*extra: str, wait: bool = True) -> EmbeddedRuntime:
        rt = EmbeddedRuntime(tmp_path / f"e{len(started)}", *extra)
        started.append(rt)
        if wait:
            wait_for("the runtime to lead", lambda: "now leads the kernel" in rt.log(), logs=rt.log)
        return rt

    yield start
    for rt in started:
        rt.stop()


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory every account can read: runtimes started as root run programs as nobody,
    which cannot see into pytest's private tmp_path."""
    path = Path(tempfile.mkdtemp(prefix="oneos-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def netns() -> Iterator[Callable[..., Network]]:
    """Factory ``netns(hosts=3) -> Network``; every network made is closed at teardown.

    Closing kills every process left in the namespaces (so a failing test
    cannot leak runtimes) and fails the test if one survives SIGKILL.
    Skips, with the reason, where namespaces cannot be made (not root, no
    iproute2, a container that forbids them).
    """
    reason = available()
    if reason is not None:
        pytest.skip(reason)
    made: list[Network] = []

    def make(hosts: int = 3) -> Network:
        net = Network(hosts=hosts)
        made.append(net)
        return net

    yield make
    errors = []
    for net in made:
        try:
            net.close()
        except Exception as e:  # close the others before reporting
            errors.append(e)
    if errors:
        raise errors[0]
