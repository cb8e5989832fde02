"""Store URLs: checking and taking them apart, and showing them without passwords.

Pure, no I/O.  Which backend a URL opens is :mod:`oneos.fs.opening`'s
business; this module only says what the URL names:

- ``sqlite:///abs/path.db`` (three slashes: the path is absolute) and
  ``sqlite:///:memory:``;
- ``mongodb://host[:port][,host2...]/dbname[?options]`` (``mongodb+srv://``
  too); the database name defaults to ``oneos``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from oneos.fs.errors import InvalidStoreURL


@dataclass(frozen=True)
class StoreURL:
    scheme: Literal["sqlite", "mongodb"]
    url: str
    #: sqlite: the database file path or ":memory:"; mongodb: the database name.
    target: str
    options: dict[str, str] = field(default_factory=dict)


def redact(url: str) -> str:
    """*url* with any password replaced, fit for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def parse_store_url(url: str) -> StoreURL:
    """Check and take apart a store URL.

    ``sqlite:///abs/path.db`` (three slashes: the path is absolute),
    ``sqlite:///:memory:``, ``mongodb://host[:port][,host2...]/dbname[?options]``
    (``mongodb+srv://`` too).  The MongoDB database name defaults to ``oneos``.
    """
    if not isinstance(url, str) or not url:
        raise InvalidStoreURL(str(url), "empty URL")
    if url.startswith("sqlite:"):
        if not url.startswith("sqlite://"):
            raise InvalidStoreURL(url, "expected sqlite:///absolute/path.db or sqlite:///:memory:")
        rest = url[len("sqlite://") :]
        if rest == "/:memory:" or rest == ":memory:":
            return StoreURL("sqlite", url, ":memory:")
        if not rest.startswith("/") or rest == "/":
            raise InvalidStoreURL(url, "the database path must be absolute: sqlite:///abs/path.db")
        if "\x00" in rest:
            raise InvalidStoreURL(url, "the path contains a NUL byte")
        return StoreURL("sqlite", url, os.path.normpath(rest))
    if url.startswith("mongodb://") or url.startswith("mongodb+srv://"):
        parts = urlsplit(url)
        if not parts.netloc or parts.hostname is None:
            raise InvalidStoreURL(redact(url), "no host in the MongoDB URL")
        db = parts.path.lstrip("/") or "oneos"
        if any(c in db for c in '/\\. "$\x00') or len(db.encode()) > 63:
            raise InvalidStoreURL(redact(url), f"{db!r} is not a valid MongoDB database name")
        return StoreURL("mongodb", url, db)
    raise InvalidStoreURL(redact(url), "unknown scheme; use sqlite:///path.db or mongodb://host:port/db")


__all__ = ["StoreURL", "parse_store_url", "redact"]
