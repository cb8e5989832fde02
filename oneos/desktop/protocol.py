"""The desktop's websocket messages: parsing and checking what the browser sends, encoding what it gets.

Pure: no I/O, no Twisted.  docs/desktop.md ("Websocket protocol") is the
contract; this module is its executable form:

* :data:`OPS`, the operation table: each operation's arguments with their
  types, defaults and bounds.  :func:`parse_request` turns a text frame into
  a :class:`Request` whose ``args`` hold every argument of the operation
  (defaults filled in), or raises :class:`BadRequest` (kind ``EINVAL``)
  saying what is wrong and carrying the frame's ``id`` when it had a usable
  one, so the reply can repeat it;
* :func:`parse_channel` for ``sub.open``/``sub.close`` (``runtimes``,
  ``agents``, ``pipes``, ``output:AGENT_ID``, ``device:RUNTIME/NAME``);
* the binary frames: a terminal's ``[N][bytes]`` (:func:`parse_term_frame`,
  :func:`term_frame`; N is 0..254) and a device's video frame
  ``[0xFF][n][channel name, n bytes][JPEG]`` (:func:`device_frame`,
  :func:`parse_device_frame`), told apart by the first byte;
* the replies and events (:func:`ok`, :func:`fail`, :func:`event`) and the
  ``{kind, message}`` of an error (:func:`error_body`);
* what the websocket's handshake checks: the session cookie
  (:func:`cookie_value`) and that the ``Origin`` is the page's own
  (:func:`same_origin`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from oneos.errors import OneOSError, describe, error_kind

#: Largest text frame the browser may send (and the websocket's message limit).
MAX_MESSAGE = 1024 * 1024
#: Largest file ``fs.read`` returns (larger ones are downloaded).
MAX_READ = 4 * 1024 * 1024
#: Longest string argument other than ``fs.write``'s text and ``proc.stdin``'s data.
MAX_STRING = 4096
#: Most items in a list argument (a program's arguments, tags).
MAX_ITEMS = 1024
#: Terminal numbers on one websocket: 0..MAX_TERM (the first byte of a binary frame; 255 tags a device frame).
MAX_TERM = 254
#: The first byte of a binary frame that carries a device's video frame, not terminal bytes.
DEVICE_FRAME = 0xFF
#: Largest text ``device.write`` sends to a device in one request.
MAX_DEVICE_WRITE = 64 * 1024
#: Largest terminal, in columns or rows.
MAX_TERM_SIZE = 1000

#: The kind of every refusal of a malformed frame.
EINVAL = "EINVAL"


class DesktopError(OneOSError):
    """A refusal the desktop itself makes (a bad frame, a file too large to edit ...); *kind* is its wire kind."""

    def __init__(self, message: str, kind: str = EINVAL) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = kind


class BadRequest(DesktopError):
    """A frame that is not a request this protocol knows; ``id`` is the frame's id when it had a usable one."""

    def __init__(self, message: str, request_id: int | float | None = None) -> None:
        super().__init__(message, EINVAL)
        self.request_id = request_id


# -- the operation table ------------------------------------------------------------------------------

STRING, BOOLEAN, INTEGER, NUMBER, STRINGS = "string", "boolean", "integer", "number", "strings"


@dataclass(frozen=True)
class Arg:
    """One argument of an operation.

    *limit*: the longest string, the most items of a list; for an integer
    the range is ``low..high``.  A *nullable* argument may be ``null``
    (its default then stands for it).
    """

    name: str
    type: str
    required: bool = False
    default: Any = None
    nullable: bool = False
    limit: int = MAX_STRING
    low: int = 0
    high: int = 0
    #: a string that may not be empty
    nonempty: bool = False

    def check(self, op: str, value: Any) -> Any:
        """*value* if it is what this argument takes; :class:`DesktopError` (EINVAL) naming it otherwise."""
        if value is None:
            if self.nullable:
                return self.default
            raise DesktopError(f"{op}: argument {self.name!r} must be {self._what()}, not null")
        if self.type == STRING:
            if not isinstance(value, str):
                raise self._wrong(op, value)
            if len(value) > self.limit:
                raise DesktopError(f"{op}: argument {self.name!r} is too long (at most {self.limit} characters)")
            if self.nonempty and not value:
                raise DesktopError(f"{op}: argument {self.name!r} may not be empty")
            return value
        if self.type == BOOLEAN:
            if not isinstance(value, bool):
                raise self._wrong(op, value)
            return value
        if self.type == INTEGER:
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value != int(value)
            ):
                raise self._wrong(op, value)
            if not self.low <= value <= self.high:
                raise DesktopError(f"{op}: argument {self.name!r} must be from {self.low} to {self.high}")
            return int(value)
        if self.type == NUMBER:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise self._wrong(op, value)
            return value
        if self.type == STRINGS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise self._wrong(op, value)
            if len(value) > MAX_ITEMS or any(len(v) > self.limit for v in value):
                raise DesktopError(f"{op}: argument {self.name!r} is too long")
            return list(value)
        raise AssertionError(f"unknown argument type {self.type!r}")  # pragma: no cover (the table is ours)

    def _what(self) -> str:
        return {
            STRING: "a string",
            BOOLEAN: "true or false",
            INTEGER: "an integer",
            NUMBER: "a number",
            STRINGS: "a list of strings",
        }[self.type]

    def _wrong(self, op: str, value: Any) -> DesktopError:
        return DesktopError(f"{op}: argument {self.name!r} must be {self._what()}, not {_json_type(value)}")


def _path(name: str = "path") -> Arg:
    return Arg(name, STRING, required=True, nonempty=True)


def _agent_id() -> Arg:
    return Arg("id", STRING, required=True, nonempty=True, limit=128)


def _term() -> Arg:
    return Arg("term", INTEGER, required=True, low=0, high=MAX_TERM)


def _size(name: str, default: int) -> Arg:
    return Arg(name, INTEGER, default=default, low=1, high=MAX_TERM_SIZE)


#: Every operation and its arguments (docs/desktop.md, "Operations").
OPS: dict[str, tuple[Arg, ...]] = {
    "session.whoami": (),
    "runtimes.list": (),
    "fs.list": (_path(),),
    "fs.stat": (_path(),),
    "fs.read": (_path(),),
    "fs.write": (
        _path(),
        Arg("text", STRING, required=True, limit=MAX_MESSAGE),
        Arg("mtime", NUMBER, nullable=True),
    ),
    "fs.mkdir": (_path(),),
    "fs.rename": (_path("src"), _path("dst")),
    "fs.remove": (_path(), Arg("recursive", BOOLEAN, default=False, nullable=True)),
    "proc.list": (Arg("all", BOOLEAN, default=False, nullable=True),),
    "proc.run": (
        Arg("program", STRING, required=True, nonempty=True),
        Arg("args", STRINGS, default=[], nullable=True),
        Arg("runtime", STRING, nullable=True, limit=256),
        Arg("tags", STRINGS, default=[], nullable=True, limit=256),
    ),
    "proc.pipeline": (Arg("text", STRING, required=True, nonempty=True, limit=MAX_STRING * 4),),
    "proc.kill": (_agent_id(),),
    "proc.pause": (_agent_id(),),
    "proc.resume": (_agent_id(),),
    "proc.stdin": (
        _agent_id(),
        Arg("data", STRING, default="", nullable=True, limit=MAX_MESSAGE),
        Arg("eof", BOOLEAN, default=False, nullable=True),
    ),
    "pipes.list": (),
    "devices.list": (),
    "device.write": (
        Arg("runtime", STRING, required=True, nonempty=True, limit=64),
        Arg("name", STRING, required=True, nonempty=True, limit=64),
        Arg("data", STRING, required=True, limit=MAX_DEVICE_WRITE),
    ),
    "sub.open": (Arg("channel", STRING, required=True, limit=200),),
    "sub.close": (Arg("channel", STRING, required=True, limit=200),),
    "term.open": (
        _size("cols", 80),
        _size("rows", 24),
        Arg("resume", STRING, nullable=True, limit=200),
    ),
    "term.resize": (_term(), _size("cols", 80), _size("rows", 24)),
    "term.close": (_term(),),
}


@dataclass(frozen=True)
class Request:
    """A checked request: its id, operation, and every argument of the operation (defaults filled in)."""

    id: int | float
    op: str
    args: Mapping[str, Any] = field(default_factory=dict)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(payload: bytes | str) -> Any:
    """Strict JSON (no NaN or Infinity); :class:`BadRequest` if it is not."""
    try:
        text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"the frame is not JSON ({str(e)[:100]})") from None


def parse_request(payload: bytes | str) -> Request:
    """A text frame as a :class:`Request`; :class:`BadRequest` (kind EINVAL) says what is wrong with it."""
    body = loads(payload)
    if not isinstance(body, dict):
        raise BadRequest(f"a request is a JSON object, not {_json_type(body)}")
    request_id = body.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, (int, float)) or not math.isfinite(request_id):
        raise BadRequest("a request needs a numeric 'id'")
    op = body.get("op")
    if not isinstance(op, str) or op not in OPS:
        shown = repr(op[:60]) if isinstance(op, str) else _json_type(op)
        raise BadRequest(f"unknown operation {shown}", request_id)
    given = body.get("args")
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise BadRequest(f"{op}: 'args' must be an object, not {_json_type(given)}", request_id)
    schema = OPS[op]
    known = {arg.name for arg in schema}
    extra = sorted(name for name in given if name not in known)
    if extra:
        raise BadRequest(f"{op} takes no argument {extra[0][:60]!r}", request_id)
    args: dict[str, Any] = {}
    for arg in schema:
        if arg.name not in given:
            if arg.required:
                raise BadRequest(f"{op} needs argument {arg.name!r}", request_id)
            args[arg.name] = arg.default
            continue
        try:
            args[arg.name] = arg.check(op, given[arg.name])
        except DesktopError as e:
            raise BadRequest(str(e), request_id) from None
    return Request(request_id, op, args)


# -- channels ---------------------------------------------------------------------------------------------

RUNTIMES, AGENTS, PIPES, OUTPUT, DEVICE = "runtimes", "agents", "pipes", "output", "device"
#: an agent id as runtimes make them (and nothing a topic or a path could be confused by)
AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: a runtime id or a device name, as the configuration allows them
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Channel:
    """A channel the browser may subscribe to; ``agent`` for ``output:AGENT_ID``, ``runtime`` and ``device``
    for ``device:RUNTIME/NAME``."""

    kind: str
    agent: str = ""
    runtime: str = ""
    device: str = ""

    @property
    def name(self) -> str:
        if self.kind == OUTPUT:
            return f"{OUTPUT}:{self.agent}"
        if self.kind == DEVICE:
            return f"{DEVICE}:{self.runtime}/{self.device}"
        return self.kind


def parse_channel(name: str) -> Channel:
    """The channel *name* names; :class:`DesktopError` (EINVAL) for one that does not exist."""
    if name in (RUNTIMES, AGENTS, PIPES):
        return Channel(name)
    head, colon, rest = name.partition(":")
    if head == OUTPUT and colon and AGENT_ID.fullmatch(rest):
        return Channel(OUTPUT, rest)
    if head == DEVICE and colon:
        runtime, slash, device = rest.partition("/")
        if slash and NAME.fullmatch(runtime) and NAME.fullmatch(device):
            return Channel(DEVICE, runtime=runtime, device=device)
    raise DesktopError(f"unknown channel {name[:80]!r} (runtimes, agents, pipes, output:AGENT_ID, device:RUNTIME/NAME)")


# -- terminal frames -----------------------------------------------------------------------------------


def parse_term_frame(payload: bytes) -> tuple[int, bytes]:
    """A binary frame ``[N][bytes]``: (terminal number, the bytes); :class:`DesktopError` if it is empty."""
    if not payload:
        raise DesktopError("an empty binary frame (a terminal frame is [N][bytes])")
    return payload[0], payload[1:]


def term_frame(term: int, data: bytes) -> bytes:
    """The binary frame carrying *data* for terminal *term*."""
    if not 0 <= term <= MAX_TERM:
        raise ValueError(f"terminal number {term} is out of range")
    return bytes((term,)) + data


def device_frame(channel: str, frame: bytes) -> bytes:
    """The binary frame carrying one video *frame* (a whole JPEG) of device channel *channel*.

    ``[0xFF][n][the channel's name, n bytes of UTF-8][the JPEG]``: the page
    tells it from a terminal's frame by the first byte and hands it to the
    channel's subscribers as they receive its text events.
    """
    name = channel.encode("utf-8")
    if len(name) > 255:
        raise ValueError(f"channel name {channel[:80]!r} is too long for a device frame")
    return bytes((DEVICE_FRAME, len(name))) + name + frame


def parse_device_frame(payload: bytes) -> tuple[str, bytes]:
    """(channel, frame) of a :func:`device_frame`; :class:`DesktopError` if it is not one."""
    if len(payload) < 2 or payload[0] != DEVICE_FRAME or len(payload) < 2 + payload[1]:
        raise DesktopError("not a device frame ([0xFF][n][channel][frame])")
    n = payload[1]
    try:
        return payload[2 : 2 + n].decode("utf-8"), payload[2 + n :]
    except UnicodeDecodeError:
        raise DesktopError("a device frame's channel name is not UTF-8") from None


# -- replies and events --------------------------------------------------------------------------------


def dumps(body: Any) -> bytes:
    """JSON as a text frame's bytes: UTF-8, or ASCII escapes when the text holds what UTF-8 cannot carry."""
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (a name that came to us as JSON escapes): keep it escaped
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode("ascii")


def ok(request_id: int | float, result: Any) -> bytes:
    return dumps({"id": request_id, "ok": True, "result": result})


def fail(request_id: int | float | None, kind: str, message: str) -> bytes:
    return dumps({"id": request_id, "ok": False, "error": {"kind": kind, "message": message}})


def error_body(error: BaseException) -> dict[str, str]:
    """``{kind, message}`` for an error: a OneOS error's wire kind and plain message."""
    return {"kind": error_kind(error), "message": describe(error)}


def fail_with(request_id: int | float | None, error: BaseException) -> bytes:
    body = error_body(error)
    return fail(request_id, body["kind"], body["message"])


def event(channel: str, body: Mapping[str, Any]) -> bytes:
    return dumps({"channel": channel, "event": dict(body)})


# -- the handshake ---------------------------------------------------------------------------------------


def cookie_value(header: str | None, name: str) -> str | None:
    """The value of cookie *name* in a ``Cookie`` header (the first one), or None.

    Lenient as browsers are: pieces without ``=`` are skipped, spaces
    around names and values dropped, one pair of double quotes removed.
    """
    if not header:
        return None
    for piece in header.split(";"):
        key, eq, value = piece.partition("=")
        if eq and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value or None
    return None


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_port(scheme: str, netloc: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.username is not None or parts.password is not None:
        return None
    if parts.path or parts.query or parts.fragment:
        return None
    return parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


def same_origin(origin: str | None, host: str | None, tls: bool) -> bool:
    """Whether the ``Origin`` header *origin* is the page's own origin: the scheme the desktop serves
    (``https`` under TLS, else ``http``) and the ``Host`` header the request was made to.

    A missing, ``null`` or malformed Origin, or a missing Host, is not.
    """
    if not origin or not host:
        return False
    scheme = "https" if tls else "http"
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return False
    if parts.scheme.lower() != scheme or parts.path not in ("", "/") or parts.query or parts.fragment:
        return False
    mine = _host_port(scheme, host.strip())
    theirs = _host_port(scheme, parts.netloc)
    return mine is not None and mine == theirs
