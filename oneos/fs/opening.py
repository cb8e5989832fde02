"""Opening a store from its URL: the one place that chooses the backend.

:func:`open_store` checks the URL (:mod:`oneos.fs.urls`) and hands it to
:mod:`oneos.fs.sqlite_store` or :mod:`oneos.fs.mongo_store`.  The backends
are imported when a store of their kind is opened, not when this module is:
a runtime on SQLite never loads txmongo.  :mod:`oneos.fs.store` (the
interface the backends implement) imports neither, so the backends can
import it without a cycle.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred

from oneos.fs.errors import FSError, InvalidArgument
from oneos.fs.store import DISK_RESERVE, FileStore
from oneos.fs.urls import parse_store_url


def open_store(
    url: str,
    reactor: Any = None,
    *,
    chunk_size: int | None = None,
    connect_timeout: float = 10.0,
    op_timeout: float = 30.0,
    clock: Any = None,
    reserve: int = DISK_RESERVE,
) -> Deferred[FileStore]:
    """Open (creating if needed) the store at *url*; fires with a :class:`~oneos.fs.store.FileStore`.

    The schema, the root directory and the chunk size are set up on first
    use, so a database that does not exist yet works.  *chunk_size* only
    applies to a new store (an existing one keeps the size it was made with).
    Fails with :class:`~oneos.fs.errors.StoreUnavailable` if the store cannot
    be reached in *connect_timeout* seconds or opened at all; later, a
    MongoDB operation that gets no answer in *op_timeout* seconds (server
    gone, connection lost) fails the same way.  *clock* (default: the
    reactor) dates entries and ages pending uploads.  *reserve* (SQLite):
    bytes of free disk space kept for the store's own bookkeeping; content
    that would eat into them fails with :class:`~oneos.fs.store.NoSpace`.
    """
    try:
        parsed = parse_store_url(url)
    except FSError as e:
        return defer.fail(e)
    if chunk_size is not None and chunk_size < 1:
        return defer.fail(InvalidArgument(None, "chunk_size must be positive"))
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    clock = clock or reactor
    # The backends are imported here, when one is needed (late binding on purpose: see the module docstring).
    # (The casts: Deferred is invariant in its result; both backends are FileStores, see tests/integration/test_fs_contract.py.)
    if parsed.scheme == "sqlite":
        from oneos.fs.sqlite_store import SQLiteStore

        return cast(
            "Deferred[FileStore]",
            SQLiteStore.open(parsed, reactor, chunk_size=chunk_size, clock=clock, reserve=reserve),
        )
    from oneos.fs.mongo_store import MongoStore

    return cast(
        "Deferred[FileStore]",
        MongoStore.open(
            parsed, reactor, chunk_size=chunk_size, connect_timeout=connect_timeout, op_timeout=op_timeout, clock=clock
        ),
    )


__all__ = ["open_store"]
