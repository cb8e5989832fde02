"""The JSON envelope of every OneOS message on the wire.

Every message is a JSON object with ``v`` (wire version) and ``type``.
Anything else arriving on a OneOS topic — not JSON, not an object, another
version, a foreign type — raises :class:`MalformedMessage`; receivers log it
and drop it so a stray publisher can never crash a service.
"""

from __future__ import annotations

import json
from typing import Any

from oneos import WIRE_VERSION

#: Largest message we decode; larger payloads are dropped unread.
MAX_MESSAGE = 1024 * 1024


class MalformedMessage(ValueError):
    """A payload on a OneOS topic is not a valid OneOS message."""


def encode(kind: str, **fields: Any) -> bytes:
    """Serialise a message of type *kind* with *fields*."""
    body = {"v": WIRE_VERSION, "type": kind}
    body.update(fields)
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8")


def decode(payload: bytes, *expected: str) -> dict[str, Any]:
    """Parse *payload*; when *expected* types are given, require one of them."""
    if len(payload) > MAX_MESSAGE:
        raise MalformedMessage(f"message of {len(payload)} bytes is larger than {MAX_MESSAGE}")
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise MalformedMessage(f"not JSON: {e}") from None
    if not isinstance(body, dict):
        raise MalformedMessage("not a JSON object")
    if body.get("v") != WIRE_VERSION:
        raise MalformedMessage(f"wire version {body.get('v')!r}, expected {WIRE_VERSION}")
    kind = body.get("type")
    if not isinstance(kind, str):
        raise MalformedMessage("no message type")
    if expected and kind not in expected:
        raise MalformedMessage(f"message type {kind!r}, expected one of {', '.join(expected)}")
    return body


def require(body: dict[str, Any], field: str, kind: type | tuple[type, ...]) -> Any:
    """Return ``body[field]`` if it has type *kind*, else raise MalformedMessage."""
    value = body.get(field)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MalformedMessage(f"field {field!r} missing or of the wrong type")
    return value
