"""The desktop's websocket messages (oneos.desktop.protocol): parsing, checking, encoding; no I/O.

The frame parser meets whatever a browser (or anyone holding a session
cookie) sends, so besides the examples it is fuzzed with hypothesis: any
text, any JSON value, any request-shaped object with wrong types either
parses into a request whose arguments have the table's types, or is
refused with a BadRequest of kind EINVAL -- never another exception.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oneos.desktop import protocol as wire
from oneos.desktop.protocol import (
    AGENTS,
    BOOLEAN,
    INTEGER,
    NUMBER,
    OPS,
    OUTPUT,
    RUNTIMES,
    STRING,
    STRINGS,
    BadRequest,
    Channel,
    DesktopError,
    cookie_value,
    parse_channel,
    parse_request,
    parse_term_frame,
    same_origin,
    term_frame,
)
from oneos.errors import RPCTimeout
from oneos.fs.errors import NotFound


def frame(**body) -> bytes:
    return json.dumps(body).encode()


def refused(payload: bytes | str) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        parse_request(payload)
    assert caught.value.kind == "EINVAL"
    return caught.value


# -- requests ----------------------------------------------------------------------------------------


def test_a_request_parses_with_its_arguments_and_the_defaults_filled_in():
    request = parse_request(frame(id=7, op="fs.list", args={"path": "/home/ann"}))
    assert (request.id, request.op, dict(request.args)) == (7, "fs.list", {"path": "/home/ann"})
    request = parse_request(frame(id=8, op="fs.remove", args={"path": "/x"}))
    assert request.args == {"path": "/x", "recursive": False}
    request = parse_request(frame(id=9, op="proc.run", args={"program": "/bin/gen.py"}))
    assert request.args == {"program": "/bin/gen.py", "args": [], "runtime": None, "tags": []}
    request = parse_request(frame(id=10, op="term.open", args={}))
    assert request.args == {"cols": 80, "rows": 24, "resume": None}


def test_an_operation_without_arguments_may_omit_args_or_send_null():
    assert parse_request(frame(id=1, op="session.whoami")).args == {}
    assert parse_request(frame(id=1, op="session.whoami", args=None)).args == {}
    assert parse_request(b'{"id": 1.5, "op": "runtimes.list", "args": {}}').id == 1.5


def test_nullable_arguments_take_their_default():
    request = parse_request(frame(id=1, op="fs.write", args={"path": "/f", "text": "x", "mtime": None}))
    assert request.args["mtime"] is None
    request = parse_request(frame(id=1, op="proc.run", args={"program": "p", "args": None, "runtime": None}))
    assert request.args["args"] == [] and request.args["runtime"] is None


@pytest.mark.parametrize(
    "payload, expected_id, words",
    [
        (b"not json", None, "not JSON"),
        (b"\xff\xfe", None, "not JSON"),
        (b"[1, 2]", None, "JSON object"),
        (b'"text"', None, "JSON object"),
        (b"null", None, "JSON object"),
        (b'{"op": "fs.list"}', None, "numeric 'id'"),
        (b'{"id": "7", "op": "fs.list"}', None, "numeric 'id'"),
        (b'{"id": true, "op": "fs.list"}', None, "numeric 'id'"),
        (b'{"id": NaN, "op": "fs.list"}', None, "not JSON"),
        (b'{"id": Infinity, "op": "fs.list"}', None, "not JSON"),
        (b'{"id": 1e400, "op": "fs.list"}', None, "numeric 'id'"),
        (b'{"id": 3, "op": "fs.explode"}', 3, "unknown operation"),
        (b'{"id": 3, "op": 12}', 3, "unknown operation"),
        (b'{"id": 3}', 3, "unknown operation"),
        (b'{"id": 4, "op": "fs.list", "args": []}', 4, "'args' must be an object"),
        (b'{"id": 5, "op": "fs.list", "args": {}}', 5, "needs argument 'path'"),
        (b'{"id": 6, "op": "fs.list", "args": {"path": 3}}', 6, "must be a string, not a number"),
        (b'{"id": 6, "op": "fs.list", "args": {"path": ""}}', 6, "may not be empty"),
        (b'{"id": 6, "op": "fs.list", "args": {"path": null}}', 6, "not null"),
        (b'{"id": 7, "op": "fs.list", "args": {"path": "/", "extra": 1}}', 7, "no argument 'extra'"),
        (b'{"id": 8, "op": "fs.remove", "args": {"path": "/", "recursive": 1}}', 8, "true or false"),
        (b'{"id": 9, "op": "proc.run", "args": {"program": "p", "args": ["a", 2]}}', 9, "list of strings"),
        (b'{"id": 9, "op": "proc.run", "args": {"program": "p", "args": "a b"}}', 9, "list of strings"),
        (b'{"id": 10, "op": "term.resize", "args": {"term": 255, "cols": 80, "rows": 24}}', 10, "from 0 to 254"),
        (b'{"id": 10, "op": "term.resize", "args": {"term": 1.5, "cols": 80, "rows": 24}}', 10, "an integer"),
        (b'{"id": 10, "op": "term.open", "args": {"cols": 0}}', 10, "from 1 to 1000"),
        (b'{"id": 10, "op": "term.open", "args": {"cols": 1e300}}', 10, "from 1 to 1000"),
        (b'{"id": 11, "op": "fs.write", "args": {"path": "/f", "text": "x", "mtime": "yesterday"}}', 11, "a number"),
    ],
)
def test_malformed_frames_are_refused_with_einval_and_the_id_when_there_was_one(payload, expected_id, words):
    error = refused(payload)
    assert error.request_id == expected_id
    assert words in str(error)


def test_a_deeply_nested_frame_is_refused_not_a_crash():
    error = refused("[" * 100_000 + "]" * 100_000)
    assert error.request_id is None


def test_overlong_strings_and_lists_are_refused():
    refused(frame(id=1, op="fs.list", args={"path": "/" + "a" * wire.MAX_STRING}))
    refused(frame(id=1, op="proc.run", args={"program": "p", "args": ["a"] * (wire.MAX_ITEMS + 1)}))
    refused(frame(id=1, op="sub.open", args={"channel": "x" * 1000}))
    # the editor's text may be as long as a frame
    assert parse_request(frame(id=1, op="fs.write", args={"path": "/f", "text": "a" * 100_000, "mtime": 1.0}))


def test_every_operation_of_the_document_is_in_the_table():
    documented = {
        "session.whoami", "runtimes.list", "fs.list", "fs.stat", "fs.read", "fs.write", "fs.mkdir", "fs.rename",
        "fs.remove", "proc.list", "proc.run", "proc.pipeline", "proc.kill", "proc.pause", "proc.resume",
        "proc.stdin", "pipes.list", "sub.open", "sub.close", "term.open", "term.resize", "term.close",
        "devices.list", "device.write",
    }  # fmt: skip
    assert set(OPS) == documented


# -- fuzzing the parser -----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


def _check_parsed(request: wire.Request) -> None:
    assert request.op in OPS
    assert isinstance(request.id, (int, float)) and not isinstance(request.id, bool) and math.isfinite(request.id)
    schema = {arg.name: arg for arg in OPS[request.op]}
    assert set(request.args) == set(schema)
    for name, value in request.args.items():
        arg = schema[name]
        if value is None:
            assert not arg.required
            continue
        expected = {STRING: str, BOOLEAN: bool, INTEGER: int, NUMBER: (int, float), STRINGS: list}[arg.type]
        assert isinstance(value, expected)
        if arg.type == INTEGER:
            assert arg.low <= value <= arg.high


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_any_bytes_parse_or_are_refused_with_einval(data):
    try:
        _check_parsed(parse_request(data))
    except BadRequest as e:
        assert e.kind == "EINVAL"


@settings(max_examples=200)
@given(json_values)
def test_any_json_value_parses_or_is_refused_with_einval(value):
    try:
        _check_parsed(parse_request(json.dumps(value)))
    except BadRequest as e:
        assert e.kind == "EINVAL"


@settings(max_examples=100)
@given(
    st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), json_values),
    st.sampled_from(sorted(OPS) + ["fs.nope", ""]),
    st.one_of(st.none(), json_values, st.dictionaries(st.sampled_from(["path", "id", "text", "term", "cols",
              "rows", "program", "args", "channel", "mtime", "eof", "data", "all", "recursive", "src", "dst",
              "tags", "runtime", "resume", "x"]), json_values, max_size=5)),
)  # fmt: skip
def test_request_shaped_objects_with_any_arguments_parse_or_are_refused(request_id, op, args):
    body = {"id": request_id, "op": op, "args": args}
    try:
        request = parse_request(json.dumps(body))
    except BadRequest as e:
        assert e.kind == "EINVAL"
        if e.request_id is not None:  # the id it repeats is the frame's own, and a usable one
            assert e.request_id == request_id and not isinstance(request_id, bool)
        return
    _check_parsed(request)
    assert request.id == request_id


# -- channels ---------------------------------------------------------------------------------------


def test_channels():
    assert parse_channel("runtimes") == Channel(RUNTIMES)
    assert parse_channel("agents") == Channel(AGENTS)
    assert parse_channel("output:a1b2c3d4") == Channel(OUTPUT, "a1b2c3d4")
    assert parse_channel("output:a1b2c3d4").name == "output:a1b2c3d4"
    for bad in ("", "nope", "output:", "output:../x", "output:a/b", "output:+", "output:#", "runtimes:x", "OUTPUT:a"):
        with pytest.raises(DesktopError) as caught:
            parse_channel(bad)
        assert caught.value.kind == "EINVAL"


# -- terminal frames --------------------------------------------------------------------------------


@given(st.integers(0, 254), st.binary(max_size=100))
def test_terminal_frames_round_trip(term, data):
    assert parse_term_frame(term_frame(term, data)) == (term, data)


def test_terminal_frames_are_checked():
    with pytest.raises(DesktopError):
        parse_term_frame(b"")
    with pytest.raises(ValueError):
        term_frame(255, b"x")  # 255 tags a device's frame


# -- device channels and frames ------------------------------------------------------------------------


def test_device_channels():
    assert parse_channel("device:rt-2/cam0") == Channel(wire.DEVICE, runtime="rt-2", device="cam0")
    assert parse_channel("device:rt-2/cam0").name == "device:rt-2/cam0"
    for bad in ("device:", "device:rt-2", "device:rt-2/", "device:/cam0", "device:rt/a/b", "device:rt/../x",
                "device:rt/" + "x" * 65, "device:rt 2/cam0", "DEVICE:rt/cam0"):  # fmt: skip
        with pytest.raises(DesktopError) as caught:
            parse_channel(bad)
        assert caught.value.kind == "EINVAL"


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True), st.binary(max_size=200))
def test_device_frames_round_trip_and_are_not_terminal_frames(name, jpeg):
    channel = f"device:{name}/{name}"
    payload = wire.device_frame(channel, jpeg)
    assert payload[0] == wire.DEVICE_FRAME > wire.MAX_TERM
    assert wire.parse_device_frame(payload) == (channel, jpeg)


def test_malformed_device_frames_are_refused():
    for bad in (b"", b"\xff", b"\x01\x00", b"\xff\x05abc", b"\xff\x02\xff\xfe"):
        with pytest.raises(DesktopError):
            wire.parse_device_frame(bad)


# -- replies and events ----------------------------------------------------------------------------------


def test_replies_and_events_encode_as_the_document_shows():
    assert json.loads(wire.ok(7, [1])) == {"id": 7, "ok": True, "result": [1]}
    assert json.loads(wire.fail(None, "EINVAL", "bad")) == {
        "id": None,
        "ok": False,
        "error": {"kind": "EINVAL", "message": "bad"},
    }
    assert json.loads(wire.event("pipes", {"pipes": []})) == {"channel": "pipes", "event": {"pipes": []}}


def test_typed_errors_become_kind_and_message():
    assert wire.error_body(NotFound("/home/ann")) == {"kind": "ENOENT", "message": str(NotFound("/home/ann"))}
    timeout = RPCTimeout("fs", "listdir", 5)
    assert wire.error_body(timeout)["kind"] == "RPCTimeout"
    assert json.loads(wire.fail_with(3, DesktopError("too big", "EFBIG")))["error"] == {
        "kind": "EFBIG",
        "message": "too big",
    }


def test_text_is_sent_as_utf8_and_what_utf8_cannot_carry_as_escapes():
    assert wire.dumps({"t": "héllo"}) == '{"t":"héllo"}'.encode()
    lone = wire.dumps({"t": "a\ud800b"})
    lone.decode("ascii")  # escaped: still valid UTF-8 for the browser
    assert json.loads(lone) == {"t": "a\ud800b"}


# -- the handshake ---------------------------------------------------------------------------------------


def test_cookie_value():
    assert cookie_value("oneos_session=abc", "oneos_session") == "abc"
    assert cookie_value("a=1; oneos_session=abc; b=2", "oneos_session") == "abc"
    assert cookie_value('oneos_session="abc"', "oneos_session") == "abc"
    assert cookie_value("xoneos_session=abc", "oneos_session") is None
    assert cookie_value("oneos_session=", "oneos_session") is None
    assert cookie_value("garbage;;=;oneos_session", "oneos_session") is None
    assert cookie_value(None, "oneos_session") is None


@pytest.mark.parametrize(
    "origin, host, tls, same",
    [
        ("http://127.0.0.1:3000", "127.0.0.1:3000", False, True),
        ("http://LOCALHOST:3000", "localhost:3000", False, True),
        ("http://localhost", "localhost:80", False, True),
        ("https://desk.example", "desk.example:443", True, True),
        ("http://[::1]:3000", "[::1]:3000", False, True),
        ("https://127.0.0.1:3000", "127.0.0.1:3000", False, False),  # scheme
        ("http://127.0.0.1:3000", "127.0.0.1:3000", True, False),
        ("http://127.0.0.1:3001", "127.0.0.1:3000", False, False),  # port
        ("http://evil.example:3000", "127.0.0.1:3000", False, False),
        ("null", "127.0.0.1:3000", False, False),
        ("", "127.0.0.1:3000", False, False),
        (None, "127.0.0.1:3000", False, False),
        ("http://127.0.0.1:3000", None, False, False),
        ("http://127.0.0.1:3000/path", "127.0.0.1:3000", False, False),
        ("http://user@127.0.0.1:3000", "127.0.0.1:3000", False, False),
        ("http://127.0.0.1:99999", "127.0.0.1:99999", False, False),
        ("file://", "127.0.0.1", False, False),
        ("chrome-extension://abc", "abc", False, False),
    ],
)
def test_same_origin(origin, host, tls, same):
    assert same_origin(origin, host, tls) is same


@settings(max_examples=50)
@given(st.text(max_size=60), st.text(max_size=60), st.booleans())
def test_same_origin_never_raises(origin, host, tls):
    assert same_origin(origin, host, tls) in (True, False)
