"""``oneos fs``: move data in and out of the OneOS file tree from the host.

``put``/``get`` stream through the file-system service with a progress bar
on a terminal; ``get`` writes to a temporary file and renames it at the end,
so a failed transfer never leaves a partial local file (and the service
guarantees the same for ``put``).  As with cp, a destination that ends with
``/`` or is an existing directory gets the file under its own name.  ``put``
reads a pipe (``-``, a FIFO) without blocking the reactor, so Ctrl-C always
ends a command at once: one line, status 130, nothing left half-written.
Options (``--pubsub``, ``--timeout``, ``--progress``) go before or after the
subcommand and its arguments.
"""

from __future__ import annotations

import argparse
import os
import stat as stat_module
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

from oneos.cli.common import (
    SIGPIPE_STATUS,
    OutputSink,
    ReaderGone,
    default_pubsub_url,
    inline_callbacks,
    network_rpc,
    run_with_client,
)
from oneos.errors import OneOSError

if TYPE_CHECKING:
    from twisted.internet import defer

SUMMARY = "copy files in and out of the OneOS file tree: put, get, ls, cat, mkdir, rm"
CHUNK = 256 * 1024


class Progress:
    """A one-line progress bar on a terminal; silent otherwise."""

    def __init__(
        self, label: str, total: int | None, out: TextIO, enabled: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.label = label
        self.total = total
        self.out = out
        self.enabled = enabled
        self.clock = clock
        self.done = 0
        self.start = clock()
        self.last = 0.0

    def line(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-6)
        rate = self.done / elapsed / 1e6
        done_mib = self.done / 2**20
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * 20)
            return f"{self.label} [{bar:<20}] {frac * 100:5.1f}%  {done_mib:.1f}/{self.total / 2**20:.1f} MiB  {rate:.1f} MB/s"
        return f"{self.label} {done_mib:.1f} MiB  {rate:.1f} MB/s"

    def add(self, n: int) -> None:
        self.done += n
        now = self.clock()
        if self.enabled and now - self.last >= 0.2:
            self.last = now
            self.out.write("\r" + self.line())
            self.out.flush()

    def finish(self) -> None:
        if self.enabled:
            self.out.write("\r" + self.line() + "\n")
            self.out.flush()


class FileSource:
    """Reads a local regular file in chunks for an upload."""

    def __init__(self, path: Path, progress: Progress) -> None:
        self.f = open(path, "rb")
        self.progress = progress

    def next(self) -> defer.Deferred:
        data = self.f.read(CHUNK)
        if not data:
            self.f.close()
        self.progress.add(len(data))
        from twisted.internet import defer

        return defer.succeed(data)

    def stop(self) -> None:
        self.f.close()


class Interrupted(OneOSError):
    """The user interrupted the command (Ctrl-C); what was under way is abandoned, not completed."""

    code = "EINTR"


class PipeSource:
    """Reads a pipe, FIFO or terminal (``-``, ``/dev/stdin``) for an upload without blocking the reactor.

    A blocking read of a slow pipe would hold the reactor, and with it
    Ctrl-C, until the writer wrote again; here the descriptor is
    non-blocking and read when the reactor says it is readable.  A
    descriptor the reactor cannot watch (a character device such as
    ``/dev/zero``) is read directly: it never blocks for long.
    :meth:`stop` fails a pending read (the upload is abandoned, never
    completed short) and restores the descriptor's flags, which a terminal
    shares with the shell that started us.
    """

    def __init__(self, reactor: Any, fd: int, progress: Progress) -> None:
        import fcntl

        self.reactor = reactor
        self.fd = fd
        self.progress = progress
        self._wanted: defer.Deferred | None = None
        self._flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, self._flags | os.O_NONBLOCK)
        self._watchable = True
        self._closed = False

    # IReadDescriptor, for the reactor
    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "fs-put"

    def connectionLost(self, reason: Any) -> None:
        self._give(None, reason)

    def next(self) -> defer.Deferred:
        from twisted.internet import defer

        d: defer.Deferred = defer.Deferred()
        self._wanted = d
        if self._watchable:
            try:
                self.reactor.addReader(self)
                return d
            except (OSError, ValueError, PermissionError):
                self._watchable = False  # not pollable (a character device): it never blocks for long
        self._read_blocking()
        return d

    def doRead(self) -> None:
        try:
            data = os.read(self.fd, CHUNK)
        except BlockingIOError:
            return
        except OSError as e:
            self._give(None, LocalReadError(f"cannot read the local input: {e.strerror or e}"))
            return
        self._give(data, None)

    def _read_blocking(self) -> None:
        import select

        while self._wanted is not None:
            select.select([self.fd], [], [], 1.0)
            self.doRead()

    def _give(self, data: bytes | None, error: Any) -> None:
        if self._watchable and not self._closed:
            self.reactor.removeReader(self)
        d, self._wanted = self._wanted, None
        if data is not None:
            self.progress.add(len(data))
            if not data:
                self.close()
        if d is None:
            return
        if error is None:
            d.callback(data)
        else:
            d.errback(error)

    def stop(self) -> None:
        """Abandon the upload: a pending read fails (Interrupted), the descriptor gets its flags back."""
        if self._wanted is not None:
            self._give(None, Interrupted("interrupted"))
        self.close()

    def close(self) -> None:
        if not self._closed:
            import fcntl

            self._closed = True
            try:
                fcntl.fcntl(self.fd, fcntl.F_SETFL, self._flags)
            except OSError:
                pass


class NeedsName(OneOSError):
    """Standard input was to be put into a directory: it has no name to give the file."""

    code = "EISDIR"


class LocalReadError(OneOSError):
    """The local file or pipe being uploaded could not be read."""

    code = "EIO"


class FileSink:
    """Writes a download to ``.NAME.part`` and renames it into place at the end."""

    def __init__(self, path: Path, progress: Progress) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.oneos-part")
        self.f = open(self.tmp, "wb")
        self.progress = progress

    def write(self, data: bytes) -> defer.Deferred:
        self.f.write(data)
        self.progress.add(len(data))
        from twisted.internet import defer

        return defer.succeed(None)

    def finish(self) -> defer.Deferred:
        self.f.close()
        os.replace(self.tmp, self.path)
        from twisted.internet import defer

        return defer.succeed({"size": self.progress.done})

    def abort(self) -> None:
        self.f.close()
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def format_listing(entries: list[Any], long: bool) -> str:
    """``ls`` output: names, or ``ls -l`` style rows (pure, for tests)."""
    if not long:
        return "\n".join(e.name + ("/" if e.is_dir else "") for e in entries)
    rows = []
    for e in entries:
        kind = "d" if e.is_dir else "-"
        perms = stat_module.filemode(e.mode)[1:]
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.mtime))
        rows.append(f"{kind}{perms} {e.owner:<8} {e.size:>12} {when} {e.name}{'/' if e.is_dir else ''}")
    return "\n".join(rows)


def destination(target: str, name: str, is_dir: bool) -> str:
    """Where a copy named *name* lands given *target*, as cp decides (pure, for tests).

    Into *target* (as ``target/name``) when it ends with ``/`` or is an
    existing directory, else *target* itself.  Works for OneOS paths and
    local ones alike.
    """
    if target.endswith("/") or is_dir:
        return target.rstrip("/") + "/" + name if target.rstrip("/") else "/" + name
    return target


def _options(parser: argparse.ArgumentParser, top: bool) -> None:
    """The options every ``oneos fs`` command takes, before or after the command and its arguments.

    On the subcommands their default is SUPPRESS, so one given before the
    subcommand is not reset by the subcommand's parser.
    """
    unset: Any = None if top else argparse.SUPPRESS
    parser.add_argument("--pubsub", default=unset, help="broker URL (default: from $ONEOS_HOME/config.json)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0 if top else unset,
        help="seconds to wait for the broker and the service (default 10)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=unset,
        help="show a progress bar (default: when stderr is a terminal)",
    )


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="oneos fs", description=SUMMARY)
    _options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _options(p, top=False)
        return p

    p = command("put", "copy a local file (or '-', standard input) into OneOS; into REMOTE/ if it is a directory")
    p.add_argument("local", metavar="LOCAL")
    p.add_argument("remote", metavar="REMOTE")
    p.add_argument("--append", action="store_true", help="append instead of replacing")
    g = command("get", "copy a OneOS file to the local disk; into LOCAL/ if it is a directory (default .)")
    g.add_argument("remote", metavar="REMOTE")
    g.add_argument("local", metavar="LOCAL", nargs="?", default=".")
    ls = command("ls", "list a directory")
    ls.add_argument("path", nargs="?", default="/")
    ls.add_argument("-l", action="store_true", dest="long", help="long listing")
    c = command("cat", "print a file")
    c.add_argument("path")
    m = command("mkdir", "make a directory")
    m.add_argument("path")
    m.add_argument("-p", action="store_true", dest="parents", help="make parents too; no error if it exists")
    r = command("rm", "remove a file (or a directory with -r)")
    r.add_argument("path")
    r.add_argument("-r", action="store_true", dest="recursive")
    return parser.parse_args(argv)


def _local_input(local: str) -> tuple[Path | None, int | None, str | None]:
    """What ``put`` reads: (a regular file's path, else None; a pipe's descriptor, else None; an error)."""
    if local == "-":
        fd = sys.stdin.fileno()
        return (
            (None, fd, None) if not stat_module.S_ISREG(os.fstat(fd).st_mode) else (Path(f"/dev/fd/{fd}"), None, None)
        )
    path = Path(local)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None, None, f"{local}: no such local file"
    except OSError as e:
        return None, None, f"{local}: {e.strerror}"
    if stat_module.S_ISDIR(mode):
        return None, None, f"{local}: is a directory (copy its files one by one)"
    if stat_module.S_ISREG(mode):
        return path, None, None
    try:
        return None, os.open(path, os.O_RDONLY), None  # a FIFO, /dev/stdin on a pipe, a device
    except OSError as e:
        return None, None, f"{local}: {e.strerror}"


def run(argv: list[str]) -> int:
    args = _parse(argv)
    pubsub = getattr(args, "pubsub", None)
    timeout = float(getattr(args, "timeout", 10.0))
    progress_flag = getattr(args, "progress", None)
    show = sys.stderr.isatty() if progress_flag is None else progress_flag
    name = f"oneos fs {args.command}"

    local_path: Path | None = None
    local_fd: int | None = None
    if args.command == "put":
        local_path, local_fd, problem = _local_input(args.local)
        if problem is not None:
            print(f"{name}: {problem}", file=sys.stderr)
            return 1
    if args.command == "get":
        base = Path(args.remote.rstrip("/")).name
        target = Path(args.local)
        if args.local.endswith("/") and not target.is_dir():
            print(f"{name}: {args.local}: no such local directory", file=sys.stderr)
            return 1
        if target.is_dir():
            if not base:
                print(f"{name}: {args.remote}: name a file to copy", file=sys.stderr)
                return 1
            target = Path(destination(str(target), base, True))
        local_path = target

    #: what the command is doing that an interrupt must abandon (a source to stop, a part file to remove)
    underway: list[Any] = []
    #: ended: the job's outcome is in (result or error); interrupted: the reactor stopped before that;
    #: reader_gone: what we printed has no reader any more (a pipe into `head`)
    state = {"ended": False, "interrupted": False, "reader_gone": False}

    def on_shutdown() -> None:
        if not state["ended"]:  # stopped by a signal (Ctrl-C, SIGTERM) while the command ran
            state["interrupted"] = True
            for thing in underway:
                thing.stop() if isinstance(thing, (FileSource, PipeSource)) else thing.abort()

    from oneos.reactor import install_asyncio_reactor

    install_asyncio_reactor()
    from twisted.internet import reactor as global_reactor

    global_reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)

    from twisted.internet import defer

    def job(reactor: Any, client: Any) -> Any:
        # The answer run_with_client waits for: never given once interrupted, so the reactor, already
        # stopping, is not stopped twice, and the abandoned transfer's error is nobody's traceback.
        answer: defer.Deferred = defer.Deferred()

        def ended(result: Any) -> None:
            state["ended"] = True
            if not state["interrupted"]:
                answer.callback(result)

        work(reactor, client).addBoth(ended)
        return answer

    @inline_callbacks
    def work(reactor: Any, client: Any) -> Any:
        from oneos.fs.client import FSClient
        from oneos.fs.errors import NotFound

        fs = FSClient((yield network_rpc(reactor, client)), reactor, timeout=timeout)
        output: str | None = None
        if args.command == "put":
            label = local_path.name if local_path is not None and args.local != "-" else args.local
            remote = args.remote
            if not remote.endswith("/"):
                try:
                    is_dir = (yield fs.stat(remote)).is_dir
                except NotFound:
                    is_dir = False
            else:
                is_dir = True
            if is_dir:
                if args.local == "-":
                    raise NeedsName(f"{remote}: is a directory; name the file: {remote.rstrip('/')}/NAME")
                remote = destination(remote, Path(args.local).name, True)
            size = local_path.stat().st_size if local_path is not None else None
            progress = Progress(f"put {label}", size, sys.stderr, show)
            source: Any = (
                FileSource(local_path, progress)
                if local_path is not None
                else PipeSource(reactor, cast(int, local_fd), progress)
            )
            underway.append(source)
            try:
                st = yield fs.write_from(remote, source, "append" if args.append else "truncate")
            finally:
                if isinstance(source, PipeSource):
                    source.close()
            progress.finish()
            output = f"{st.path}: {st.size} bytes"
        elif args.command == "get":
            assert local_path is not None
            progress = Progress(f"get {Path(args.remote).name}", None, sys.stderr, show)
            sink = FileSink(local_path, progress)
            underway.append(sink)

            def opened(where: dict[str, Any]) -> None:
                progress.total = where.get("size")

            try:
                yield fs.read_into(args.remote, sink, on_open=opened)
            except BaseException:
                sink.abort()
                raise
            progress.finish()
        elif args.command == "ls":
            listing = yield fs.list_stat(args.path)  # one round trip: the stat and the entries
            entries = listing.entries_or_raise() if listing.stat.is_dir else [listing.stat]
            output = format_listing(entries, args.long) or None
        elif args.command == "cat":
            try:
                yield fs.read_into(args.path, OutputSink(sys.stdout.buffer))
            except ReaderGone:
                state["reader_gone"] = True  # `oneos fs cat F | head`: stop quietly, as cat does on SIGPIPE
        elif args.command == "mkdir":
            yield fs.mkdir(args.path, parents=args.parents, exist_ok=args.parents)
        elif args.command == "rm":
            yield fs.remove(args.path, recursive=args.recursive)
        return output

    try:
        output = run_with_client(pubsub or default_pubsub_url(), job, timeout=timeout)
    except KeyboardInterrupt:
        state["interrupted"] = True  # said below, with what was abandoned
        output = None
    finally:
        for thing in underway:
            if isinstance(thing, PipeSource):
                thing.close()
    if state["interrupted"]:
        # Ctrl-C (or SIGTERM): one line, the status of a command killed by SIGINT, nothing left half-done
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    if state["reader_gone"]:
        return SIGPIPE_STATUS
    if output:
        print(output)
    return 0
