"""What an agent is, as it crosses the wire: its info record and where its output goes.

Pure: no I/O, no Twisted.  Frozen types, each with ``encode()`` (to the
JSON value the wire carries today) and ``decode()`` (from it):

* :class:`AgentInfo`: the ``agent.status`` body a runtime keeps retained for
  each agent, what ``agent_spawn`` / ``scheduler.spawn`` return, what
  :func:`oneos.agents.watch.watch_agent` fires with once the agent ended.
  The keys are those of ``AgentProcess.info()`` (:mod:`oneos.agents.manager`
  builds it with this class); keys it does not know (the scheduler's restart
  bookkeeping: ``placement``, ``next_restart_at``, ``quarantined`` ...) are
  kept in :attr:`AgentInfo.extra` and encoded again unchanged.
* :class:`OutputTarget`: where a program's stdout or stderr goes, the string
  mini-language of ``spawn``'s ``stdout``/``stderr`` and of ``stdout_to``:
  ``attach``, ``discard``, ``file:PATH``, ``append:PATH``, ``pipe:AGENT@RUNTIME``
  (or ``pipe:HOST:PORT``).
* :class:`PipeInfo`: a row of the scheduler's ``pipes`` (who feeds whom,
  bytes carried, rate).

A malformed value is a :class:`MalformedAgentInfo` (wire kind ``EINVAL``),
never a KeyError or a TypeError.  The module also holds the agents' states
and :class:`AgentError`, with the wire kinds it registers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from oneos.errors import OneOSError, register_error

RUNNING, PAUSED, EXITED, KILLED, FAILED, LOST = "running", "paused", "exited", "killed", "failed", "lost"
ENDED = (EXITED, KILLED, FAILED, LOST)

ATTACH, DISCARD, FILE, APPEND, PIPE = "attach", "discard", "file", "append", "pipe"
#: the output target kinds; the last three carry a place after a colon
OUTPUT_KINDS = (ATTACH, DISCARD, FILE, APPEND, PIPE)


class AgentError(OneOSError):
    """An agent operation failed (unknown id, wrong state, not the caller's ...); *kind* is its wire kind."""

    def __init__(self, message: str, kind: str = "ESRCH") -> None:
        super().__init__(message)
        self.kind = kind
        self.code = kind


#: the agents' own wire kinds, registered here once (the POSIX codes they share with the file
#: system, EINVAL, EPERM, ENOENT, EACCES, are registered by oneos.fs.errors)
AGENT_KINDS = ("ESRCH", "EBUSY", "EPIPE")


def _agent_error(kind: str) -> Callable[[str], AgentError]:
    return lambda message: AgentError(message, kind)


for _kind in AGENT_KINDS:
    register_error(_kind, _agent_error(_kind))


class MalformedAgentInfo(OneOSError):
    """An agent record or an output target that does not say what it must (wrong type, missing id, unknown kind)."""

    code = "EINVAL"
    kind = "EINVAL"


class BadOutputTarget(MalformedAgentInfo):
    """An output target that is none of attach, discard, file:PATH, append:PATH, pipe:WHERE."""


@dataclass(frozen=True)
class OutputTarget:
    """Where one output stream of a program goes."""

    kind: str = ATTACH
    #: file/append: the OneOS path; pipe: where the stream goes (``AGENT@RUNTIME``, or ``HOST:PORT``)
    where: str = ""

    def __post_init__(self) -> None:
        if self.kind not in OUTPUT_KINDS:
            raise BadOutputTarget(f"unknown output target kind {self.kind!r} ({', '.join(OUTPUT_KINDS)})")
        if self.kind in (ATTACH, DISCARD) and self.where:
            raise BadOutputTarget(f"output target {self.kind} takes no place ({self.where!r})")
        if self.kind not in (ATTACH, DISCARD) and not self.where:
            raise BadOutputTarget(f"output target {self.kind} needs a place ({self.kind}:...)")

    @classmethod
    def attach(cls) -> OutputTarget:
        """Held until a reader attaches (``agent_attach``)."""
        return cls(ATTACH)

    @classmethod
    def discard(cls) -> OutputTarget:
        return cls(DISCARD)

    @classmethod
    def file(cls, path: str, append: bool = False) -> OutputTarget:
        """A OneOS file, written by the program's runtime (``append``: added to its end)."""
        return cls(APPEND if append else FILE, path)

    @classmethod
    def pipe(cls, to: str) -> OutputTarget:
        """Into another agent's stdin (``AGENT@RUNTIME``) or a stream address (``HOST:PORT``)."""
        return cls(PIPE, to)

    @property
    def is_file(self) -> bool:
        return self.kind in (FILE, APPEND)

    @property
    def append(self) -> bool:
        return self.kind == APPEND

    def encode(self) -> str:
        return f"{self.kind}:{self.where}" if self.where else self.kind

    @classmethod
    def decode(cls, text: object) -> OutputTarget:
        """Parse today's strings; raise :class:`BadOutputTarget` for anything else."""
        if not isinstance(text, str):
            raise BadOutputTarget(f"an output target is a string, not {type(text).__name__}")
        if text in (ATTACH, DISCARD):
            return cls(text)
        head, colon, rest = text.partition(":")
        if colon and head in (FILE, APPEND, PIPE) and rest:
            return cls(head, rest)
        raise BadOutputTarget(
            f"bad output target {text[:200]!r} (attach, discard, file:PATH, append:PATH or pipe:AGENT@RUNTIME)"
        )

    def __str__(self) -> str:
        return self.encode()


def _bad(key: str, want: str, value: object) -> MalformedAgentInfo:
    return MalformedAgentInfo(f"agent info field {key!r} must be {want}, not {type(value).__name__}")


def _str(body: Mapping[str, Any], key: str, default: str = "") -> str:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _bad(key, "a string", value)
    return value


def _int(body: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise _bad(key, "an integer", value)
    return int(value)


def _opt_int(body: Mapping[str, Any], key: str) -> int | None:
    return None if body.get(key) is None else _int(body, key)


def _float(body: Mapping[str, Any], key: str) -> float:
    value = body.get(key, 0.0)
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(key, "a number", value)
    return float(value)


#: the keys of an agent's record, in the order the wire has them (AgentProcess.info())
KEYS = (
    "id", "name", "program", "args", "runtime", "state", "pid", "exit_code", "signal", "reason", "cpu_percent",
    "memory_mb", "uptime", "restart", "job", "user", "incarnation", "history", "stdin_bytes", "stdout_bytes",
    "stderr_bytes", "stdout_to",
)  # fmt: skip


@dataclass(frozen=True)
class AgentInfo:
    """One agent's record: what ``ps`` shows, what ``spawn`` answers, what its retained status says."""

    id: str
    runtime: str
    name: str = ""
    program: str = ""
    args: tuple[str, ...] = ()
    state: str = ""
    pid: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    reason: str = ""
    cpu_percent: float = 0.0
    memory_mb: float = 0.0
    uptime: float = 0.0
    restart: str = "no"
    #: the job this agent is one incarnation of
    job: str = ""
    #: the OneOS user the program belongs to
    user: str = ""
    incarnation: int = 0
    #: the scheduler's restart bookkeeping (oneos.scheduler.restarts)
    history: Mapping[str, Any] = field(default_factory=dict)
    stdin_bytes: int = 0
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    stdout_to: OutputTarget = field(default_factory=OutputTarget)
    #: keys this version does not know, kept so that a record passes through unchanged
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    def encode(self) -> dict[str, Any]:
        """The JSON object the wire carries (every known key, then the unknown ones)."""
        return {
            "id": self.id,
            "name": self.name,
            "program": self.program,
            "args": list(self.args),
            "runtime": self.runtime,
            "state": self.state,
            "pid": self.pid,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "reason": self.reason,
            "cpu_percent": self.cpu_percent,
            "memory_mb": self.memory_mb,
            "uptime": self.uptime,
            "restart": self.restart,
            "job": self.job,
            "user": self.user,
            "incarnation": self.incarnation,
            "history": dict(self.history),
            "stdin_bytes": self.stdin_bytes,
            "stdout_bytes": self.stdout_bytes,
            "stderr_bytes": self.stderr_bytes,
            "stdout_to": self.stdout_to.encode(),
            **self.extra,
        }

    @classmethod
    def decode(cls, body: object) -> AgentInfo:
        """Read a record; only ``id`` and ``runtime`` are required (an older or partial record has defaults)."""
        if not isinstance(body, Mapping):
            raise MalformedAgentInfo(f"agent info must be an object, not {type(body).__name__}")
        for key in ("id", "runtime"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise MalformedAgentInfo(f"agent info needs {key!r} (a non-empty string)")
        args = body.get("args") or []
        if not isinstance(args, (list, tuple)) or not all(isinstance(a, str) for a in args):
            raise _bad("args", "a list of strings", args)
        history = body.get("history") or {}
        if not isinstance(history, Mapping):
            raise _bad("history", "an object", history)
        stdout_to = body.get("stdout_to")
        return cls(
            id=body["id"],
            runtime=body["runtime"],
            name=_str(body, "name"),
            program=_str(body, "program"),
            args=tuple(args),
            state=_str(body, "state"),
            pid=_opt_int(body, "pid"),
            exit_code=_opt_int(body, "exit_code"),
            signal=_opt_int(body, "signal"),
            reason=_str(body, "reason"),
            cpu_percent=_float(body, "cpu_percent"),
            memory_mb=_float(body, "memory_mb"),
            uptime=_float(body, "uptime"),
            restart=_str(body, "restart", "no"),
            job=_str(body, "job"),
            user=_str(body, "user"),
            incarnation=_int(body, "incarnation"),
            history=dict(history),
            stdin_bytes=_int(body, "stdin_bytes"),
            stdout_bytes=_int(body, "stdout_bytes"),
            stderr_bytes=_int(body, "stderr_bytes"),
            stdout_to=OutputTarget() if stdout_to is None else OutputTarget.decode(stdout_to),
            extra={k: v for k, v in body.items() if k not in KEYS and k not in ("v", "type")},
        )


def exit_status(info: AgentInfo | Mapping[str, Any]) -> int:
    """The shell-style status for an ended agent: its exit code, 128+N when killed by signal N, else 1."""
    if isinstance(info, AgentInfo):
        state, code, signal = info.state, info.exit_code, info.signal
    else:
        state, code, signal = info["state"], info.get("exit_code"), info.get("signal")
    if state == EXITED:
        return int(code or 0)
    if state == KILLED and signal:
        return 128 + int(signal)
    return 1


@dataclass(frozen=True)
class PipeInfo:
    """One pipe between two agents as ``pipes`` reports it: who feeds whom, and what it carried."""

    #: the writing agent, ``ID@RUNTIME``
    source: str
    #: the reading agent, ``ID@RUNTIME``
    target: str
    #: the writing agent's state (running, exited ...)
    state: str
    #: bytes carried so far
    bytes: int
    #: average rate over the writer's life
    mb_per_s: float

    def encode(self) -> dict[str, Any]:
        # "from"/"to" on the wire: what `oneos pipes --json` has always printed
        return {
            "from": self.source,
            "to": self.target,
            "state": self.state,
            "bytes": self.bytes,
            "mb_per_s": self.mb_per_s,
        }

    @classmethod
    def decode(cls, body: object) -> PipeInfo:
        """Read a row of ``pipes``; :class:`MalformedAgentInfo` if it is not one."""
        if not isinstance(body, dict):
            raise MalformedAgentInfo(f"a pipe row is an object, not {type(body).__name__}")
        try:
            return cls(
                source=str(body["from"]),
                target=str(body["to"]),
                state=str(body["state"]),
                bytes=int(body["bytes"]),
                mb_per_s=float(body["mb_per_s"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise MalformedAgentInfo(f"malformed pipe row ({e!r})") from None
