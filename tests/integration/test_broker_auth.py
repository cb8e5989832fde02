"""Identities: our broker refuses anonymous and wrong clients; invite/join; Mosquitto's files.

In-process tests run BrokerService with credentials in the test's reactor
and talk to it raw (packet-level CONNACK codes) and with OneOS's client;
process tests run the real ``twistd oneospsd``/``oneosd``/``oneos`` with
their own ``ONEOS_HOME``.  Waiting is on conditions with deadlines.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial import unittest

from oneos.broker.service import BrokerService
from oneos.pubsub import mqtt
from oneos.pubsub.client import PubSubClient
from oneos.security import credentials
from oneos.security.credentials import CredentialsError
from oneos.testing.brokers import free_port, mosquitto_binary, start_mosquitto, start_oneospsd
from oneos.testing.runtimes import oneos, wait_for
from oneos.twistd import twistd_command as twistd
from test_broker import Inbox, RawMQTT, within

#: a network (it holds the secret) and the identity rt-a in it
NETWORK = credentials.generate("rt-a")
SECRET = credentials.issue(NETWORK, "rt-a")


# --------------------------------------------------------------------------
# credentials and tokens (pure)


def test_create_is_private_and_idempotent(tmp_path):
    creds, created = credentials.create(tmp_path / "home", "rt-a")
    assert created and creds.username == "rt-a" and creds.issuer and len(creds.secret) >= 40
    assert creds.password == credentials.derive(creds.secret, "rt-a")
    path = credentials.path(tmp_path / "home")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created_again = credentials.create(tmp_path / "home", "rt-b")
    assert (again, created_again) == (creds, False)
    assert json.loads(path.read_text())["v"] == 1
    assert creds.password not in repr(creds) and creds.secret not in repr(creds)


def test_identities_are_derived_and_cannot_mint_others():
    alice = credentials.issue(NETWORK, "alice@laptop")
    assert credentials.role("alice@laptop") == "client" and credentials.client_user("alice@laptop") == "alice"
    assert credentials.role("rt-a") == "runtime" and credentials.client_user("rt-a") is None
    for bad in ("", "a/b", "+", "#", "x y", "@tag", "Alice@x", "a@b@c", "~"):
        assert credentials.role(bad) is None, bad
    assert not alice.secret and credentials.valid(NETWORK.secret, "alice@laptop", alice.password)
    assert not credentials.valid(NETWORK.secret, "bob@laptop", alice.password)
    assert not credentials.valid(NETWORK.secret, "a/b", credentials.derive(NETWORK.secret, "a/b"))
    with pytest.raises(CredentialsError, match="secret"):
        credentials.issue(alice, "bob@laptop")
    with pytest.raises(CredentialsError, match="not 'rt-b'"):
        credentials.identity(SECRET, "rt-b")
    assert credentials.identity(NETWORK, "rt-b").password == credentials.derive(NETWORK.secret, "rt-b")


def test_token_round_trip_and_clear_errors():
    token = credentials.token(NETWORK, "mqtt://user:pw@broker.example:1883")
    parsed = credentials.parse_token(token)
    assert (parsed.username, parsed.password, parsed.broker) == (
        NETWORK.username,
        NETWORK.password,
        "mqtt://broker.example:1883",
    )
    assert parsed.secret == "" and NETWORK.secret not in token  # a token never carries the network secret
    for bad, words in [
        ("hello", "not a OneOS join token"),
        (token[:-12] + "!!", "damaged"),
        ("oneos9.abc", "format 'oneos9'"),
        (token[:20], "damaged"),
    ]:
        with pytest.raises(CredentialsError, match=words):
            credentials.parse_token(bad)


def test_redact_url():
    assert credentials.redact_url("mqtt://a:secret@h:1883") == "mqtt://a:***@h:1883"
    assert credentials.redact_url("mqtt://h:1883") == "mqtt://h:1883"


# --------------------------------------------------------------------------
# our broker, in process


@defer.inlineCallbacks
def raw_connect(port: int, client_id: str, username=None, password=None, will=None):
    proto = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), RawMQTT())
    proto.send(mqtt.encode_connect(client_id, 60, will=will, username=username, password=password))
    ack = yield proto.expect(mqtt.CONNACK, f"CONNACK for {client_id}")
    return proto, ack


class AuthenticatingBrokerTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.broker = BrokerService("tcp:0:interface=127.0.0.1", credentials=NETWORK)
        self.broker.startService()
        _, self.port = yield within(self.broker.whenListening(), "the broker to listen")
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.clients: list = []
        self.raws: list = []

    @defer.inlineCallbacks
    def tearDown(self):
        for c in self.clients:
            if c.running:
                yield c.stopService()
        for r in self.raws:
            if r.transport.connected:
                r.transport.abortConnection()
        yield self.broker.stopService()

    @defer.inlineCallbacks
    def raw(self, *args, **kw):
        proto, ack = yield raw_connect(self.port, *args, **kw)
        self.raws.append(proto)
        return proto, ack

    @defer.inlineCallbacks
    def test_anonymous_is_refused(self):
        proto, ack = yield self.raw("anon")
        self.assertEqual(ack.return_code, 4)  # bad user name or password
        yield within(proto.closed, "the refused connection to close")

    @defer.inlineCallbacks
    def test_wrong_password_and_wrong_user_are_refused(self):
        _, ack = yield self.raw("wrong", username="rt-a", password="guess")
        self.assertEqual(ack.return_code, 4)
        _, ack = yield self.raw("wrong2", username="mallory", password=SECRET.password)
        self.assertEqual(ack.return_code, 4)

    @defer.inlineCallbacks
    def test_right_credentials_are_accepted(self):
        _, ack = yield self.raw("good", username=SECRET.username, password=SECRET.password)
        self.assertEqual(ack.return_code, 0)
        alice = credentials.issue(NETWORK, "alice@t")
        a = PubSubClient(f"mqtt://{SECRET.username}:{SECRET.password}@127.0.0.1:{self.port}", reactor)
        b = PubSubClient(f"mqtt://{alice.username}:{alice.password}@127.0.0.1:{self.port}", reactor)
        self.clients += [a, b]
        for c in (a, b):
            c.startService()
            yield within(c.whenConnected(), "an authenticated client to connect")
        inbox = Inbox()
        yield b.subscribe("oneos/v1/runtimes/+/status", inbox)
        got = inbox.next()
        yield a.publish("oneos/v1/runtimes/rt-a/status", b"hello", qos=1)
        message = yield got
        self.assertEqual(message.payload, b"hello")

    @defer.inlineCallbacks
    def test_our_client_without_credentials_learns_why(self):
        c = PubSubClient(self.url, reactor, max_delay=0.2)
        self.clients.append(c)
        c.startService()
        for _ in range(100):
            if c.last_error:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)  # polling interval; the condition decides
        self.assertEqual(c.last_error, "bad user name or password")

    @defer.inlineCallbacks
    def test_refused_client_cannot_take_over_a_members_session(self):
        """An unauthenticated CONNECT with a member's client id must not knock it off nor publish its will."""
        watcher, _ = yield self.raw("watcher", username=SECRET.username, password=SECRET.password)
        watcher.send(mqtt.encode_subscribe(1, [("oneos/v1/runtimes/+/status", 1)]))
        yield watcher.expect(mqtt.SUBACK, "SUBACK")
        member, ack = yield self.raw(
            "rt-a",
            username=SECRET.username,
            password=SECRET.password,
            will=mqtt.Will("oneos/v1/runtimes/rt-a/status", b"dead", 1, False),
        )
        self.assertEqual(ack.return_code, 0)
        _, ack = yield self.raw("rt-a")  # anonymous, same client id
        self.assertEqual(ack.return_code, 4)
        mallory = credentials.issue(NETWORK, "mallory@x")  # a member, but another identity
        _, ack = yield self.raw("rt-a", username=mallory.username, password=mallory.password)
        self.assertEqual(ack.return_code, 5)  # not authorised: the client id is rt-a's
        member.send(mqtt.encode_simple(mqtt.PINGREQ))
        yield member.expect(mqtt.PINGRESP, "the member still answered")
        self.assertFalse(member.closed.called)
        self.assertEqual(watcher.publishes(), [])


# --------------------------------------------------------------------------
# processes: oneospsd, oneos, oneosd


def env_home(home: Path) -> dict:
    return {"ONEOS_HOME": str(home)}


@pytest.fixture
def secure_broker(tmp_path):
    """``twistd oneospsd`` as shipped (authentication on), its ONEOS_HOME under tmp_path."""
    home = tmp_path / "broker-home"
    broker = start_oneospsd(tmp_path / "oneospsd", allow_anonymous=False, env=dict(os.environ, ONEOS_HOME=str(home)))
    broker.home = home
    yield broker
    broker.stop()


def test_oneospsd_creates_credentials_and_refuses_strangers(secure_broker, tmp_path):
    path = credentials.path(secure_broker.home)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    log = secure_broker.log()
    assert str(path) in log and "oneos invite" in log
    creds = credentials.load(secure_broker.home)
    assert creds.password not in log
    # the broker's own home: works with no flags beyond the URL
    ok = oneos("status", "--pubsub", secure_broker.url, "--timeout", "5", env=env_home(secure_broker.home))
    assert ok.returncode == 0, ok.stderr
    # a home with no credentials: refused, and told what to do
    stranger = tmp_path / "stranger"
    bad = oneos("status", "--pubsub", secure_broker.url, "--timeout", "2", env=env_home(stranger))
    assert bad.returncode == 1
    assert "bad user name or password" in bad.stderr and "oneos join" in bad.stderr
    assert "Traceback" not in bad.stderr
    wait_for(
        "the broker to log the refusal",
        lambda: "refused MQTT client from 127.0.0.1: bad credentials" in secure_broker.log(),
        logs=secure_broker.log,
    )


def test_oneospsd_allow_anonymous_is_explicit_and_logged(tmp_path):
    home = tmp_path / "open-home"
    broker = start_oneospsd(tmp_path / "open", allow_anonymous=True, env=dict(os.environ, ONEOS_HOME=str(home)))
    try:
        assert "allow-anonymous" in broker.log() and "insecure" in broker.log()
        assert not credentials.path(home).exists()
        ok = oneos("status", "--pubsub", broker.url, "--timeout", "5", env=env_home(tmp_path / "nobody"))
        assert ok.returncode == 0, ok.stderr
    finally:
        broker.stop()


def test_invite_and_join_round_trip(secure_broker, tmp_path):
    invite = oneos("invite", "--broker", secure_broker.url, env=env_home(secure_broker.home))
    assert invite.returncode == 0, invite.stderr
    token = invite.stdout.strip()
    assert token.startswith("oneos1.") and "oneos join" in invite.stderr
    newcomer = tmp_path / "newcomer"
    joined = oneos("join", token, env=env_home(newcomer))
    assert joined.returncode == 0, joined.stderr
    theirs, ours = credentials.load(secure_broker.home), credentials.load(newcomer)
    assert ours.username.startswith("rt-") and ours.username != theirs.username and not ours.secret
    assert (ours.password, ours.broker) == (credentials.derive(theirs.secret, ours.username), secure_broker.url)
    assert stat.S_IMODE(credentials.path(newcomer).stat().st_mode) == 0o600
    config = json.loads((newcomer / "config.json").read_text())
    assert (config["pubsub"], config["id"]) == (secure_broker.url, ours.username)
    # no --pubsub, no flags: config.json and credentials.json are enough
    status = oneos("status", "--timeout", "5", env=env_home(newcomer))
    assert status.returncode == 0, status.stderr
    # joining again with the same token is harmless; another network's token is refused without --force
    assert oneos("join", token, env=env_home(newcomer)).returncode == 0
    other = credentials.token(credentials.generate("rt-x"), secure_broker.url)
    refused = oneos("join", other, env=env_home(newcomer))
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert oneos("join", "--force", other, env=env_home(newcomer)).returncode == 0


def test_join_bad_token_and_invite_without_credentials_are_plain_errors(tmp_path):
    bad = oneos("join", "oneos1.garbage!", env=env_home(tmp_path / "h"))
    assert bad.returncode == 1 and "damaged" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "h" / "config.json").exists()
    none = oneos("invite", env=env_home(tmp_path / "empty"))
    assert none.returncode == 1 and "no network credentials" in none.stderr and "Traceback" not in none.stderr


def test_invite_replaces_loopback_with_this_machines_address(tmp_path):
    credentials.create(tmp_path / "h", "oneos-admin")
    result = oneos("invite", env=env_home(tmp_path / "h"))  # default broker: mqtt://127.0.0.1:1883
    assert result.returncode == 0, result.stderr
    broker = credentials.parse_token(result.stdout.strip()).broker
    assert broker.endswith(":1883") and "127.0.0.1" not in broker


def test_embedded_default_needs_no_setup(tmp_path):
    """First start is not harder: a runtime with no config creates credentials; 'oneos status' on its home just works."""
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    home = tmp_path / "fresh"
    home.mkdir()
    log_path = tmp_path / "embedded.log"
    log = open(log_path, "wb")
    env = dict(os.environ, ONEOS_HOME=str(home), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(twistd("oneosd", "--pubsub", url), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=home)
    try:
        wait_for(
            "the embedded runtime to lead",
            lambda: "now leads the kernel" in log_path.read_text(),
            logs=log_path.read_text,
        )
        creds = credentials.load(home)
        assert creds is not None
        status = oneos("status", "--json", env=env_home(home))  # the URL comes from runtime.json
        assert status.returncode == 0, status.stderr
        assert len(json.loads(status.stdout)) == 1
        stranger = oneos("status", "--pubsub", url, "--timeout", "2", env=env_home(tmp_path / "stranger"))
        assert stranger.returncode == 1 and "bad user name or password" in stranger.stderr
        for text in (log_path.read_text(), (home / "runtime.json").read_text()):
            assert creds.password not in text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_runtime_without_credentials_says_why(secure_broker, tmp_path):
    home = tmp_path / "lost"
    home.mkdir()
    log_path = home / "runtime.log"
    log = open(log_path, "wb")
    env = dict(os.environ, ONEOS_HOME=str(home), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        twistd(
            "oneosd",
            "--id",
            "lost",
            "--pubsub",
            secure_broker.url,
            "--broker",
            "external",
            "--ssh",
            "tcp:0:interface=127.0.0.1",
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=home,
    )
    try:
        wait_for(
            "the runtime to report the refusal",
            lambda: "bad user name or password" in log_path.read_text(),
            logs=log_path.read_text,
        )
        text = log_path.read_text()
        assert "no network credentials" in text and "oneos join" in text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_a_client_invitation_acts_as_its_user_only(secure_broker, tmp_path):
    invite = oneos("invite", "--user", "alice", "--broker", secure_broker.url, env=env_home(secure_broker.home))
    assert invite.returncode == 0, invite.stderr
    laptop = tmp_path / "laptop"
    joined = oneos("join", invite.stdout.strip(), env=env_home(laptop))
    assert joined.returncode == 0 and "act as OneOS user alice" in joined.stdout, joined.stdout + joined.stderr
    creds = credentials.load(laptop)
    assert credentials.client_user(creds.username) == "alice"
    assert not json.loads((laptop / "config.json").read_text()).get("id")
    assert oneos("status", "--timeout", "5", env=env_home(laptop)).returncode == 0
    # a client identity cannot run a runtime
    proc = subprocess.run(
        twistd("oneosd", "--broker", "external"),
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, ONEOS_HOME=str(laptop)),
    )
    assert proc.returncode != 0 and "cannot run a runtime" in proc.stdout + proc.stderr
    # a joined machine cannot invite others (it does not hold the secret)
    again = oneos("invite", env=env_home(laptop))
    assert again.returncode == 1 and "secret" in again.stderr and "Traceback" not in again.stderr


def test_mosquitto_files_enforce_identities_and_topic_rules(tmp_path, public_dir):
    """docs/security.md's Mosquitto recipe: 'oneos mosquitto DIR' writes the password, ACL and conf files."""
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    home = tmp_path / "home"
    network, _ = credentials.create(home, "oneos-admin")
    issued = oneos("invite", "--name", "rt-m", "--broker", "mqtt://127.0.0.1:1", env=env_home(home))
    assert issued.returncode == 0, issued.stderr
    files = public_dir / "mosq"  # Mosquitto started as root reads them as user mosquitto
    wrote = oneos("mosquitto", str(files), "--listen", "127.0.0.1:1883", "--name", "sniffer@x", env=env_home(home))
    assert wrote.returncode == 0, wrote.stderr
    assert "rt-m" in wrote.stdout and network.secret not in (files / "oneos.passwd").read_text()
    conf = (files / "oneos.conf").read_text()
    assert "allow_anonymous false" in conf and "acl_file" in conf
    files.chmod(0o755)
    (files / "oneos.passwd").chmod(0o644)  # salted hashes only; Mosquitto runs as another user here
    broker = start_mosquitto(tmp_path / "mosquitto", password_file=files / "oneos.passwd", acl_file=files / "oneos.acl")
    try:
        ok = oneos("status", "--pubsub", broker.url, "--timeout", "5", env=env_home(home))
        assert ok.returncode == 0, ok.stderr + broker.log()
        bad = oneos("status", "--pubsub", broker.url, "--timeout", "2", env=env_home(tmp_path / "stranger"))
        assert bad.returncode == 1 and "oneos join" in bad.stderr, bad.stderr
        from oneos.testing.attacker import publish_as, sniff_as

        rt = credentials.issue(network, "rt-m")
        admin = credentials.issue(network, "sniffer@x")
        # the runtime identity may publish its own status; a client identity may not publish anyone's
        seen = sniff_as(
            broker.url,
            admin,
            "oneos/v1/runtimes/+/status",
            lambda: (
                publish_as(broker.url, rt, "oneos/v1/runtimes/rt-m/status", b"mine"),
                publish_as(broker.url, admin, "oneos/v1/runtimes/rt-m/status", b"forged"),
            ),
        )
        assert b"mine" in seen and b"forged" not in seen, seen
    finally:
        broker.stop()


def test_invite_on_a_tls_network_carries_the_ca_and_a_certificate(tmp_path):
    home = tmp_path / "first"
    credentials.create(home, "oneos-admin")
    made = oneos("tls", "init", "--name", "127.0.0.1", env=env_home(home))
    assert made.returncode == 0, made.stderr
    missing = oneos("invite", "--broker", "mqtts://127.0.0.1:8883", env=env_home(home))
    assert missing.returncode == 1 and "--address" in missing.stderr and "Traceback" not in missing.stderr
    invite = oneos(
        "invite", "--name", "rt-tls", "--address", "10.0.0.12", "--broker", "mqtts://127.0.0.1:8883", env=env_home(home)
    )
    assert invite.returncode == 0, invite.stderr
    newcomer = tmp_path / "newcomer"
    joined = oneos("join", invite.stdout.strip(), env=env_home(newcomer))
    assert joined.returncode == 0, joined.stderr
    assert "10.0.0.12" in joined.stdout and (newcomer / "tls" / "cert.pem").exists()
    assert not (newcomer / "tls" / "ca.key").exists()  # the CA's key never leaves the first machine
    assert stat.S_IMODE((newcomer / "tls" / "key.pem").stat().st_mode) == 0o600
    client = oneos("invite", "--user", "bob", "--broker", "mqtts://127.0.0.1:8883", env=env_home(home))
    laptop = tmp_path / "laptop"
    assert oneos("join", client.stdout.strip(), env=env_home(laptop)).returncode == 0
    assert (laptop / "tls" / "ca.pem").exists() and not (laptop / "tls" / "cert.pem").exists()
