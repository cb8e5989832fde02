"""``oneos fs``: move data in and out of the OneOS file tree from the host.

``put``/``get`` stream through the file-system service with a progress bar
on a terminal; ``get`` writes to a temporary file and renames it at the end,
so a failed transfer never leaves a partial local file (and the service
guarantees the same for ``put``).
"""

from __future__ import annotations

import argparse
import os
import stat as stat_module
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from twisted.internet import defer

from oneos.cli.common import OutputSink, default_pubsub_url, network_rpc, run_with_client

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
    """Reads a local file in chunks for an upload."""

    def __init__(self, path: Path, progress: Progress) -> None:
        self.f = open(path, "rb")
        self.progress = progress

    def next(self) -> defer.Deferred:
        data = self.f.read(CHUNK)
        if not data:
            self.f.close()
        self.progress.add(len(data))
        return defer.succeed(data)


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
        return defer.succeed(None)

    def finish(self) -> defer.Deferred:
        self.f.close()
        os.replace(self.tmp, self.path)
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


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="oneos fs", description=SUMMARY)
    parser.add_argument("--pubsub", help="broker URL (default: from $ONEOS_HOME/config.json)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the broker and the service")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: when stderr is a terminal)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("put", help="copy a local file into OneOS")
    p.add_argument("local", type=Path)
    p.add_argument("remote")
    p.add_argument("--append", action="store_true", help="append instead of replacing")
    g = sub.add_parser("get", help="copy a OneOS file to the local disk")
    g.add_argument("remote")
    g.add_argument("local", type=Path)
    ls = sub.add_parser("ls", help="list a directory")
    ls.add_argument("path", nargs="?", default="/")
    ls.add_argument("-l", action="store_true", dest="long", help="long listing")
    c = sub.add_parser("cat", help="print a file")
    c.add_argument("path")
    m = sub.add_parser("mkdir", help="make a directory")
    m.add_argument("path")
    m.add_argument("-p", action="store_true", dest="parents", help="make parents too; no error if it exists")
    r = sub.add_parser("rm", help="remove a file (or a directory with -r)")
    r.add_argument("path")
    r.add_argument("-r", action="store_true", dest="recursive")
    args = parser.parse_args(argv)
    show = sys.stderr.isatty() if args.progress is None else args.progress

    if args.command == "put":
        if not args.local.is_file():
            print(f"oneos fs put: {args.local}: no such local file", file=sys.stderr)
            return 1
    if args.command == "get" and args.local.is_dir():
        args.local = args.local / Path(args.remote).name

    @defer.inlineCallbacks
    def job(reactor: Any, client: Any) -> Any:
        from oneos.fs.client import FSClient

        fs = FSClient((yield network_rpc(reactor, client)), reactor, timeout=args.timeout)
        if args.command == "put":
            progress = Progress(f"put {args.local.name}", args.local.stat().st_size, sys.stderr, show)
            st = yield fs.write_from(
                args.remote, FileSource(args.local, progress), "append" if args.append else "truncate"
            )
            progress.finish()
            return f"{st.path}: {st.size} bytes"
        if args.command == "get":
            progress = Progress(f"get {Path(args.remote).name}", None, sys.stderr, show)
            sink = FileSink(args.local, progress)

            def opened(where: dict[str, Any]) -> None:
                progress.total = where.get("size")

            try:
                yield fs.read_into(args.remote, sink, on_open=opened)
            except BaseException:
                sink.abort()
                raise
            progress.finish()
            return None
        if args.command == "ls":
            st = yield fs.stat(args.path)
            entries = (yield fs.listdir(args.path)) if st.is_dir else [st]
            return format_listing(entries, args.long) or None
        if args.command == "cat":
            yield fs.read_into(args.path, OutputSink(sys.stdout.buffer))
            return None
        if args.command == "mkdir":
            yield fs.mkdir(args.path, parents=args.parents, exist_ok=args.parents)
            return None
        if args.command == "rm":
            yield fs.remove(args.path, recursive=args.recursive)
            return None
        return None

    output = run_with_client(args.pubsub or default_pubsub_url(), job, timeout=args.timeout)
    if output:
        print(output)
    return 0
