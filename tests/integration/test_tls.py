"""TLS: the network CA, mqtts:// to our broker, and TLS streams, with real components on loopback.

Certificates are made by oneos/security/tls.py into temporary homes; the
broker (BrokerService, amqtt) and the TransferServer listen on ephemeral
ports; waiting is always on an event with a deadline.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from cryptography import x509
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from oneos.broker.service import BrokerError, BrokerService
from oneos.errors import OneOSError
from oneos.pubsub.address import parse_broker_url
from oneos.pubsub.client import PubSubClient
from oneos.runtime.status import RuntimeStatus
from oneos.security import tls
from oneos.transfer import TransferError, TransferServer, receive, send, tls_of, use_client_trust
from test_broker import within

DEADLINE = 20.0


@defer.inlineCallbacks
def until(check, what: str, seconds: float = DEADLINE):
    """Poll *check* on the reactor until it is true; fail naming *what* after the deadline."""
    end = time.monotonic() + seconds
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        yield task.deferLater(reactor, 0.02, lambda: None)  # polling interval, not synchronisation


def network(root: Path, name: str, names=("127.0.0.1",), loopback: bool = True) -> Path:
    """A home with a fresh CA and a machine certificate for *names*."""
    home = root / name
    tls.create_ca(home)
    tls.issue_own(home, list(names), loopback=loopback)
    return home


class Scratch:
    """Temporary directories for a trial test case, removed after it (not under the working directory)."""

    def scratch(self) -> Path:
        path = Path(tempfile.mkdtemp(prefix="oneos-tls-test-"))
        self.addCleanup(shutil.rmtree, path, True)
        return path


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# --------------------------------------------------------------------------
# the CA and certificates


def test_create_ca_is_idempotent_and_keeps_its_key_private(tmp_path):
    assert tls.create_ca(tmp_path) is True
    ca, key = tls.ca_path(tmp_path).read_bytes(), tls.ca_key_path(tmp_path).read_bytes()
    assert mode(tls.ca_key_path(tmp_path)) == 0o600
    assert mode(tls.tls_dir(tmp_path)) == 0o700
    assert tls.create_ca(tmp_path) is False  # never regenerated
    assert tls.ca_path(tmp_path).read_bytes() == ca and tls.ca_key_path(tmp_path).read_bytes() == key
    cert = x509.load_pem_x509_certificate(ca)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_a_lost_ca_certificate_is_not_silently_replaced(tmp_path):
    tls.create_ca(tmp_path)
    tls.ca_path(tmp_path).unlink()
    with pytest.raises(tls.TLSError, match="restore ca.pem"):
        tls.create_ca(tmp_path)


def test_machine_certificate_names_dns_names_and_ip_addresses(tmp_path):
    tls.create_ca(tmp_path)
    cert_file, key_file = tls.issue_own(tmp_path, ["box.example", "10.1.2.3", "[fd00::7]"])
    assert mode(key_file) == 0o600
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["box.example", "localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ("10.1.2.3", "fd00::7", "127.0.0.1", "::1")
    }
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca = x509.load_pem_x509_certificate(tls.ca_path(tmp_path).read_bytes())
    cert.verify_directly_issued_by(ca)
    assert tls.certificate_names(cert_file.read_bytes())[:3] == ["box.example", "10.1.2.3", "fd00::7"]


def test_bad_names_are_typed_errors(tmp_path):
    tls.create_ca(tmp_path)
    for bad in ("two words", "-x.example", "a..b", ""):
        with pytest.raises(tls.BadName):
            tls.issue(tmp_path, [bad])


def test_missing_files_are_plain_typed_errors(tmp_path):
    with pytest.raises(tls.NoCertificate, match=r"no TLS certificate in .*cert.pem: run 'oneos tls init'") as e:
        tls.server_options(tmp_path)
    assert isinstance(e.value, OneOSError)
    with pytest.raises(tls.NoCertificate, match="no CA certificate in"):
        tls.load_trust(tmp_path)
    with pytest.raises(tls.NoCertificate):
        tls.issue(tmp_path, ["x.example"])


def test_bundle_installs_on_another_machine_without_the_ca_key(tmp_path):
    first = tmp_path / "first"
    tls.create_ca(first)
    data = json.loads(json.dumps(tls.bundle(first, ["10.0.0.9", "second.lan"])))  # JSON-able
    assert set(data) == {"v", "ca", "cert", "key"} and "PRIVATE KEY" in data["key"]
    assert tls.ca_key_path(first).read_text() not in json.dumps(data)
    second = tmp_path / "second"
    names = tls.install(second, data)
    assert names == ["10.0.0.9", "second.lan", "localhost", "127.0.0.1", "::1"]
    assert tls.ca_path(second).read_bytes() == tls.ca_path(first).read_bytes()
    assert not tls.ca_key_path(second).exists()
    assert mode(tls.key_path(second)) == 0o600
    tls.server_options(second)  # loads
    with pytest.raises(tls.NoCAKey, match="machine where 'oneos tls init' created the CA"):
        tls.issue(second, ["third.lan"])
    # a bundle of another network is refused unless forced; a damaged one always
    other = tmp_path / "other"
    tls.create_ca(other)
    foreign = tls.bundle(other, ["10.0.0.9"])
    with pytest.raises(tls.TLSError, match="another network's CA"):
        tls.install(second, foreign)
    tls.install(second, foreign, force=True)
    assert tls.ca_path(second).read_bytes() == tls.ca_path(other).read_bytes()
    with pytest.raises(tls.TLSError, match="not issued by its CA"):
        tls.install(tmp_path / "third", {**foreign, "ca": data["ca"]})
    with pytest.raises(tls.TLSError, match="not a OneOS TLS bundle"):
        tls.install(tmp_path / "third", {"v": 99})
    with pytest.raises(tls.TLSError, match="own network CA"):
        tls.install(first, foreign, force=True)
    # the CA certificate alone, for a machine that only runs oneos commands
    ca_only = tls.bundle(second, [])
    assert set(ca_only) == {"v", "ca"}
    laptop = tmp_path / "laptop"
    assert tls.install(laptop, json.loads(json.dumps(ca_only))) == []
    assert tls.load_trust(laptop).ca_pem == tls.ca_path(second).read_bytes() and not tls.has_certificate(laptop)


def test_oneos_tls_init_issue_install_commands(tmp_path, monkeypatch, capsys):
    from oneos.cli.main import main

    first, second = tmp_path / "first", tmp_path / "second"
    monkeypatch.setenv("ONEOS_HOME", str(first))
    assert main(["tls", "init", "--name", "box.example", "--name", "10.20.30.40"]) == 0
    out = capsys.readouterr().out
    assert "created the network's CA" in out and str(tls.cert_path(first)) in out
    names = tls.certificate_names(tls.cert_path(first).read_bytes())
    assert {"box.example", "10.20.30.40", "127.0.0.1", "localhost"} <= set(names)
    ca = tls.ca_path(first).read_bytes()
    assert main(["tls", "init"]) == 0
    assert "already in" in capsys.readouterr().out and tls.ca_path(first).read_bytes() == ca
    bundle_file = tmp_path / "b.json"
    before = mode(tmp_path)
    assert main(["tls", "issue", "--name", "10.0.0.5", "--out", str(bundle_file)]) == 0
    assert mode(bundle_file) == 0o600
    assert mode(tmp_path) == before  # the directory the bundle goes to is left as it was
    monkeypatch.setenv("ONEOS_HOME", str(second))
    assert main(["tls", "install", str(bundle_file)]) == 0
    assert tls.ca_path(second).read_bytes() == ca and tls.has_certificate(second)
    capsys.readouterr()
    assert main(["tls", "init", "--name", "not-in-it.example"]) == 1
    assert "does not hold the CA's key" in capsys.readouterr().err


def test_broker_urls_and_status_say_tls():
    a = parse_broker_url("mqtts://broker.lan")
    assert (a.host, a.port, a.tls, a.url) == ("broker.lan", 8883, True, "mqtts://broker.lan:8883")
    assert not parse_broker_url("mqtt://broker.lan").tls and parse_broker_url("mqtt://broker.lan").port == 1883
    s = RuntimeStatus(id="rt-a", instance="i", stream="10.0.0.1:4000", stream_tls=True)
    assert RuntimeStatus.decode(s.encode()).stream_tls is True
    assert RuntimeStatus.decode(RuntimeStatus(id="rt-b", instance="i").encode()).stream_tls is False
    assert tls_of({"host": "h", "port": 1, "tls": True}) == {"tls": True} and tls_of({"host": "h"}) == {}


# --------------------------------------------------------------------------
# the broker


class BrokerTLSTests(Scratch, unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        root = self.scratch()
        self.home = network(root, "net")
        self.other = network(root, "other")
        self.broker = BrokerService(
            "tcp:0:interface=127.0.0.1", tls=(str(tls.cert_path(self.home)), str(tls.key_path(self.home)))
        )
        self.broker.startService()
        _, self.port = yield within(self.broker.whenListening(), "the TLS broker to listen")
        self.clients: list[PubSubClient] = []

    @defer.inlineCallbacks
    def tearDown(self):
        for c in self.clients:
            if c.running:
                yield c.stopService()
        yield self.broker.stopService()

    def client(self, url: str, ca: Path | None) -> PubSubClient:
        c = PubSubClient(url, reactor, ca=ca)
        self.clients.append(c)
        c.startService()
        return c

    @defer.inlineCallbacks
    def test_mqtts_client_with_the_network_ca_connects_publishes_and_receives(self):
        a = self.client(f"mqtts://127.0.0.1:{self.port}", tls.ca_path(self.home))
        b = self.client(f"mqtts://localhost:{self.port}", tls.ca_path(self.home))  # DNS name checked too
        yield within(a.whenConnected(), "a to connect over TLS")
        yield within(b.whenConnected(), "b to connect over TLS")
        got: defer.Deferred = defer.Deferred()
        yield b.subscribe("t/#", lambda m: got.called or got.callback(m))
        yield within(a.publish("t/1", b"over tls", qos=1), "PUBACK")
        message = yield within(got, "the message")
        self.assertEqual(message.payload, b"over tls")

    @defer.inlineCallbacks
    def test_a_client_trusting_another_ca_is_refused_with_a_clear_error(self):
        c = self.client(f"mqtts://127.0.0.1:{self.port}", tls.ca_path(self.other))
        yield until(lambda: c.last_error, "the TLS failure to be reported")
        self.assertFalse(c.connected)
        self.assertIn("the broker's certificate did not verify against", c.last_error)
        self.assertIn(str(tls.ca_path(self.other)), c.last_error)

    @defer.inlineCallbacks
    def test_a_certificate_for_another_address_is_refused(self):
        yield self.broker.stopService()
        wrong = network(self.scratch(), "wrong", names=("10.9.9.9",), loopback=False)
        self.broker = BrokerService(
            f"tcp:{self.port}:interface=127.0.0.1", tls=(str(tls.cert_path(wrong)), str(tls.key_path(wrong)))
        )
        self.broker.startService()
        yield within(self.broker.whenListening(), "the broker to listen again")
        c = self.client(f"mqtts://127.0.0.1:{self.port}", tls.ca_path(wrong))
        yield until(lambda: c.last_error, "the name check to fail")
        self.assertFalse(c.connected)
        self.assertIn("certificate is not valid for 127.0.0.1", c.last_error)

    @defer.inlineCallbacks
    def test_a_plaintext_client_does_not_connect_to_the_tls_port(self):
        c = self.client(f"mqtt://127.0.0.1:{self.port}", None)
        yield until(lambda: c.last_error, "the plaintext attempt to fail")
        self.assertFalse(c.connected)
        self.assertIn("if it serves TLS: an mqtts:// URL", c.last_error)

    def test_missing_certificate_files_are_a_plain_error(self):
        with self.assertRaises(BrokerError) as e:
            BrokerService("tcp:0:interface=127.0.0.1", tls=("/nonexistent/cert.pem", "/nonexistent/key.pem"))
        self.assertIn("no TLS certificate file at /nonexistent/cert.pem", str(e.exception))


def test_oneospsd_options_default_to_8883_with_tls():
    from oneos.broker.tap import Options

    o = Options()
    o.parseOptions(["--tls"])
    assert o["port"] == 8883
    o = Options()
    o.parseOptions([])
    assert o["port"] == 1883
    o = Options()
    o.parseOptions(["--cert", "c.pem", "--key", "k.pem", "--port", "0"])
    assert o["port"] == 0


def test_oneospsd_tls_process_serves_mqtts(tmp_path):
    """``twistd -n oneospsd --tls`` with this home's certificate; an mqtts:// command-line client talks to it."""
    from oneos.twistd import twistd_command

    home = network(tmp_path, "home")
    port_file = tmp_path / "port"
    env = {**os.environ, "ONEOS_HOME": str(home)}
    argv = twistd_command(
        "oneospsd",
        "--tls",
        "--port",
        "0",
        "--interface",
        "127.0.0.1",
        "--port-file",
        str(port_file),
        "--allow-anonymous",
    )
    log_path = tmp_path / "oneospsd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    try:
        end = time.monotonic() + 30
        while not port_file.exists():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < end, log_path.read_text()
            time.sleep(0.05)  # polling interval, not synchronisation
        port = int(port_file.read_text())
        script = (
            "from twisted.internet import asyncioreactor; asyncioreactor.install()\n"
            "from twisted.internet import reactor, defer\n"
            "from oneos.pubsub.client import PubSubClient\n"
            f"c = PubSubClient('mqtts://127.0.0.1:{port}', reactor)\n"
            "def ok(_): print('CONNECTED'); reactor.stop()\n"
            "c.startService(); c.whenConnected().addCallback(ok)\n"
            "reactor.callLater(20, lambda: (print('FAILED', c.last_error), reactor.stop()))\n"
            "reactor.run()\n"
        )
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
        assert "CONNECTED" in result.stdout, result.stdout + result.stderr
        assert "TLS on (mqtts://)" in log_path.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_oneospsd_tls_without_a_certificate_is_one_plain_line(tmp_path):
    from oneos.twistd import twistd_command

    env = {**os.environ, "ONEOS_HOME": str(tmp_path)}
    result = subprocess.run(
        twistd_command("oneospsd", "--tls", "--port", "0", "--allow-anonymous"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert (
        "no TLS certificate in" in result.stderr + result.stdout and "oneos tls init" in result.stderr + result.stdout
    )
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------
# streams


class PatternSource:
    def __init__(self, total: int) -> None:
        self.total, self.produced = total, 0
        self.digest = hashlib.sha256()

    def next(self) -> defer.Deferred:
        n = min(256 * 1024, self.total - self.produced)
        data = os.urandom(n)
        self.produced += n
        self.digest.update(data)
        return defer.succeed(data)


class HashSink:
    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.received = 0
        self.aborted = False

    def write(self, data: bytes) -> defer.Deferred:
        self.digest.update(data)
        self.received += len(data)
        return defer.succeed(None)

    def finish(self) -> defer.Deferred:
        return defer.succeed({"size": self.received})

    def abort(self) -> None:
        self.aborted = True


class StreamTLSTests(Scratch, unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        root = self.scratch()
        self.home = network(root, "net")
        self.other = network(root, "other")
        self.server = TransferServer(reactor, tls=tls.MachineTLS.load(self.home))
        self.server.startService()
        self.host, self.port = yield self.server.listen()
        self.trust = tls.load_trust(self.home)

    def tearDown(self):
        use_client_trust(None)
        return self.server.stopService()

    def offer(self, server: TransferServer | None = None, **kw) -> str:
        """A token for a stream that is expected never to complete (its expiry at the end is no error)."""
        token, done = (server or self.server).offer(**kw)
        done.addErrback(lambda f: None)
        return token

    def test_offers_say_tls(self):
        self.assertEqual(self.server.where(), {"host": "127.0.0.1", "port": self.port, "tls": True})

    @defer.inlineCallbacks
    def test_upload_and_download_are_byte_exact_over_tls(self):
        sink = HashSink()
        token, done = self.server.offer(sink=sink)
        source = PatternSource(8 * 2**20 + 77)
        status = yield within(send(reactor, self.host, self.port, token, source, tls=self.trust), "the upload")
        self.assertEqual(status, {"size": source.total})
        yield within(done, "the server side of the upload")
        self.assertEqual(sink.digest.hexdigest(), source.digest.hexdigest())

        source = PatternSource(5 * 2**20 + 3)
        token, done = self.server.offer(source=source)
        sink = HashSink()
        use_client_trust(self.trust)  # tls=True: the trust a runtime sets
        yield within(receive(reactor, self.host, self.port, token, sink, **tls_of(self.server.where())), "the download")
        yield within(done, "the server side of the download")
        self.assertEqual((sink.received, sink.digest.hexdigest()), (source.total, source.digest.hexdigest()))

    @defer.inlineCallbacks
    def test_a_client_trusting_another_ca_fails_with_a_certificate_error(self):
        other = tls.load_trust(self.other)
        for direction in ("send", "receive"):
            if direction == "send":
                token = self.offer(sink=HashSink())
                d = send(reactor, self.host, self.port, token, PatternSource(2**20), tls=other)
            else:
                token = self.offer(source=PatternSource(2**20))
                sink = HashSink()
                d = receive(reactor, self.host, self.port, token, sink, tls=other)
            with self.assertRaises(TransferError) as e:
                yield within(d, f"the {direction} to fail")
            text = str(e.exception)
            self.assertIn(f"127.0.0.1:{self.port}", text)
            self.assertIn("certificate did not verify", text)
            self.assertIn(str(tls.ca_path(self.other)), text)
            self.assertEqual(e.exception.kind, "EACCES")
            if direction == "receive":
                self.assertTrue(sink.aborted)

    @defer.inlineCallbacks
    def test_a_certificate_for_another_address_fails_naming_it(self):
        wrong = network(self.scratch(), "wrong", names=("10.9.9.9",), loopback=False)
        server = TransferServer(reactor, tls=tls.MachineTLS.load(wrong))
        server.startService()
        host, port = yield server.listen()
        try:
            token = self.offer(server, sink=HashSink())
            with self.assertRaises(TransferError) as e:
                yield within(
                    send(reactor, host, port, token, PatternSource(1000), tls=tls.load_trust(wrong)),
                    "the name check to fail",
                )
            self.assertIn(f"127.0.0.1:{port}", str(e.exception))
            self.assertIn("certificate is not valid for 127.0.0.1", str(e.exception))
        finally:
            yield server.stopService()

    @defer.inlineCallbacks
    def test_a_plaintext_client_fails_rather_than_hangs(self):
        token = self.offer(sink=HashSink())
        with self.assertRaises(TransferError):
            yield within(send(reactor, self.host, self.port, token, PatternSource(1000)), "the plaintext send to fail")

    @defer.inlineCallbacks
    def test_a_tls_client_to_a_plaintext_server_fails_naming_it(self):
        plain = TransferServer(reactor)
        plain.startService()
        host, port = yield plain.listen()
        try:
            token = self.offer(plain, sink=HashSink())
            with self.assertRaises(TransferError) as e:
                yield within(send(reactor, host, port, token, PatternSource(1000), tls=self.trust), "the failure")
            self.assertIn(f"stream address 127.0.0.1:{port} (TLS): TLS handshake failed", str(e.exception))
        finally:
            yield plain.stopService()

    @defer.inlineCallbacks
    def test_tls_asked_without_any_ca_is_a_plain_error(self):
        os.environ["ONEOS_HOME"], before = str(self.scratch()), os.environ.get("ONEOS_HOME")
        try:
            token = self.offer(sink=HashSink())
            with self.assertRaises(TransferError) as e:
                yield within(send(reactor, self.host, self.port, token, PatternSource(10), tls=True), "the failure")
            self.assertIn(f"stream address 127.0.0.1:{self.port} uses TLS, but no CA certificate in", str(e.exception))
        finally:
            if before is None:
                os.environ.pop("ONEOS_HOME", None)
            else:
                os.environ["ONEOS_HOME"] = before


# --------------------------------------------------------------------------
# a runtime of a TLS network


def test_a_runtime_with_a_certificate_serves_streams_with_tls(tmp_path):
    """``oneos tls init``'s files in a runtime's home: its streams are TLS, its status says so, and the
    CLI (file content, a program's output) checks them against the home's CA; the embedded broker on
    loopback stays plain MQTT."""
    from oneos.testing.runtimes import EmbeddedRuntime, wait_for

    home = tmp_path / "rt" / "embedded"  # EmbeddedRuntime's home under its root
    tls.create_ca(home)
    tls.issue_own(home, ["127.0.0.1"])
    rt = EmbeddedRuntime(tmp_path / "rt")
    try:
        wait_for("the runtime to lead", lambda: "now leads the kernel" in rt.log(), logs=rt.log)
        assert "streams use TLS with" in rt.log()
        assert rt.url.startswith("mqtt://")  # the embedded broker: plain, on loopback
        status = rt.oneos("status", "--json")
        assert status.returncode == 0, status.stderr
        solo = next(s for s in json.loads(status.stdout) if s["id"] == "solo")
        assert solo["stream_tls"] is True
        src, back = tmp_path / "data.bin", tmp_path / "back.bin"
        src.write_bytes(os.urandom(3 * 2**20 + 5))
        put = rt.oneos("fs", "put", str(src), "/data.bin", timeout=120)
        assert put.returncode == 0, put.stderr + rt.log()
        get = rt.oneos("fs", "get", "/data.bin", str(back), timeout=120)
        assert get.returncode == 0, get.stderr
        assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
        # a program's input and output, and a pipe between two programs, stream over TLS too
        ran = subprocess.run(
            [
                sys.executable,
                "-m",
                "oneos.cli.main",
                "run",
                "--pubsub",
                rt.url,
                "python3",
                "-c",
                "import sys; print(sys.stdin.read().upper(), end='')",
            ],
            input="over tls\n",
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "ONEOS_HOME": str(home)},
        )
        assert (ran.returncode, ran.stdout) == (0, "OVER TLS\n"), ran.stderr + rt.log()
        piped = rt.oneos("run", "--pipe", "seq 1 1000 | wc -l", timeout=120)
        assert (piped.returncode, piped.stdout.strip()) == (0, "1000"), piped.stderr + rt.log()
        # the same with a CLI whose home trusts another CA: refused, naming the address and the certificate
        stranger = tmp_path / "stranger"
        shutil.copytree(home, stranger, ignore=shutil.ignore_patterns("tls"))
        tls.create_ca(stranger)
        bad = rt.oneos("fs", "cat", "/data.bin", env={"ONEOS_HOME": str(stranger)}, timeout=60)
        assert bad.returncode != 0
        assert "certificate did not verify" in bad.stderr and "127.0.0.1:" in bad.stderr, bad.stderr
    finally:
        rt.stop()
