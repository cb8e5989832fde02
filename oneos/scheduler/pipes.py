"""The pipes between agents the scheduler knows of, kept a while after they finish: what ``pipes`` lists.

A pipe is short-lived more often than not (``seq 10 | wc -l``): its writer
may well have ended before the scheduler even joined its output to the
next stage, so the writer's last status never says where its output went,
and the retained statuses vanish a few minutes after the agents end.
Listing pipes from the agents' statuses alone therefore missed most of
them.  :class:`PipeLog` instead records each pipe when the scheduler joins
it (and, for pipes an earlier leader joined, when a writer's status names
its pipe), follows both ends' statuses, and keeps a finished pipe with its
final byte count for ``keep`` seconds, at most ``limit`` of them.

Pure bookkeeping over status dicts and a clock function: no I/O, no Twisted.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from oneos.agents.info import ENDED, LOST, PIPE, MalformedAgentInfo, OutputTarget, PipeInfo

#: seconds a finished pipe stays listed (as long as its agents' retained statuses stay)
KEEP_FINISHED = 300.0
#: finished pipes listed at most (the oldest go first)
MAX_FINISHED = 200
LIVE_STATES = ("running", "paused")


@dataclass
class _Pipe:
    """One pipe: the writer's last status, the reader's (when known), when it finished."""

    writer: dict[str, Any]
    #: where the writer's output goes: ``ID@RUNTIME`` of the reader (or ``HOST:PORT``)
    target: str
    reader_id: str | None
    reader: dict[str, Any] | None = None
    #: the clock's time when both ends were seen ended (None: still open)
    finished_at: float | None = None
    #: the writer's status vanished (its retained status was cleared) before it was seen ended
    gone: bool = False
    #: the reader's status vanished
    reader_gone: bool = False

    def finished(self) -> bool:
        writer_done = self.gone or self.writer.get("state") in ENDED
        reader_done = self.reader is None or self.reader_gone or self.reader.get("state") in ENDED
        return writer_done and reader_done


class PipeLog:
    """Every pipe the scheduler joined or saw, open or recently finished."""

    def __init__(self, seconds: Callable[[], float], keep: float = KEEP_FINISHED, limit: int = MAX_FINISHED) -> None:
        self.seconds = seconds
        self.keep = keep
        self.limit = limit
        #: writer id -> its pipe (a writer has one stdout, so at most one pipe)
        self._pipes: dict[str, _Pipe] = {}
        #: reader id -> writer id
        self._readers: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._pipes)

    def joined(self, writer: dict[str, Any], reader: dict[str, Any] | None, target: str) -> None:
        """The scheduler joined *writer*'s stdout to *target* (``ID@RUNTIME`` of *reader*)."""
        reader_id = str(reader["id"]) if reader is not None else _reader_id(target)
        pipe = _Pipe(writer=dict(writer), target=target, reader_id=reader_id, reader=dict(reader) if reader else None)
        self._add(str(writer["id"]), pipe)

    def seen(self, row: dict[str, Any]) -> None:
        """An agent's status (every one the scheduler reads): update the pipes it is an end of."""
        agent_id = str(row.get("id", ""))
        pipe = self._pipes.get(agent_id)
        if pipe is not None:
            pipe.writer = dict(row)
        elif _pipe_target(row) is not None:
            # a pipe an earlier leader joined (or one joined before we read this status)
            target = str(_pipe_target(row))
            self._add(agent_id, _Pipe(writer=dict(row), target=target, reader_id=_reader_id(target)))
            pipe = self._pipes[agent_id]
        writer_id = self._readers.get(agent_id)
        if writer_id is not None and writer_id in self._pipes:
            self._pipes[writer_id].reader = dict(row)
            self._settle(self._pipes[writer_id])
        if pipe is not None:
            self._settle(pipe)

    def cleared(self, agent_id: str) -> None:
        """An agent's retained status was cleared: its pipe keeps its last figures, and is finished."""
        pipe = self._pipes.get(agent_id)
        if pipe is not None and pipe.writer.get("state") not in ENDED:
            pipe.gone = True
        feeding = self._pipes.get(self._readers.get(agent_id, ""))
        if feeding is not None:
            feeding.reader_gone = True
        for p in (pipe, feeding):
            if p is not None:
                self._settle(p)

    def rows(self, live: Collection[str]) -> list[PipeInfo]:
        """The pipes as ``pipes`` lists them, oldest first; a writer on a runtime not in *live* is ``lost``."""
        self._prune()
        out = []
        for writer_id, pipe in self._pipes.items():
            w = pipe.writer
            state = str(w.get("state", "?"))
            if state in LIVE_STATES and w.get("runtime") not in live:
                state = LOST
            elif pipe.gone and state not in ENDED:
                state = "gone"
            sent = max(int(w.get("stdout_bytes") or 0), int((pipe.reader or {}).get("stdin_bytes") or 0))
            uptime = max(float(w.get("uptime") or 0), 1e-3)
            out.append(
                PipeInfo(
                    source=f"{writer_id}@{w.get('runtime', '?')}",
                    target=pipe.target,
                    state=state,
                    bytes=sent,
                    mb_per_s=round(sent / uptime / 1e6, 2),
                )
            )
        return out

    # -- inside ---------------------------------------------------------------------------
    def _add(self, writer_id: str, pipe: _Pipe) -> None:
        old = self._pipes.pop(writer_id, None)
        if old is not None and old.reader_id is not None:
            self._readers.pop(old.reader_id, None)
        self._pipes[writer_id] = pipe
        if pipe.reader_id is not None:
            self._readers[pipe.reader_id] = writer_id
        self._settle(pipe)
        self._prune()

    def _settle(self, pipe: _Pipe) -> None:
        if pipe.finished_at is None and pipe.finished():
            pipe.finished_at = self.seconds()

    def _prune(self) -> None:
        """Forget finished pipes older than ``keep``, then the oldest beyond ``limit``; open ones stay."""
        now = self.seconds()
        finished = sorted(
            ((p.finished_at, wid) for wid, p in self._pipes.items() if p.finished_at is not None),
            key=lambda item: item[0],
        )
        drop = [wid for at, wid in finished if now - at > self.keep]
        kept = [wid for at, wid in finished if now - at <= self.keep]
        drop += kept[: max(0, len(kept) - self.limit)]
        for wid in drop:
            pipe = self._pipes.pop(wid)
            if pipe.reader_id is not None and self._readers.get(pipe.reader_id) == wid:
                del self._readers[pipe.reader_id]


def _pipe_target(row: dict[str, Any]) -> str | None:
    """Where *row*'s stdout goes when it is a pipe, else None."""
    try:
        target = OutputTarget.decode(row.get("stdout_to", "attach"))
    except MalformedAgentInfo:
        return None
    return target.where if target.kind == PIPE else None


def _reader_id(target: str) -> str | None:
    """The reading agent's id in a pipe target ``ID@RUNTIME`` (None for ``HOST:PORT``)."""
    agent_id, at, _ = target.partition("@")
    return agent_id if at and agent_id else None
