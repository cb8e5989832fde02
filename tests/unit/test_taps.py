"""The twistd plugins' tap modules: options, config errors as usage errors, the trees makeService builds.

Pure: no process is started and no socket opened (``oneos.runtime.tap`` takes
a reactor; ``oneos.broker.app`` uses the global one, replaced here by a
``MemoryReactorClock``).  The process tests (``twistd -n oneosd``/``oneospsd``)
are in test_broker.py, test_broker_auth.py and test_tls.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import twisted.internet
from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from oneos.broker import tap as broker_tap
from oneos.broker.service import BrokerService
from oneos.runtime import tap as runtime_tap
from oneos.security import credentials
from test_service_tree import built_tree, drawn_tree


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty ONEOS_HOME of this test's own."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("ONEOS_HOME", str(path))
    return path


def parsed(options_class, *args: str):
    options = options_class()
    options.parseOptions(list(args))
    return options


def open_sockets() -> set[str]:
    """The sockets this process holds (Linux: /proc/self/fd), to see that building opened none."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("no /proc/self/fd here")
    found = set()
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


# --------------------------------------------------------------------------
# the plugin files only name the tap modules


def test_the_plugins_are_service_makers_naming_the_tap_modules():
    from twisted.plugins.oneosd import oneosd
    from twisted.plugins.oneospsd import oneospsd

    assert IServiceMaker.providedBy(oneosd) and IServiceMaker.providedBy(oneospsd)
    assert (oneosd.tapname, oneosd.module, oneosd.options) == ("oneosd", "oneos.runtime.tap", runtime_tap.Options)
    assert (oneospsd.tapname, oneospsd.module, oneospsd.options) == ("oneospsd", "oneos.broker.tap", broker_tap.Options)
    assert oneosd.description.startswith("OneOS runtime: ")
    assert "MQTT 3.1.1 broker" in oneospsd.description


def test_the_plugins_make_their_service_with_the_tap_module(monkeypatch):
    from twisted.plugins.oneosd import oneosd
    from twisted.plugins.oneospsd import oneospsd

    made = []
    monkeypatch.setattr(runtime_tap, "makeService", lambda options: made.append(("runtime", options)) or "rt")
    monkeypatch.setattr(broker_tap, "makeService", lambda options: made.append(("broker", options)) or "bk")
    assert (oneosd.makeService("o1"), oneospsd.makeService("o2")) == ("rt", "bk")
    assert made == [("runtime", "o1"), ("broker", "o2")]


# --------------------------------------------------------------------------
# oneosd: options


ALL_FLAGS = [
    "--id",
    "rt-1",
    "--pubsub",
    "mqtt://10.0.0.5:1883",
    "--broker",
    "external",
    "--store",
    "sqlite:///tmp/x.db",
    "--memory",
    "512",
    "--tags",
    "gpu,cam",
    "--address",
    "10.0.0.6",
    "--keepalive",
    "5",
    "--stats-interval",
    "3",
    "--run-as",
    "auto",
    "--disconnect-grace",
    "20",
    "--ssh",
    "tcp:2222",
    "--telnet",
    "tcp:2323",
    "--pipe",
    "tcp:0",
    "--no-kernel",
]


def test_runtime_flags_become_overrides_and_the_config(home):
    options = parsed(runtime_tap.Options, *ALL_FLAGS)
    assert options.overrides() == {
        "id": "rt-1",
        "pubsub": "mqtt://10.0.0.5:1883",
        "broker": "external",
        "store": "sqlite:///tmp/x.db",
        "kernel": False,
        "memory_mb": "512",
        "tags": "gpu,cam",
        "address": "10.0.0.6",
        "keepalive": "5",
        "stats_interval": "3",
        "disconnect_grace": "20",
        "run_as": "auto",
        "listen": {"ssh": "tcp:2222", "telnet": "tcp:2323", "pipe": "tcp:0"},
    }
    c = options.config
    assert (c.home, c.id, c.generated_id, c.embedded) == (home, "rt-1", False, True)
    assert (c.pubsub, c.broker, c.store, c.kernel) == ("mqtt://10.0.0.5:1883", "external", "sqlite:///tmp/x.db", False)
    assert (c.memory_mb, c.tags, c.address, c.keepalive) == (512, ("gpu", "cam"), "10.0.0.6", 5)
    assert (c.stats_interval, c.disconnect_grace, c.run_as) == (3.0, 20.0, "auto")
    assert (c.listen["ssh"], c.listen["telnet"], c.listen["pipe"]) == ("tcp:2222", "tcp:2323", "tcp:0")
    # the flags alone (oneosd's interview presets) parse the same without reading anything
    assert parsed(runtime_tap.Flags, *ALL_FLAGS).overrides() == options.overrides()
    assert not hasattr(parsed(runtime_tap.Flags, *ALL_FLAGS), "config")


def test_runtime_defaults_id_kernel_and_home(home, tmp_path):
    options = parsed(runtime_tap.Options)
    assert set(options.overrides().values()) == {None}
    assert options.config.home == home and options.config.generated_id and options.config.kernel
    assert parsed(runtime_tap.Options, "rt-2").overrides()["id"] == "rt-2"
    assert parsed(runtime_tap.Options, "--id", "rt-2", "rt-2").config.id == "rt-2"
    assert parsed(runtime_tap.Options, "--kernel").overrides()["kernel"] is True
    elsewhere = tmp_path / "elsewhere"
    (elsewhere).mkdir()
    (elsewhere / "config.json").write_text(json.dumps({"id": "rt-file", "memory_mb": 256}))
    from_file = parsed(runtime_tap.Options, "--home", str(elsewhere)).config
    assert (from_file.home, from_file.id, from_file.memory_mb, from_file.embedded) == (elsewhere, "rt-file", 256, False)
    assert parsed(runtime_tap.Options, "--home", str(elsewhere), "--memory", "64").config.memory_mb == 64


@pytest.mark.parametrize("options_class", [runtime_tap.Flags, runtime_tap.Options])
@pytest.mark.parametrize(
    "args,message",
    [
        (["--kernel", "--no-kernel"], "--kernel and --no-kernel contradict each other"),
        (["--id", "rt-1", "rt-2"], "give the runtime id either as --id or positionally, not both"),
        (["rt-1", "rt-2"], "Wrong number of arguments."),
        (["--bogus"], "option --bogus not recognized"),
    ],
)
def test_runtime_contradictions_are_usage_errors(home, options_class, args, message):
    with pytest.raises(usage.UsageError) as e:
        parsed(options_class, *args)
    assert str(e.value) == message


def test_a_bad_config_file_is_a_usage_error_with_the_plain_message(home):
    (home / "config.json").write_text('{"memory_mb": "lots"}')
    with pytest.raises(usage.UsageError) as e:
        parsed(runtime_tap.Options)
    assert str(e.value) == "config field 'memory_mb': expected a number, got 'lots'"
    (home / "config.json").write_text("{not json")
    with pytest.raises(usage.UsageError, match=r"^config field 'config.json': .*config.json is not valid JSON"):
        parsed(runtime_tap.Options)
    (home / "config.json").write_text('{"colour": "blue"}')
    with pytest.raises(usage.UsageError, match=r"^config field 'colour': unknown setting"):
        parsed(runtime_tap.Options)
    # the flags alone do not read the file
    assert parsed(runtime_tap.Flags).overrides()["memory_mb"] is None


@pytest.mark.parametrize(
    "args,message",
    [
        (["--memory", "lots"], "config field 'memory_mb': expected a number, got 'lots'"),
        (["--broker", "maybe"], "config field 'broker': 'maybe' is not one of auto, embedded, external"),
        (["--id", "a b"], "config field 'id': 'a b' is not a valid runtime id"),
        (["--ssh", "2222"], "config field 'listen.ssh': '2222' is not an endpoint string"),
    ],
)
def test_a_bad_flag_value_is_a_usage_error_naming_the_field(home, args, message):
    with pytest.raises(usage.UsageError) as e:
        parsed(runtime_tap.Options, *args)
    assert str(e.value).startswith(message)


# --------------------------------------------------------------------------
# oneosd: makeService


def test_runtime_make_service_builds_the_drawn_tree_and_opens_nothing(home):
    options = parsed(runtime_tap.Options)  # no config file: the embedded default, so the embedded broker is there
    assert [p.name for p in home.iterdir()] == ["runtime_id"], "reading the options keeps the generated id"
    reactor = MemoryReactorClock()
    before = open_sockets()
    top = runtime_tap.makeService(options, reactor=reactor)
    assert open_sockets() <= before
    assert built_tree(top) == drawn_tree()
    assert top.getServiceNamed("runtime").config == options.config
    assert not top.running and not any(s.running for s in top)
    assert (reactor.tcpServers, reactor.sslServers, reactor.unixServers) == ([], [], [])
    assert (reactor.tcpClients, reactor.sslClients, reactor.unixClients) == ([], [], [])
    assert [p.name for p in home.iterdir()] == ["runtime_id"], "building the tree must not write into the home"


def test_runtime_make_service_without_an_embedded_broker(home):
    options = parsed(runtime_tap.Options, "--broker", "external", "rt-x")
    top = runtime_tap.makeService(options, reactor=MemoryReactorClock())
    drawn = [(depth, name) for depth, name in drawn_tree() if name != "embedded-broker"]
    assert built_tree(top) == drawn
    assert top.getServiceNamed("runtime").config.id == "rt-x"


def test_runtime_options_refuse_a_client_identity_in_one_plain_line(home):
    network = credentials.generate("admin")
    credentials.save(home, credentials.issue(network, "alice@laptop"))
    options = runtime_tap.Options()
    with pytest.raises(usage.UsageError, match=r"holds the client identity 'alice@laptop'"):
        options.parseOptions([])
    assert "\n" not in options.getUsage(), "the one line is not buried under the option list"


def test_runtime_options_read_the_installed_identity_and_make_service_reads_nothing(home, monkeypatch):
    network = credentials.generate("admin")
    credentials.save(home, credentials.issue(network, "rt-joined"))
    options = parsed(runtime_tap.Options, "--broker", "external")
    assert options.config.id == "rt-joined" and options.credentials.username == "rt-joined"
    credentials.path(home).unlink()  # building the tree must not need the file again
    monkeypatch.setattr(credentials, "load", lambda home: pytest.fail("makeService read credentials.json"))
    top = runtime_tap.makeService(options, reactor=MemoryReactorClock())
    runtime = top.getServiceNamed("runtime")
    assert runtime.config.id == "rt-joined" and runtime.client.address.username == "rt-joined"


# --------------------------------------------------------------------------
# oneospsd


def test_broker_options_parse_every_flag():
    o = parsed(
        broker_tap.Options,
        "--port",
        "1884",
        "--interface",
        "127.0.0.1",
        "--websocket-port",
        "8080",
        "--port-file",
        "p",
        "--max-message",
        "2048",
        "--connect-timeout",
        "2.5",
        "--allow-anonymous",
        "--cert",
        "c.pem",
        "--key",
        "k.pem",
    )
    assert (o["port"], o["interface"], o["websocket-port"], o["port-file"]) == (1884, "127.0.0.1", 8080, "p")
    assert (o["max-message"], o["connect-timeout"], o["allow-anonymous"]) == (2048, 2.5, 1)
    assert (o["cert"], o["key"], o["tls"]) == ("c.pem", "k.pem", 0)
    d = parsed(broker_tap.Options)
    assert (d["port"], d["interface"], d["websocket-port"], d["port-file"]) == (1883, "0.0.0.0", 0, None)
    assert (d["max-message"], d["connect-timeout"], d["allow-anonymous"], d["tls"]) == (1024 * 1024, 10.0, 0, 0)
    assert parsed(broker_tap.Options, "--tls")["port"] == 8883  # the certificate is looked for by makeService
    assert parsed(broker_tap.Options, "-p", "0", "-i", "::1")["port"] == 0


@pytest.mark.parametrize(
    "args,message",
    [
        (["--cert", "c.pem"], "--cert and --key go together"),
        (["--key", "k.pem"], "--cert and --key go together"),
        (["--port", "65536"], "--port must be 0..65535"),
        (["--websocket-port", "-1"], "--websocket-port must be 0..65535"),
        (["--max-message", "-1"], "--max-message must not be negative (0 = no limit)"),
        (["--connect-timeout", "-1"], "--connect-timeout must not be negative (0 = no limit)"),
    ],
)
def test_broker_bad_options_are_usage_errors(args, message):
    with pytest.raises(usage.UsageError) as e:
        parsed(broker_tap.Options, *args)
    assert str(e.value) == message


@pytest.fixture
def fake_reactor(monkeypatch):
    """``oneos.broker.app`` uses the global reactor: give it a memory one (the asyncio check is the test process's)."""
    reactor = MemoryReactorClock()
    monkeypatch.setattr(twisted.internet, "reactor", reactor)
    installed = []
    monkeypatch.setattr(broker_tap, "install_asyncio_reactor", lambda: installed.append(True))
    reactor.installed = installed
    return reactor


def test_broker_make_service_requires_credentials_by_default(home, fake_reactor):
    before = open_sockets()
    broker = broker_tap.makeService(parsed(broker_tap.Options, "--port", "0", "--interface", "127.0.0.1"))
    assert open_sockets() <= before
    assert fake_reactor.installed == [True]
    assert isinstance(broker, BrokerService) and not broker.running and broker.address is None
    assert broker.credentials is not None and broker.credentials == credentials.load(home)
    assert (broker.interface, broker.port, broker.ws, broker.tls) == ("127.0.0.1", 0, None, None)
    assert (broker.max_message, broker.connect_timeout) == (1024 * 1024, 10.0)
    assert fake_reactor.tcpServers == [] and len(fake_reactor.whenRunningHooks) == 1  # waits for the listener


def test_broker_make_service_with_allow_anonymous_has_no_credentials(home, fake_reactor):
    broker = broker_tap.makeService(
        parsed(
            broker_tap.Options,
            "--allow-anonymous",
            "--websocket-port",
            "8080",
            "--max-message",
            "0",
            "--connect-timeout",
            "0",
        )
    )
    assert broker.credentials is None and not credentials.path(home).exists()
    assert (broker.interface, broker.port, broker.ws) == ("0.0.0.0", 1883, ("0.0.0.0", 8080))
    assert (broker.max_message, broker.connect_timeout) == (None, None)  # 0 = no limit


def test_broker_make_service_tls_errors_are_one_plain_line(home, fake_reactor):
    with pytest.raises(SystemExit) as e:
        broker_tap.makeService(parsed(broker_tap.Options, "--tls", "--allow-anonymous"))
    assert e.value.code == (
        f"oneospsd: no TLS certificate in {home}/tls/cert.pem: run 'oneos tls init' first (or give --cert and --key)"
    )
    with pytest.raises(SystemExit) as e:
        broker_tap.makeService(
            parsed(broker_tap.Options, "--cert", "/nonexistent/c.pem", "--key", "/nonexistent/k.pem")
        )
    assert str(e.value.code).startswith("oneospsd: no TLS certificate file at /nonexistent/c.pem")
