"""Typed errors shared by every part of OneOS.

Services raise these; the edges (CLI, shell, desktop) turn them into one plain
line with :func:`describe` instead of a traceback.

It also holds the one table of *wire kinds*: an error raised by an RPC
handler travels as ``{kind, message}`` (:func:`error_kind` names it), and the
caller rebuilds it with the factory registered for that kind
(:func:`register_error`, :func:`rebuild_error`).  Each kind is registered
once, next to its class: the kinds of this module below, the POSIX codes in
:mod:`oneos.fs.errors`, the agents' in :mod:`oneos.agents.info`, the
scheduler's in :mod:`oneos.scheduler.placement`.  A kind nobody registered
arrives as :class:`RPCError` with that ``kind``.
"""

from __future__ import annotations

from collections.abc import Callable


class OneOSError(Exception):
    """Base of every error OneOS means to show a user as a plain message."""


class ConfigError(OneOSError):
    """A configuration value is invalid; the message names the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"config field {field!r}: {problem}")
        self.field = field
        self.problem = problem


class PubSubUnavailable(OneOSError):
    """The publish/subscribe network cannot be reached."""


class RPCError(OneOSError):
    """A remote procedure call failed on the far side."""

    def __init__(self, message: str, kind: str = "RPCError") -> None:
        super().__init__(message)
        self.kind = kind


class RPCTimeout(RPCError):
    """Nobody answered a remote procedure call in time."""

    def __init__(self, target: str, method: str, timeout: float) -> None:
        super().__init__(
            f"no answer from {target!r} to {method!r} within {timeout:g}s "
            "(is a runtime hosting it running and connected?)",
            kind="RPCTimeout",
        )
        self.target = target
        self.method = method
        self.timeout = timeout


class KernelUnavailable(RPCError):
    """No runtime leads the kernel right now (an election is under way, or no kernel runtime is alive)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="KernelUnavailable")


class StaleEpoch(RPCError):
    """A command from an older leadership term: a newer leader has taken over since."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="StaleEpoch")


class NotPermitted(RPCError):
    """The caller's identity may not make this request (a client identity asking a runtime-only method)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="NotPermitted")


class DuplicateRuntimeId(OneOSError):
    """Another live runtime on the network already uses this runtime id."""


# -- errors on the wire ------------------------------------------------------------------------

#: kind -> callable(message) building the typed error on the caller's side
WIRE_ERRORS: dict[str, Callable[[str], Exception]] = {}


def register_error(kind: str, factory: Callable[[str], Exception]) -> None:
    """Make errors of *kind* raised remotely arrive as ``factory(message)``.

    A kind is registered once: a second factory for it is a programming
    error (two classes claiming one name) and raises ValueError.
    """
    known = WIRE_ERRORS.get(kind)
    if known is not None and known is not factory:
        raise ValueError(f"wire error kind {kind!r} is already registered ({known!r})")
    WIRE_ERRORS[kind] = factory


def error_kind(error: BaseException) -> str:
    """The wire name of *error*: its ``code``/``kind`` attribute or class name."""
    for attr in ("code", "kind"):
        value = getattr(error, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(error).__name__


def rebuild_error(kind: str, message: str) -> Exception:
    """The error a caller raises for a remote ``{kind, message}``: the registered type, else RPCError."""
    factory = WIRE_ERRORS.get(kind)
    return factory(message) if factory is not None else RPCError(message, kind=kind)


for _cls in (KernelUnavailable, StaleEpoch, NotPermitted):
    register_error(_cls.__name__, _cls)


def describe(error: BaseException) -> str:
    """Return one plain line for *error*, fit to show a user."""
    if isinstance(error, OneOSError):
        return str(error)
    if isinstance(error, ConnectionRefusedError) or type(error).__name__ == "ConnectionRefusedError":
        return f"connection refused: {error}"
    return f"{type(error).__name__}: {error}"
