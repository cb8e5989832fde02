"""The file-system client every part of OneOS uses (shell, agents, desktop, CLI).

Metadata goes over pubsub RPC to the ``fs`` target; content is streamed
over TCP from/to the serving runtime's transfer server, so a 1 GiB file
never sits whole in memory on either side.  Errors arrive as the same typed
errors the store raises (``NotFound``, ``IsADirectory`` ...).

Inside a runtime the RPC client's precheck knows from the membership
whether anybody serves the tree; when nobody does a call fails at once with
the reason ("store host rt-a is down") instead of waiting for a timeout.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from oneos.fs import errors as fs_errors
from oneos.fs.store import Stat
from oneos.pubsub.rpc import RPCClient, register_error
from oneos.transfer import Sink, Source, receive, send

TARGET = "fs"

for _code in ("ENOENT", "ENOTDIR", "EISDIR", "EEXIST", "ENOTEMPTY", "EACCES", "EPERM", "EINVAL", "ENAMETOOLONG", "ESTALE", "EIO",
              "ENOSPC"):
    register_error(_code, lambda message, code=_code: fs_errors.from_wire(code, message))


class FSClient:
    """Asynchronous access to the OneOS file tree."""

    def __init__(self, rpc: RPCClient, reactor: Any, timeout: float = 10.0, *, system: bool = False) -> None:
        self.rpc = rpc
        self.reactor = reactor
        self.timeout = timeout
        #: the kernel's own client: may reach /etc/oneos
        self.system = system

    def _call(self, method: str, **args: Any) -> defer.Deferred:
        if self.system:
            args["system"] = True
        return self.rpc.call(TARGET, method, timeout=self.timeout, **args)

    def stat(self, path: str) -> defer.Deferred:
        return self._call("stat", path=path).addCallback(Stat.from_dict)

    def exists(self, path: str) -> defer.Deferred:
        return self._call("exists", path=path)

    def listdir(self, path: str) -> defer.Deferred:
        return self._call("listdir", path=path).addCallback(lambda rows: [Stat.from_dict(r) for r in rows])

    def mkdir(self, path: str, parents: bool = False, exist_ok: bool = False) -> defer.Deferred:
        return self._call("mkdir", path=path, parents=parents, exist_ok=exist_ok).addCallback(Stat.from_dict)

    def remove(self, path: str, recursive: bool = False) -> defer.Deferred:
        return self._call("remove", path=path, recursive=recursive)

    def rename(self, src: str, dst: str) -> defer.Deferred:
        return self._call("rename", src=src, dst=dst).addCallback(Stat.from_dict)

    def copy(self, src: str, dst: str, recursive: bool = False) -> defer.Deferred:
        return self._call("copy", src=src, dst=dst, recursive=recursive).addCallback(Stat.from_dict)

    def glob(self, pattern: str, cwd: str = "/") -> defer.Deferred:
        return self._call("glob", pattern=pattern, cwd=cwd)

    @defer.inlineCallbacks
    def read_into(self, path: str, sink: Sink, offset: int = 0, length: int | None = None,
                  on_open: Callable[[dict[str, Any]], Any] | None = None) -> Any:
        """Stream a file's bytes into *sink*; fires with the sink's status."""
        where = yield self._call("read_open", path=path, offset=offset, length=length)
        if on_open is not None:
            on_open(where)
        result = yield receive(self.reactor, where["host"], where["port"], where["token"], sink)
        return result

    @defer.inlineCallbacks
    def write_from(self, path: str, source: Source, mode: str = "truncate") -> Any:
        """Stream *source* into a file; visible only once complete; fires with its Stat."""
        where = yield self._call("write_open", path=path, mode=mode)
        status = yield send(self.reactor, where["host"], where["port"], where["token"], source)
        return Stat.from_dict(status)

    def read_small(self, path: str) -> defer.Deferred:
        """A small file's bytes in one round trip (kernel state such as users and keys)."""
        return self._call("read_small", path=path).addCallback(lambda r: base64.b64decode(r["data"]))

    def write_small(self, path: str, data: bytes, exclusive: bool = False) -> defer.Deferred:
        """Write a small file in one round trip; *exclusive*: fail with AlreadyExists if it is there."""
        return self._call("write_small", path=path, data=base64.b64encode(data).decode(),
                          exclusive=exclusive).addCallback(Stat.from_dict)

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
