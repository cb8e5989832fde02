"""``oneos configure``: the interview (address, devices, store), repairing a
broken config.json, and the ``devices`` setting's validation."""

import io
import json

import pytest

from oneos.cli import configure
from oneos.config import Device, load_config, parse_device_spec, save_config
from oneos.errors import ConfigError


class TTY(io.StringIO):
    """Scripted answers that claim to come from a terminal."""

    def isatty(self):
        return True


def configure_with(home, answers, detect=lambda host: "10.0.0.7", stdin_type=io.StringIO):
    out = io.StringIO()
    status = configure.run(["--home", str(home)], stdin=stdin_type(answers), stdout=out, detect=detect)
    saved = json.loads((home / "config.json").read_text()) if (home / "config.json").exists() else None
    return status, saved, out.getvalue()


def lines(*answers):
    return "".join(a + "\n" for a in answers)


# the first six questions, in order: id, pubsub, store, memory, kernel, tags
REMOTE = ("rt-a", "mqtt://10.0.0.1:1883", "", "", "", "")


def test_interview_asks_address_and_devices_and_reasks_bad_devices(tmp_path):
    answers = lines(
        *REMOTE,
        "",  # address: the detected one
        "yes",
        "camera:in:video:path=/dev/video0,fps=10",
        "just-a-name",
        "x:sideways:video",
        "y:in:usb",
        "camera:out:dump",
        "z:out:gpio:pin",
        "led:out:gpio:pin=17",
        "run:out:command:cmd=nc host:80",
        "",
    )
    status, saved, out = configure_with(tmp_path, answers)
    assert status == 0, out
    assert saved["address"] == "10.0.0.7"
    assert saved["devices"] == [
        {"name": "camera", "direction": "in", "driver": "video", "options": {"path": "/dev/video0", "fps": "10"}},
        {"name": "led", "direction": "out", "driver": "gpio", "options": {"pin": "17"}},
        {"name": "run", "direction": "out", "driver": "command", "options": {"cmd": "nc host:80"}},
    ]
    for error in (
        "devices[1]: ",
        "devices[1].direction: ",
        "devices[1].driver: ",
        "devices[1].name: ",
        "devices[1].options: ",
    ):
        assert error in out
    assert out.count("try again") == 5
    assert "detected now: 10.0.0.7" in out
    assert load_config(tmp_path).devices[0] == Device("camera", "in", "video", {"path": "/dev/video0", "fps": "10"})


def test_store_defaults_to_blank_and_the_sqlite_path_is_never_written(tmp_path):
    status, saved, out = configure_with(tmp_path, lines(*[""] * 8))
    assert status == 0, out
    assert saved["store"] == "" and "sqlite" not in json.dumps(saved)
    assert "the network's store" in out
    # a file written when the interview still spelled out the local store: Enter makes it blank
    (tmp_path / "config.json").write_text(json.dumps({"id": "old", "store": f"sqlite:///{tmp_path / 'fs.sqlite3'}"}))
    status, saved, out = configure_with(tmp_path, lines(*[""] * 8))
    assert (status, saved["id"], saved["store"]) == (0, "old", "")


def test_address_default_follows_the_broker_and_dash_means_detect_at_start(tmp_path):
    seen = []

    def detect(host):
        seen.append(host)
        return "192.168.1.9" if host == "10.0.0.1" else "127.0.0.1"

    # broker on loopback: one machine, so no address is pinned
    status, saved, out = configure_with(tmp_path, lines(*[""] * 8), detect=detect)
    assert (status, saved["address"], seen) == (0, "", ["127.0.0.1"])
    # broker elsewhere: the detected address towards it is the default
    status, saved, out = configure_with(tmp_path, lines(*REMOTE, "", "no"), detect=detect)
    assert (saved["address"], seen[-1]) == ("192.168.1.9", "10.0.0.1")
    # '-' goes back to detecting at every start; a bad address is asked again
    status, saved, out = configure_with(tmp_path, lines(*REMOTE, "a b", "-", "no"), detect=detect)
    assert saved["address"] == "" and "'a b' is not a host name" in out


def test_devices_no_clears_them_and_a_blank_first_line_keeps_them(tmp_path):
    save_config(load_config(tmp_path, {"id": "rt", "devices": ["cam:in:video"]}))
    status, saved, out = configure_with(tmp_path, lines(*[""] * 7, "yes", ""))
    assert saved["devices"] == [{"name": "cam", "direction": "in", "driver": "video", "options": {}}]
    assert "Devices exposed now: cam:in:video" in out
    status, saved, out = configure_with(tmp_path, lines(*[""] * 7, "no"))
    assert saved["devices"] == []


def test_repair_names_the_bad_field_keeps_the_good_ones_and_asks_again(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"id": "keep-me", "memory_mb": "lots", "tags": ["gpu"], "kernel": False})
    )
    status, saved, out = configure_with(tmp_path, lines("", "", "", "lots", "512", "", "", "", "no"))
    assert status == 0, out
    assert "config field 'memory_mb': expected a number, got 'lots'" in out
    assert (
        "(the value in config.json was invalid: expected a number, got 'lots')\nMemory limit for agents, MB [1024]"
        in out
    )
    assert (saved["id"], saved["memory_mb"], saved["tags"], saved["kernel"]) == ("keep-me", 512, ["gpu"], False)
    assert not (tmp_path / "config.json.broken").exists()


def test_repair_of_settings_without_a_question_listeners_and_devices(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "broker": "sometimes",
                "colour": "blue",
                "listen": {"ssh": "http://x", "telnet": "tcp:2323"},
                "devices": [
                    "cam:in:video",
                    "bad:in:usb",
                    {"name": "cam", "direction": "out", "driver": "dump"},
                    "led:out:gpio",
                ],
            }
        )
    )
    answers = lines(*[""] * 7, "", "", "embedded", "-")  # devices: yes (default), keep them; broker; ssh off
    status, saved, out = configure_with(tmp_path, answers)
    assert status == 0, out
    for field in ("'colour'", "'listen.ssh'", "'broker'", "'devices[1].driver'", "'devices[2].name'"):
        assert f"config field {field}" in out
    assert saved["listen"]["ssh"] == "" and saved["listen"]["telnet"] == "tcp:2323"
    assert saved["broker"] == "embedded" and "colour" not in saved
    assert [d["name"] for d in saved["devices"]] == ["cam", "led"]


def test_invalid_json_is_backed_up_and_questions_start_from_defaults(tmp_path):
    (tmp_path / "config.json").write_text("{oops")
    status, saved, out = configure_with(tmp_path, lines("", "rt-new", *[""] * 7))
    assert status == 0, out
    assert "is not valid JSON" in out and "Start from the defaults?" in out
    assert saved["id"] == "rt-new"
    assert (tmp_path / "config.json.broken").read_text() == "{oops"


def test_invalid_json_left_alone_when_the_answer_is_no(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    status, saved, out = configure_with(tmp_path, lines("no"))
    assert status == 1 and "must hold a JSON object" in out
    assert (tmp_path / "config.json").read_text() == "[1, 2]"
    assert not (tmp_path / "config.json.broken").exists()


def test_on_a_terminal_end_of_input_writes_nothing(tmp_path):
    status, saved, out = configure_with(tmp_path, lines("rt-a", "mqtt://10.0.0.1:1883"), stdin_type=TTY)
    assert status == 1 and saved is None and "nothing written" in out


def test_scripted_input_that_ends_early_keeps_the_defaults(tmp_path):
    status, saved, out = configure_with(tmp_path, lines("rt-a"))
    assert (status, saved["id"], saved["memory_mb"], saved["devices"]) == (0, "rt-a", 1024, [])
    assert "end of input" in out


class TestDevicesSetting:
    @pytest.mark.parametrize(
        "devices,field",
        [
            ("cam:in:video", "devices"),
            (["cam:in"], "devices[0]"),
            ([42], "devices[0]"),
            (["bad name:in:video"], "devices[0].name"),
            (["ok:in:video", {"name": "x", "direction": "both", "driver": "video"}], "devices[1].direction"),
            (["ok:in:video", {"name": "x", "direction": "in", "driver": "u sb"}], "devices[1].driver"),
            (["ok:in:video", {"name": "x", "direction": "in", "driver": 7}], "devices[1].driver"),
            ([{"name": "x", "direction": "in", "driver": "video", "options": []}], "devices[0].options"),
            ([{"name": "x", "direction": "in", "driver": "gpio", "options": {"pin": True}}], "devices[0].options.pin"),
            ([{"name": "x", "direction": "in", "driver": "gpio", "colour": "red"}], "devices[0].colour"),
            (["x:in:gpio:pin=1,pin=2"], "devices[0].options.pin"),
            (["x:in:gpio:1pin=1"], "devices[0].options"),
            (["x:in:video", "x:out:dump"], "devices[1].name"),
        ],
    )
    def test_invalid_devices_name_the_field(self, tmp_path, devices, field):
        (tmp_path / "config.json").write_text(json.dumps({"devices": devices}))
        with pytest.raises(ConfigError) as e:
            load_config(tmp_path)
        assert e.value.field == field
        assert repr(field) in str(e.value)

    def test_round_trip_as_objects(self, tmp_path):
        c = load_config(
            tmp_path,
            {
                "devices": [
                    "cam:in:video:path=/dev/video0",
                    {"name": "led", "direction": "out", "driver": "gpio", "options": {"pin": 17}},
                ]
            },
        )
        assert c.devices == (
            Device("cam", "in", "video", {"path": "/dev/video0"}),
            Device("led", "out", "gpio", {"pin": "17"}),
        )
        save_config(c)
        saved = json.loads((tmp_path / "config.json").read_text())
        assert saved["devices"][0] == {
            "name": "cam",
            "direction": "in",
            "driver": "video",
            "options": {"path": "/dev/video0"},
        }
        assert load_config(tmp_path).devices == c.devices
        assert load_config(tmp_path / "none").devices == ()

    def test_spec_line(self):
        d = parse_device_spec(" run : out : command : cmd = nc host:80 , unit=line ", 3)
        assert d == Device("run", "out", "command", {"cmd": "nc host:80", "unit": "line"})
        assert d.spec == "run:out:command:cmd=nc host:80,unit=line"
        with pytest.raises(ConfigError) as e:
            parse_device_spec("run:out:command:cmd", 3)
        assert e.value.field == "devices[3].options"


def test_on_a_terminal_the_interview_takes_a_join_token(tmp_path):
    from oneos.security import credentials

    network = credentials.generate("oneos-admin")
    token = credentials.token(credentials.issue(network, "rt-kitchen"), "mqtt://10.0.0.1:1883")
    answers = lines("oneos1.garbage", token, "", "", "", "", "", "", "", "no")
    status, saved, out = configure_with(tmp_path, answers, stdin_type=TTY)
    assert status == 0, out
    assert "damaged" in out and "rt-kitchen (given on the command line or the join token)" in out
    assert (saved["pubsub"], saved["id"]) == ("mqtt://10.0.0.1:1883", "rt-kitchen")
    creds = credentials.load(tmp_path)
    assert creds.username == "rt-kitchen" and not creds.secret
