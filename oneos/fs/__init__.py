"""The OneOS file system's storage layer: one file tree shared by all runtimes.

- :mod:`oneos.fs.paths` - pure path rules (normalising, names, globs);
- :mod:`oneos.fs.errors` - typed errors with POSIX codes, rebuildable across RPC;
- :mod:`oneos.fs.store` - the :class:`~oneos.fs.store.FileStore` interface,
  streaming readers/writers and the base class the backends share;
- :mod:`oneos.fs.planning` - pure chunk/segment planning of reads, appends and commits;
- :mod:`oneos.fs.urls` - store URLs: parsing, checking, redacting passwords;
- :mod:`oneos.fs.opening` - :func:`~oneos.fs.opening.open_store`, which chooses the backend;
- :mod:`oneos.fs.sqlite_store` and :mod:`oneos.fs.mongo_store` - the backends;
- :mod:`oneos.fs.reset` - the standard tree and ``oneos reset-fs``.

See docs/filesystem.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from oneos.lazyapi import lazy_api

if TYPE_CHECKING:
    from oneos.fs.opening import open_store
    from oneos.fs.store import CHUNK_SIZE, ChunkReader, FileStore, Stat, Writer

__all__ = ["CHUNK_SIZE", "ChunkReader", "FileStore", "Stat", "Writer", "open_store"]

# Imported on first use: the pure modules here (paths, permissions, errors) serve commands that start
# without Twisted, and the store needs it (oneos/lazyapi.py).
__getattr__ = lazy_api(__name__, {name: "opening" if name == "open_store" else "store" for name in __all__})
