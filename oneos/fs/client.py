"""The file-system client every part of OneOS uses (shell, agents, desktop, CLI).

Metadata goes over pubsub RPC to the ``fs`` target; content is streamed
over TCP from/to the serving runtime's transfer server, so a 1 GiB file
never sits whole in memory on either side.  Errors arrive as the same typed
errors the store raises (``NotFound``, ``IsADirectory`` ...): their wire
kinds are registered by :mod:`oneos.fs.errors`.

Inside a runtime the RPC client's precheck knows from the membership
whether anybody serves the tree; when nobody does a call fails at once with
the reason ("store host rt-a is down") instead of waiting for a timeout.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from oneos.fs import errors as fs_errors  # noqa: F401  (registers the file system's wire kinds)
from oneos.fs.store import Stat
from oneos.pubsub.rpc import RPCClient
from oneos.transfer import Sink, Source, receive, send, tls_of

TARGET = "fs"


class FSClient:
    """Asynchronous access to the OneOS file tree.

    *user*: every call is made for this OneOS user and checked against the
    tree's owners and modes (docs/filesystem.md, "Owners and modes"); None
    is the kernel or a trusted caller, which nothing refuses.  (The service
    trusts a runtime to name the user it acts for; a ``oneos`` command's
    own identity decides its user, whatever it sends.)
    """

    def __init__(
        self, rpc: RPCClient, reactor: Any, timeout: float = 10.0, *, system: bool = False, user: str | None = None
    ) -> None:
        self.rpc = rpc
        self.reactor = reactor
        self.timeout = timeout
        #: the kernel's own client: may reach /etc/oneos
        self.system = system
        #: the user every call is made for (None: the kernel)
        self.user = user

    def as_user(self, user: str | None) -> FSClient:
        """The same connection, acting for *user* (a shell session's client)."""
        return FSClient(self.rpc, self.reactor, self.timeout, system=self.system, user=user)

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
