"""Initialising a file store: the standard tree, safely and idempotently.

The original OneOS's reset script dropped its collections first and failed
on a database that did not exist yet.  Here opening a store creates what is
missing, and :func:`reset_fs` only ever adds the standard directories - it
wipes nothing unless asked to with ``force``, and refuses (with a typed
error) when the store holds anything beyond the standard tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from oneos.fs import paths
from oneos.fs.errors import FSError, NotADirectory, NotFound, show_path
from oneos.fs.opening import open_store
from oneos.fs.store import DEFAULT_OWNER, FileStore, deferred_method
from oneos.fs.urls import redact

log = Logger()

#: The standard tree: (path, permission bits).  /tmp is world-writable and
#: sticky as on UNIX; /data stands in for the original OneOS's data folder.
INITIAL_TREE: tuple[tuple[str, int], ...] = (
    ("/bin", 0o755),
    ("/data", 0o755),
    ("/etc", 0o755),
    ("/home", 0o755),
    ("/tmp", 0o1777),
    ("/usr", 0o755),
    ("/var", 0o755),
)


class StoreNotEmpty(FSError):
    """``reset-fs`` found entries beyond the standard tree and was not forced."""

    code = "ENOTEMPTY"
    description = "the file store is not empty"

    def __init__(self, url: str, extra: list[str]) -> None:
        shown = ", ".join(show_path(p) for p in extra[:5]) + (", ..." if len(extra) > 5 else "")
        super().__init__(None, f"{redact(url)} holds {shown}; use --force to wipe it and start afresh")
        self.extra = extra


@dataclass
class ResetResult:
    url: str
    wiped: bool = False
    created: list[str] = field(default_factory=list)

    def describe(self) -> str:
        what = []
        if self.wiped:
            what.append("wiped")
        what.append(f"created {' '.join(self.created)}" if self.created else "standard tree already present")
        return f"file store {redact(self.url)}: {', '.join(what)}"


async def extra_entries(store: FileStore) -> list[str]:
    """Entries that are not part of the (empty) standard tree, in tree order.

    Only the root and the standard directories are listed, so this is cheap
    however large the store is.
    """
    standard = dict(INITIAL_TREE)
    extra: list[str] = []
    for entry in await store.scandir(paths.ROOT):
        if entry.path not in standard or not entry.is_dir:
            extra.append(entry.path)
            continue
        try:
            extra.extend(child.path for child in await store.scandir(entry.path))
        except (NotFound, NotADirectory):  # changed meanwhile
            continue
    return extra


async def ensure_tree(store: FileStore, owner: str = DEFAULT_OWNER) -> list[str]:
    """Create whichever standard directories are missing; return those created."""
    created = []
    for path, perm in INITIAL_TREE:
        if not await store.exists(path):
            await store.mkdir(path, exist_ok=True, owner=owner, perm=perm)
            created.append(path)
    return created


@deferred_method
async def reset_store(store: FileStore, force: bool = False) -> ResetResult:
    """Bring an open store to the standard tree (see :func:`reset_fs`)."""
    result = ResetResult(store.url)
    extra = await extra_entries(store)
    if extra:
        if not force:
            raise StoreNotEmpty(store.url, extra)
        await store.wipe()
        result.wiped = True
    result.created = await ensure_tree(store)
    await store.collect_garbage(full=True)
    log.info("{result}", result=result.describe())
    return result


def reset_fs(url: str, force: bool = False, reactor: Any = None, **open_options: Any) -> Deferred[ResetResult]:
    """Open the store at *url* (creating it if needed) and give it the standard tree.

    Idempotent: on a store that has the standard tree and nothing else it
    changes nothing.  A store holding anything else is refused with
    :class:`StoreNotEmpty` unless *force*, which wipes it first.  Fails with
    :class:`~oneos.fs.errors.StoreUnavailable` if the store cannot be reached.
    """

    async def run() -> ResetResult:
        store = await open_store(url, reactor, **open_options)
        try:
            return await reset_store(store, force)
        finally:
            await store.close()

    return Deferred.fromCoroutine(run())
