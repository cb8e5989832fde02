"""Typed errors shared by every part of OneOS.

Services raise these; the edges (CLI, shell, desktop) turn them into one plain
line with :func:`describe` instead of a traceback.
"""

from __future__ import annotations


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


def describe(error: BaseException) -> str:
    """Return one plain line for *error*, fit to show a user."""
    if isinstance(error, OneOSError):
        return str(error)
    if isinstance(error, ConnectionRefusedError) or type(error).__name__ == "ConnectionRefusedError":
        return f"connection refused: {error}"
    return f"{type(error).__name__}: {error}"
