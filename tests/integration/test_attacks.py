"""The attacks of the "trust" issue, repeated by a plain MQTT client, and refused.

Bus-level attacks run against both brokers OneOS supports: ours (``twistd
oneospsd``, which checks identities with the network secret) and Mosquitto
with the files ``oneos mosquitto`` writes.  Runtime-level attacks run against
a real one-machine OneOS (runtime + embedded broker).  The attacker holds no
credentials, wrong ones, or a valid *client* identity (``mallory@x``: a
stolen laptop's); a rogue *runtime* identity tries to speak for another.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from oneos.pubsub import mqtt, topics
from oneos.security import credentials
from oneos.testing.attacker import MQTTPeer
from oneos.testing.brokers import mosquitto_binary, start_mosquitto, start_oneospsd
from oneos.testing.runtimes import oneos, wait_for
from oneos.testing.ssh import ssh_options


class Bus:
    """A broker with identities on, and the network's credentials to issue identities for the test."""

    def __init__(self, url: str, network: credentials.Credentials, kind: str) -> None:
        self.url = url
        self.network = network
        self.kind = kind

    def peer(self, name: str | None, password: str | None = None, **kw) -> MQTTPeer:
        if name is not None and password is None:
            password = credentials.issue(self.network, name).password
        return MQTTPeer(self.url, name, password, **kw)


#: every identity the bus tests use (Mosquitto needs them in its password file)
NAMES = ["rt-v", "rt-w", "mallory@x", "alice@y"]


@pytest.fixture(params=["oneospsd", "mosquitto"])
def bus(request, tmp_path, public_dir):
    home = tmp_path / "home"
    network, _ = credentials.create(home, "oneos-admin")
    if request.param == "oneospsd":
        broker = start_oneospsd(tmp_path / "psd", allow_anonymous=False, env=dict(os.environ, ONEOS_HOME=str(home)))
    else:
        if mosquitto_binary() is None:
            pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
        files = public_dir / "mosq"
        argv = ["mosquitto", str(files)] + [a for n in NAMES for a in ("--name", n)]
        wrote = oneos(*argv, env={"ONEOS_HOME": str(home)})
        assert wrote.returncode == 0, wrote.stderr
        files.chmod(0o755)
        (files / "oneos.passwd").chmod(0o644)  # Mosquitto started as root reads it as user mosquitto
        broker = start_mosquitto(
            tmp_path / "mosquitto", password_file=files / "oneos.passwd", acl_file=files / "oneos.acl"
        )
    yield Bus(broker.url, network, request.param)
    broker.stop()


def test_strangers_and_wrong_passwords_are_refused(bus):
    rt_password = credentials.issue(bus.network, "rt-v").password
    outsider = credentials.generate("rt-v")  # the same name in another network
    for peer in (
        bus.peer(None),
        bus.peer("rt-v", "guess"),
        bus.peer("mallory@x", rt_password),
        bus.peer("rt-v", outsider.password),
    ):
        try:
            assert peer.return_code in (4, 5), peer.return_code  # bad user name or password / not authorised
        finally:
            peer.close()


def test_forged_status_leader_claim_and_dead_message_are_not_delivered(bus):
    watcher = bus.peer("rt-w")
    mallory = bus.peer("mallory@x")
    rogue = bus.peer("rt-w")  # a member runtime speaking for another
    try:
        assert watcher.subscribe("oneos/v1/runtimes/+/status") in (0, 1)
        forged_leader = json.dumps({"v": 1, "type": "runtime.status", "id": "rt-v", "leader": True}).encode()
        mallory.publish(topics.status("rt-v"), forged_leader, retain=True)
        rogue.publish(topics.status("rt-v"), b'{"state": "dead"}', retain=True)
        # a last will on the victim's status: refused at CONNECT, or never published
        will = bus.peer(
            "mallory@x", will=mqtt.Will(topics.status("rt-v"), b'{"state": "dead"}', 1, True), client_id="mallory-will"
        )
        if will.connected:
            will.sock.close()  # no DISCONNECT: the broker would publish the will now
        else:
            assert will.return_code == 5
        victim = bus.peer("rt-v")
        victim.publish(topics.status("rt-v"), b"genuine")  # the control: the real owner's status arrives
        victim.close()
        seen = watcher.wait_for("the genuine status", lambda p: p.payload == b"genuine")
        got = [p.payload for p in watcher.barrier("oneos/v1/barrier/rt-w/" + watcher.client_id)]
        assert seen.payload in got and got == [b"genuine"], got
        fresh = bus.peer("rt-w")  # nothing forged was retained either
        assert fresh.subscribe("oneos/v1/runtimes/+/status") in (0, 1)
        assert [p.payload for p in fresh.barrier("oneos/v1/barrier/rt-w/" + fresh.client_id)] == []
        fresh.close()
    finally:
        for p in (watcher, mallory, rogue):
            p.close()


def test_requests_travel_only_under_the_senders_own_name(bus):
    server = bus.peer("rt-v")  # runtimes read requests
    mallory = bus.peer("mallory@x")
    try:
        assert server.subscribe("oneos/v1/rpc/#") in (0, 1)
        mallory.publish("oneos/v1/rpc/rt-v/rt-w", b"as rt-w")  # forged caller
        mallory.publish("oneos/v1/rpc/rt-v/alice@y", b"as alice")  # another user's identity
        mallory.publish("oneos/v1/rpc/rt-v/mallory@x", b"as myself")
        server.wait_for("mallory's own request", lambda p: p.payload == b"as myself")
        got = [p.payload for p in server.barrier("oneos/v1/barrier/rt-v/" + server.client_id)]
        assert got == [b"as myself"], got
        # a client cannot read requests (they name who asks whom) nor answer them
        assert mallory.subscribe("oneos/v1/rpc/#") == 0x80 or not mallory.barrier(
            "oneos/v1/barrier/mallory@x/" + mallory.client_id
        )
    finally:
        server.close()
        mallory.close()


def test_replies_and_their_stream_tokens_reach_only_the_requester(bus):
    sniffer = bus.peer("mallory@x")
    alice = bus.peer("alice@y")
    server = bus.peer("rt-v")
    try:
        refused = [
            f
            for f in ("#", "oneos/v1/#", "oneos/v1/reply/#", "oneos/v1/reply/alice@y/#", "oneos/v1/reply/+/+")
            if sniffer.subscribe(f) == 0x80
        ]
        if bus.kind == "oneospsd":
            assert len(refused) == 5, refused  # our broker refuses the subscription itself
        assert alice.subscribe(f"oneos/v1/reply/alice@y/{alice.client_id}") in (0, 1)
        token = b'{"v":1,"type":"rpc.reply","id":"c1","ok":true,"result":{"token":"secret-token"}}'
        server.publish(f"oneos/v1/reply/alice@y/{alice.client_id}", token)
        assert alice.wait_for("alice's reply", lambda p: p.payload == token)
        leaked = [p.payload for p in sniffer.barrier("oneos/v1/barrier/mallory@x/" + sniffer.client_id)]
        assert leaked == [], leaked
    finally:
        for p in (sniffer, alice, server):
            p.close()


def test_a_client_takes_no_session_of_another_identity(bus):
    if bus.kind == "mosquitto":
        pytest.skip("Mosquitto lets any authenticated client take over a client id (docs/security.md says so)")
    victim = bus.peer("rt-v", client_id="rt-v-session")
    try:
        thief = bus.peer("mallory@x", client_id="rt-v-session")
        assert thief.return_code == 5
        thief.close()
        assert victim.publish(topics.status("rt-v"), b"still here")  # the victim's connection is untouched
    finally:
        victim.close()


# --------------------------------------------------------------------------
# against a running OneOS


@pytest.fixture
def solo(embedded_runtime):
    """A one-machine OneOS (embedded broker, identities on) and its network credentials."""
    rt = embedded_runtime()
    network = credentials.load(rt.home)
    assert network is not None and network.issuer
    rt.network = network
    return rt


def _peer(rt, name: str) -> MQTTPeer:
    peer = MQTTPeer(rt.url, name, credentials.issue(rt.network, name).password)
    assert peer.connected, peer.return_code
    return peer


def test_a_client_identity_cannot_command_a_runtime(solo, tmp_path):
    mallory = _peer(solo, "mallory@x")
    try:
        marker = tmp_path / "pwned"
        for method, args in [
            ("agent_spawn", {"program": "/bin/sh", "args": ["-c", f"id > {marker}"]}),
            ("agent_kill", {"agent_id": "x"}),
            ("agent_list", {}),
        ]:
            reply = mallory.request("solo", method, **args)
            assert reply["ok"] is False and reply["error"]["kind"] == "NotPermitted", reply
        assert not marker.exists()
        # the kernel's area stays closed: 'system' is not the caller's to set
        reply = mallory.request("fs", "read_small", path="/etc/oneos/users.json", system=True)
        assert reply["ok"] is False, reply
    finally:
        mallory.close()


def test_a_client_acts_only_as_its_own_user(solo):
    owner = _peer(solo, "solo")  # the runtime's identity: may act for any user (it is the front door)
    mallory = _peer(solo, "mallory@x")
    try:
        bob = owner.request("scheduler", "spawn", program="/bin/sleep", args=["60"], user="bob")
        assert bob["ok"], bob
        bob_id = bob["result"]["id"]
        for method, target, args in [
            ("kill", "scheduler", {"agent_id": bob_id}),
            ("pause", "scheduler", {"agent_id": bob_id}),
            ("kill", "scheduler", {"agent_id": bob_id, "user": "bob"}),
            ("agent_attach", "solo", {"agent_id": bob_id, "user": "root"}),
        ]:
            reply = mallory.request(target, method, **args)
            assert reply["ok"] is False and reply["error"]["kind"] == "EPERM", (method, reply)
        mine = mallory.request("scheduler", "spawn", program="/bin/sleep", args=["60"], user="root")
        assert mine["ok"] and mine["result"]["user"] == "mallory", mine  # 'user' is not the caller's to set
        killed = mallory.request("scheduler", "kill", agent_id=mine["result"]["id"])
        assert killed["ok"], killed
        ps = {row["id"]: row for row in mallory.request("scheduler", "ps", all=True)["result"]}
        assert ps[bob_id]["state"] == "running" and ps[bob_id]["user"] == "bob"
    finally:
        owner.request("scheduler", "kill", agent_id=bob_id) if "bob_id" in locals() else None
        owner.close()
        mallory.close()


def test_nothing_on_the_machine_reaches_the_broker_without_credentials(solo, tmp_path):
    """The embedded default: another local account (no credentials.json) is refused; so is a forged status."""
    stranger = oneos("status", "--pubsub", solo.url, "--timeout", "2", env={"ONEOS_HOME": str(tmp_path / "x")})
    assert stranger.returncode == 1 and "bad user name or password" in stranger.stderr
    with socket.create_connection(("127.0.0.1", int(solo.url.rsplit(":", 1)[1]))) as s:
        s.sendall(mqtt.encode_connect("anon", 30))
        assert mqtt.PacketParser().feed(s.recv(16))[0].return_code == 4
    assert stat_mode(credentials.path(solo.home)) == 0o600


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_host_subsystems_are_recognised():
    from oneos.shell.ssh import host_subsystem

    for line in (
        "scp -t /tmp/x",
        "scp -v -t -- /tmp",
        "/usr/bin/scp -pt .",
        "scp -f /etc/shadow",
        "rsync --server -vlogDtpre.iLsfxCIvu . /tmp",
    ):
        assert host_subsystem(line) and "not served" in host_subsystem(line), line
    for line in ("ls /", "cat scp -t", "echo scp -t", "scp", "rsync -a a b", ""):
        assert host_subsystem(line) is None, line


@pytest.mark.skipif(not __import__("shutil").which("scp"), reason="needs the OpenSSH scp client")
def test_scp_into_the_shell_does_not_touch_the_host_disk(solo, tmp_path, public_dir):
    import subprocess

    key = tmp_path / "id_alice"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    added = oneos(
        "user", "addkey", "alice", str(key) + ".pub", "--pubsub", solo.url, env={"ONEOS_HOME": str(solo.home)}
    )
    assert added.returncode == 0, added.stderr
    ssh = wait_for(
        "the shell to listen", lambda: json.loads((solo.home / "runtime.json").read_text()).get("ssh"), logs=solo.log
    )
    port = ssh.rsplit(":", 1)[1]
    payload = tmp_path / "payload"
    payload.write_text("should not land on the host\n")
    target = public_dir / "landed"
    copied = subprocess.run(
        [
            "scp",
            "-O",
            "-P",
            port,
            *ssh_options(key),
            str(payload),
            f"alice@127.0.0.1:{target}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert copied.returncode != 0 and "not served" in copied.stderr, copied
    assert not target.exists()
