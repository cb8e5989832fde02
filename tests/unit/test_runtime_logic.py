"""Pure runtime logic: status codec, election, config precedence, status table."""

import io
import json

import pytest

from oneos.cli import configure
from oneos.cli.status import format_table, judged_state
from oneos.config import load_config, save_config
from oneos.errors import ConfigError
from oneos.pubsub.messages import MalformedMessage, encode
from oneos.runtime.status import DEAD, RuntimeStatus, elect


def rs(rid, started, kernel=True, leader=False, state="alive"):
    return RuntimeStatus(id=rid, instance=rid + "-i", state=state, kernel=kernel, leader=leader, started_at=started)


class TestElection:
    def test_oldest_kernel_wins_when_nobody_claims(self):
        assert elect([rs("b", 10), rs("a", 20), rs("c", 5, kernel=False)]) == "b"

    def test_id_breaks_ties(self):
        assert elect([rs("b", 10), rs("a", 10)]) == "a"

    def test_sitting_leader_is_not_displaced_by_an_older_newcomer(self):
        assert elect([rs("new", 1), rs("sitting", 50, leader=True)]) == "sitting"

    def test_two_claimants_resolve_to_one(self):
        assert elect([rs("x", 9, leader=True), rs("y", 3, leader=True)]) == "y"

    def test_dead_and_non_kernel_runtimes_never_lead(self):
        assert elect([rs("a", 1, state="dead", leader=True), rs("b", 2, kernel=False)]) is None

    def test_everyone_agrees_whatever_the_order(self):
        group = [rs("a", 3), rs("b", 1), rs("c", 2)]
        assert {elect(group), elect(group[::-1]), elect(group[1:] + group[:1])} == {"b"}


class TestStatusCodec:
    def test_round_trip(self):
        s = RuntimeStatus(
            id="rt-1", instance="i", tags=("gpu",), interpreters=("python3",), cpu_percent=3.5, services={"v": "1"}
        )
        assert RuntimeStatus.decode(s.encode()) == s

    @pytest.mark.parametrize(
        "payload",
        [
            b"\xff\xfe",
            b"{}",
            b'{"v":1,"type":"runtime.status"}',
            encode("runtime.status", id="a", instance="i", state="zombie"),
            encode("runtime.status", id="a", instance="i", state="alive", memory_limit_mb="lots"),
            encode("other.type", id="a"),
            json.dumps({"v": 2, "type": "runtime.status", "id": "a", "instance": "i", "state": "alive"}).encode(),
        ],
    )
    def test_malformed_status_is_rejected(self, payload):
        with pytest.raises(MalformedMessage):
            RuntimeStatus.decode(payload)


class TestConfig:
    def test_an_mqtts_url_on_loopback_never_hosts_the_plain_embedded_broker(self, tmp_path):
        assert not load_config(tmp_path, {"pubsub": "mqtts://127.0.0.1:8883"}).wants_embedded_broker
        assert load_config(tmp_path, {"pubsub": "mqtt://127.0.0.1:8883"}).wants_embedded_broker

    def test_no_file_is_the_embedded_default(self, tmp_path):
        c = load_config(tmp_path)
        assert c.embedded and c.kernel and c.generated_id
        assert c.pubsub == "mqtt://127.0.0.1:1883" and c.wants_embedded_broker
        # no store setting: the network's, or this home's SQLite file when the network has none
        assert c.store == "" and c.local_store == f"sqlite:///{tmp_path / 'fs.sqlite3'}"

    def test_flags_override_file_override_defaults(self, tmp_path):
        (tmp_path / "config.json").write_text(json.dumps({"id": "from-file", "memory_mb": 512, "kernel": False}))
        c = load_config(tmp_path, {"id": "from-flag", "memory_mb": None, "kernel": None})
        assert (c.id, c.memory_mb, c.kernel, c.embedded) == ("from-flag", 512, False, False)
        c2 = load_config(tmp_path, {"kernel": True, "memory_mb": "2048"})
        assert (c2.id, c2.memory_mb, c2.kernel) == ("from-file", 2048, True)

    @pytest.mark.parametrize(
        "settings,field",
        [
            ({"id": "bad/id"}, "id"),
            ({"pubsub": "http://x"}, "pubsub"),
            ({"store": "ftp://x"}, "store"),
            ({"memory_mb": -1}, "memory_mb"),
            ({"memory_mb": "lots"}, "memory_mb"),
            ({"kernel": "maybe"}, "kernel"),
            ({"tags": ["ok", "bad tag"]}, "tags"),
            ({"listen": {"ssh": "http://x"}}, "listen.ssh"),
            ({"listen": {"ftp": ""}}, "listen.ftp"),
            ({"colour": "blue"}, "colour"),
            ({"keepalive": 0}, "keepalive"),
        ],
    )
    def test_invalid_values_name_the_field(self, tmp_path, settings, field):
        (tmp_path / "config.json").write_text(json.dumps(settings))
        with pytest.raises(ConfigError) as e:
            load_config(tmp_path)
        assert e.value.field == field
        assert field in str(e.value)

    def test_broken_json_is_a_plain_error(self, tmp_path):
        (tmp_path / "config.json").write_text("{oops")
        with pytest.raises(ConfigError, match="not valid JSON"):
            load_config(tmp_path)

    def test_save_then_load_round_trip(self, tmp_path):
        c = load_config(tmp_path, {"id": "rt-9", "tags": "a,b", "pubsub": "mqtt://10.1.2.3:1999"})
        save_config(c)
        again = load_config(tmp_path)
        assert (again.id, again.tags, again.pubsub, again.embedded) == (
            "rt-9",
            ("a", "b"),
            "mqtt://10.1.2.3:1999",
            False,
        )
        assert not again.wants_embedded_broker


def test_configure_reasks_until_valid(tmp_path):
    answers = io.StringIO("my-rt\nmqtt://10.0.0.1:1883\n\nlots\n256\nmaybe\nno\ngpu,arm\n")
    out = io.StringIO()
    assert configure.run(["--home", str(tmp_path)], stdin=answers, stdout=out) == 0
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["id"], saved["pubsub"], saved["memory_mb"], saved["kernel"], saved["tags"]) == (
        "my-rt",
        "mqtt://10.0.0.1:1883",
        256,
        False,
        ["gpu", "arm"],
    )
    assert out.getvalue().count("try again") == 2


def test_configure_without_answers_writes_nothing(tmp_path):
    assert configure.run(["--home", str(tmp_path)], stdin=io.StringIO(""), stdout=io.StringIO()) == 1
    assert not (tmp_path / "config.json").exists()


def test_status_table_marks_stale_and_leader():
    now = 1000.0
    fresh = RuntimeStatus(
        id="rt-1",
        instance="a",
        leader=True,
        kernel=True,
        updated_at=999,
        address="10.0.0.1",
        memory_limit_mb=512,
        desktop="http://10.0.0.1:3000/",
    )
    stale = RuntimeStatus(id="rt-2", instance="b", kernel=True, updated_at=900)
    dead = RuntimeStatus(id="rt-3", instance="c", state=DEAD, updated_at=999)
    assert judged_state(stale, now) == "dead"
    table = format_table([stale, fresh, dead], now)
    first = table.splitlines()[1]
    assert first.startswith("rt-1") and "leader" in first and "alive" in first
    assert "DESKTOP" in table.splitlines()[0] and "http://10.0.0.1:3000/" in first
    assert "1 live runtime(s); kernel leader: rt-1" in table
