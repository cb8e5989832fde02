"""The file-system client every part of OneOS uses (shell, agents, desktop, CLI).

Metadata goes over pubsub RPC to the ``fs`` target; content is streamed
over TCP from/to the serving runtime's transfer server, so a 1 GiB file
never sits whole in memory on either side.  Errors arrive as the same typed
errors the store raises (``NotFound``, ``IsADirectory`` ...): their wire
kinds are registered by :mod:`oneos.fs.errors`.

Inside a runtime the RPC client's precheck knows from the membership
whether anybody serves the tree; when nobody does a call fails at once with
the reason ("store host rt-a is down") instead of waiting for a timeout.

Metadata calls take one hop when they can: the client asks its RPC client
to use the service's direct channel (:mod:`oneos.pubsub.direct`), so once
it is open a ``stat`` goes straight to the serving runtime and back instead
of through the broker twice; until then, and whenever in doubt, the bus
carries it.  A listing is one call (:meth:`FSClient.list_stat`), so are
many stats (:meth:`FSClient.stat_many`), and so is writing a small file.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from oneos.errors import rebuild_error
from oneos.fs import errors as fs_errors  # noqa: F401  (registers the file system's wire kinds)
from oneos.fs.store import Stat
from oneos.pubsub.rpc import RPCClient
from oneos.transfer import Sink, Source, receive, send, tls_of

TARGET = "fs"
#: Methods that change nothing: when a direct channel breaks before answering one, it is asked again over the bus.
#: (``read_open``/``write_open`` only register a stream token, which expires unused.)
RETRY_SAFE = (
    "stat",
    "exists",
    "listdir",
    "list_stat",
    "stat_many",
    "glob",
    "access",
    "usage",
    "read_small",
    "read_open",
    "write_open",
)
#: Paths per ``stat_many`` call (the service takes up to 2,000; an answer of 1,000 stats is about 150 KB).
STAT_BATCH = 1000
#: ``write`` sends content up to this size inside the call (``write_small``: one round trip, no stream).
SMALL_WRITE = 64 * 1024


@dataclass(frozen=True)
class Listing:
    """What ``ls`` needs of one path, in one call (:meth:`FSClient.list_stat`).

    *entries*: a directory's entries (None for a file, or when the
    directory could not be listed: then *error* says why, raised by
    :meth:`entries_or_raise` where a ``listdir`` would have raised it);
    *parent*: the parent's stat when asked for (``ls -a``'s ``..``).
    """

    stat: Stat
    entries: list[Stat] | None
    parent: Stat | None = None
    error: Exception | None = None

    @classmethod
    def decode(cls, body: dict[str, Any]) -> Listing:
        rows = body.get("entries")
        error = body.get("error")
        parent = body.get("parent")
        return cls(
            Stat.from_dict(body["stat"]),
            [Stat.from_dict(r) for r in rows] if isinstance(rows, list) else None,
            Stat.from_dict(parent) if isinstance(parent, dict) else None,
            rebuild_error(str(error.get("kind")), str(error.get("message"))) if isinstance(error, dict) else None,
        )

    def entries_or_raise(self) -> list[Stat]:
        """The entries of a directory; the listing's error if it could not be listed."""
        if self.error is not None:
            raise self.error
        return list(self.entries or [])


def decode_stats(rows: list[dict[str, Any]]) -> list[Stat | Exception]:
    return [
        Stat.from_dict(r["stat"]) if "stat" in r else rebuild_error(str(r["error"]["kind"]), str(r["error"]["message"]))
        for r in rows
    ]


class FSClient:
    """Asynchronous access to the OneOS file tree.

    *user*: every call is made for this OneOS user and checked against the
    tree's owners and modes (docs/filesystem.md, "Owners and modes"); None
    is the kernel or a trusted caller, which nothing refuses.  (The service
    trusts a runtime to name the user it acts for; a ``oneos`` command's
    own identity decides its user, whatever it sends.)
    """

    def __init__(
        self,
        rpc: RPCClient,
        reactor: Any,
        timeout: float = 10.0,
        *,
        system: bool = False,
        user: str | None = None,
        direct: bool = True,
    ) -> None:
        self.rpc = rpc
        self.reactor = reactor
        self.timeout = timeout
        #: the kernel's own client: may reach /etc/oneos
        self.system = system
        #: the user every call is made for (None: the kernel)
        self.user = user
        #: *direct*: calls take the service's direct channel when it is open (one hop); False: always the bus
        self.direct = direct
        enable = getattr(rpc, "enable_direct", None)  # a test's recording double has none
        if direct and enable is not None:
            enable(TARGET, retry_safe=RETRY_SAFE)

    def as_user(self, user: str | None) -> FSClient:
        """The same connection, acting for *user* (a shell session's client)."""
        return FSClient(self.rpc, self.reactor, self.timeout, system=self.system, user=user, direct=self.direct)

    def _call(self, method: str, **args: Any) -> defer.Deferred:
        if self.system:
            args["system"] = True
        if self.user is not None:
            args["user"] = self.user
        return self.rpc.call(TARGET, method, timeout=self.timeout, **args)

    def stat(self, path: str) -> defer.Deferred:
        return self._call("stat", path=path).addCallback(Stat.from_dict)

    def exists(self, path: str) -> defer.Deferred:
        return self._call("exists", path=path)

    def listdir(self, path: str) -> defer.Deferred:
        return self._call("listdir", path=path).addCallback(lambda rows: [Stat.from_dict(r) for r in rows])

    def list_stat(self, path: str, parent: bool = False) -> defer.Deferred:
        """*path*'s stat and, for a directory, its entries', in one call: a :class:`Listing` (``ls``).

        Fails as :meth:`stat` would; a directory that cannot be listed
        comes back with the reason in ``Listing.error``.  *parent*: the
        parent's stat too (``ls -a``).
        """
        args: dict[str, Any] = {"path": path}
        if parent:
            args["parent"] = True
        return self._call("list_stat", **args).addCallback(Listing.decode)

    def stat_many(self, paths: list[str]) -> defer.Deferred:
        """Many paths' stats, in order: each a :class:`Stat` or the error its ``stat`` would raise.

        One call per :data:`STAT_BATCH` paths (the calls go out together), so a
        glob of any size works and its answers stay well inside one message.
        """
        paths = list(paths)
        if len(paths) <= STAT_BATCH:
            return self._call("stat_many", paths=paths).addCallback(decode_stats)
        batches = [
            self._call("stat_many", paths=paths[i : i + STAT_BATCH]).addCallback(decode_stats)
            for i in range(0, len(paths), STAT_BATCH)
        ]
        return defer.gatherResults(batches, consumeErrors=True).addCallbacks(
            lambda parts: [st for part in parts for st in part], lambda f: f.value.subFailure
        )

    def mkdir(
        self,
        path: str,
        parents: bool = False,
        exist_ok: bool = False,
        *,
        perm: int | None = None,
        owner: str | None = None,
    ) -> defer.Deferred:
        """Make a directory (mode *perm*, default 0o755); *owner* counts for the kernel's and root's calls only."""
        args: dict[str, Any] = {"path": path, "parents": parents, "exist_ok": exist_ok}
        if perm is not None:
            args["perm"] = perm
        if owner is not None:
            args["owner"] = owner
        return self._call("mkdir", **args).addCallback(Stat.from_dict)

    def chmod(self, path: str, perm: int) -> defer.Deferred:
        """Set an entry's permission bits (its owner or root only); fires with its Stat."""
        return self._call("chmod", path=path, perm=perm).addCallback(Stat.from_dict)

    def chown(self, path: str, owner: str) -> defer.Deferred:
        """Give an entry to *owner* (root only); fires with its Stat."""
        return self._call("chown", path=path, owner=owner).addCallback(Stat.from_dict)

    def access(self, path: str, mode: str = "r") -> defer.Deferred:
        """Fails (PermissionDenied, NotFound ...) unless this client's user may do *mode* (r, w, x) to *path*.

        For work another party does for the user (a program's ``< FILE``);
        ``w`` on a missing file asks whether it may be created.
        """
        return self._call("access", path=path, mode=mode)

    def remove(self, path: str, recursive: bool = False) -> defer.Deferred:
        return self._call("remove", path=path, recursive=recursive)

    def rename(self, src: str, dst: str) -> defer.Deferred:
        return self._call("rename", src=src, dst=dst).addCallback(Stat.from_dict)

    def copy(self, src: str, dst: str, recursive: bool = False) -> defer.Deferred:
        return self._call("copy", src=src, dst=dst, recursive=recursive).addCallback(Stat.from_dict)

    def glob(self, pattern: str, cwd: str = "/") -> defer.Deferred:
        return self._call("glob", pattern=pattern, cwd=cwd)

    @defer.inlineCallbacks
    def read_into(
        self,
        path: str,
        sink: Sink,
        offset: int = 0,
        length: int | None = None,
        on_open: Callable[[dict[str, Any]], Any] | None = None,
    ) -> Any:
        """Stream a file's bytes into *sink*; fires with the sink's status."""
        where = yield self._call("read_open", path=path, offset=offset, length=length)
        if on_open is not None:
            on_open(where)
        result = yield receive(self.reactor, where["host"], where["port"], where["token"], sink, **tls_of(where))
        return result

    @defer.inlineCallbacks
    def write_from(self, path: str, source: Source, mode: str = "truncate") -> Any:
        """Stream *source* into a file; visible only once complete; fires with its Stat."""
        where = yield self._call("write_open", path=path, mode=mode)
        status = yield send(self.reactor, where["host"], where["port"], where["token"], source, **tls_of(where))
        return Stat.from_dict(status)

    def read_small(self, path: str) -> defer.Deferred:
        """A small file's bytes in one round trip (kernel state such as users and keys)."""
        return self._call("read_small", path=path).addCallback(lambda r: base64.b64decode(r["data"]))

    def write_small(self, path: str, data: bytes, exclusive: bool = False) -> defer.Deferred:
        """Write a small file in one round trip; *exclusive*: fail with AlreadyExists if it is there."""
        return self._call(
            "write_small", path=path, data=base64.b64encode(data).decode(), exclusive=exclusive
        ).addCallback(Stat.from_dict)

    @defer.inlineCallbacks
    def read(self, path: str, offset: int = 0, length: int | None = None) -> Any:
        """A whole (small) file's content; large files should use :meth:`read_into`."""
        sink = BytesSink()
        yield self.read_into(path, sink, offset, length)
        return bytes(sink.data)

    def write(self, path: str, data: bytes, mode: str = "truncate") -> defer.Deferred:
        """Write *data* to a file (*mode* ``truncate`` or ``append``); fires with its Stat.

        A small file replaced whole goes inside the call (one round trip);
        anything else is streamed.
        """
        if mode == "truncate" and len(data) <= SMALL_WRITE:
            return self.write_small(path, data)
        return self.write_from(path, BytesSource(data), mode)


class BytesSink:
    """Collects a stream in memory (for small files)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> defer.Deferred:
        self.data += data
        return defer.succeed(None)

    def finish(self) -> defer.Deferred:
        return defer.succeed({"size": len(self.data)})

    def abort(self) -> None:
        pass


class BytesSource:
    """Streams bytes held in memory, a chunk at a time."""

    def __init__(self, data: bytes, chunk: int = 256 * 1024) -> None:
        self.data = memoryview(data)
        self.chunk = chunk
        self.pos = 0

    def next(self) -> defer.Deferred:
        piece = bytes(self.data[self.pos : self.pos + self.chunk])
        self.pos += len(piece)
        return defer.succeed(piece)
