"""``oneos devices``: the I/O devices of the grid, and reading or writing one from here.

* ``oneos devices [--json] [--detail]``: a table of every live runtime's
  devices (runtime, name, direction, driver, owner, mode, state, reason),
  from their retained statuses (every device is listed to everyone; who may
  read or write it is its owner and mode, docs/devices.md); ``--detail`` asks each runtime (``device_list``) for
  readers, writers, units, drops and a pin's value too;
* ``oneos devices cat RUNTIME/NAME [--units N] [--bytes N]``: the device's
  stream to standard output (``--units``, alias ``--frames``/``--lines``:
  stop after N whole frames, lines or chunks, cut at the device; ``--bytes``:
  stop after N bytes);
* ``oneos devices write RUNTIME/NAME``: standard input into the device.

``RUNTIME/NAME`` may also be written ``/dev/RUNTIME/NAME``.  A stream that
breaks (the device failed, its runtime died) ends the command with the
reason and status 1; a reader of our output that stops early (``| head``)
ends it quietly with status 141, as SIGPIPE would.

The table reads the retained statuses without Twisted, as ``oneos status``
does (oneos/cli/statusreader.py); Twisted and the devices client are
imported only for ``--detail``, ``cat`` and ``write``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from oneos.cli.common import (
    SIGPIPE_STATUS,
    ReaderGone,
    default_pubsub_url,
    inline_callbacks,
    network_rpc,
    run_with_client,
)
from oneos.devices.info import format_mode, parse_device_address
from oneos.errors import OneOSError
from oneos.runtime.status import ALIVE, RuntimeStatus

if TYPE_CHECKING:
    from twisted.internet import defer

SUMMARY = "list the grid's I/O devices; 'devices cat RUNTIME/NAME' reads one, 'devices write RUNTIME/NAME' writes one"

COLUMNS = ("RUNTIME", "NAME", "DIRECTION", "DRIVER", "OWNER", "MODE", "STATE", "REASON")
DETAIL_COLUMNS = (
    "RUNTIME",
    "NAME",
    "DIRECTION",
    "DRIVER",
    "OWNER",
    "MODE",
    "STATE",
    "READERS",
    "WRITERS",
    "UNITS",
    "DROPPED",
    "VALUE",
)


class DeviceStreamFailed(OneOSError):
    """Reading or writing a device from here broke; the message says which device and why."""


class _Enough(OneOSError):
    """``--bytes N`` reached: the stream is stopped on purpose."""


def rows_from_statuses(statuses: list[RuntimeStatus], now: float) -> list[dict[str, Any]]:
    """One row per device of each live runtime (pure, for tests)."""
    from oneos.cli.status import judged_state

    rows = []
    for status in sorted(statuses, key=lambda s: s.id):
        if judged_state(status, now) != ALIVE:
            continue  # a dead runtime's devices are gone with it
        for d in status.devices:
            rows.append(
                {
                    "runtime": status.id,
                    "name": d.name,
                    "direction": d.direction,
                    "driver": d.driver,
                    "state": d.state,
                    "reason": d.reason,
                    "owner": d.owner,
                    "mode": d.mode,
                }
            )
    return rows


def format_devices(rows: list[dict[str, Any]], detail: bool = False) -> str:
    """The table (pure, for tests)."""
    if not rows:
        return "no devices: no live runtime serves any (see 'devices' in config.json, or --device)"
    header = DETAIL_COLUMNS if detail else COLUMNS
    table = [header]
    for row in rows:
        owner, mode = row.get("owner") or "?", format_mode(row.get("mode"))
        if detail:
            value = row.get("value")
            table.append(
                (
                    row["runtime"],
                    row["name"],
                    row["direction"],
                    row["driver"],
                    owner,
                    mode,
                    row["state"],
                    str(row.get("readers", "-")),
                    str(row.get("writers", "-")),
                    str(row.get("units", "-")),
                    str(row.get("dropped", "-")),
                    "-" if value is None else str(value),
                )
            )
        else:
            table.append(
                (
                    row["runtime"],
                    row["name"],
                    row["direction"],
                    row["driver"],
                    owner,
                    mode,
                    row["state"],
                    row["reason"] or "-",
                )
            )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in table]
    if detail:
        lines += [f"{row['runtime']}/{row['name']}: {row['reason']}" for row in rows if row["reason"]]
    return "\n".join(lines)


def _list(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="oneos devices", description=SUMMARY)
    parser.add_argument("--pubsub", help="broker URL (default: from $ONEOS_HOME/config.json)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--detail", action="store_true", help="ask each runtime for readers, writers, units, drops and values"
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the broker (default 5)")
    args = parser.parse_args(argv)
    url = args.pubsub or default_pubsub_url()
    if not args.detail:
        from oneos.cli.statusreader import statuses_at

        rows = rows_from_statuses(statuses_at(url, args.timeout), time.time())
        print(json.dumps(rows, indent=2) if args.json else format_devices(rows))
        return 0

    @inline_callbacks
    def job(reactor: Any, client: Any) -> Any:
        from twisted.internet import defer

        from oneos.cli.status import collect
        from oneos.devices.client import DevicesClient

        statuses = yield collect(reactor, client)
        rows = rows_from_statuses(statuses, time.time())
        if not rows:
            return rows
        rpc = yield network_rpc(reactor, client)
        devices = DevicesClient(rpc, timeout=args.timeout)
        runtimes = sorted({row["runtime"] for row in rows})
        answers = yield defer.DeferredList([devices.list_devices(rt) for rt in runtimes], consumeErrors=True)
        detailed: dict[tuple[str, str], dict[str, Any]] = {}
        for ok, infos in answers:
            if ok:
                for info in infos:
                    detailed[(info.runtime, info.name)] = info.encode()
        return [detailed.get((row["runtime"], row["name"]), row) for row in rows]

    detailed_rows: list[dict[str, Any]] = run_with_client(url, job, timeout=args.timeout)
    print(json.dumps(detailed_rows, indent=2) if args.json else format_devices(detailed_rows, detail=True))
    return 0


class _LimitedSink:
    """Writes a stream to our stdout, stopping (on purpose) after *limit* bytes (0: no limit)."""

    def __init__(self, out: Any, limit: int = 0) -> None:
        from oneos.cli.common import OutputSink

        self.sink = OutputSink(out)
        self.limit = limit
        self.written = 0

    def write(self, data: bytes) -> defer.Deferred:
        if self.limit:
            data = data[: self.limit - self.written]
        self.written += len(data)
        d = self.sink.write(data)
        if self.limit and self.written >= self.limit:
            from twisted.internet import defer

            return d.addCallback(lambda _: defer.fail(_Enough("enough bytes")))
        return d

    def finish(self) -> defer.Deferred:
        return self.sink.finish()

    def abort(self) -> None:
        self.sink.abort()


def _stream_failed(what: str, runtime: str, failure: Any) -> DeviceStreamFailed:
    message = failure.getErrorMessage()
    if getattr(failure.value, "kind", "") == "EPIPE" and "vanished" in message:
        message += f" (did runtime {runtime} stop?)"
    return DeviceStreamFailed(f"{what}: {message}")


def _cat(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="oneos devices cat", description="read a device to standard output")
    parser.add_argument("--pubsub", help="broker URL (default: from $ONEOS_HOME/config.json)")
    parser.add_argument("device", metavar="RUNTIME/NAME")
    parser.add_argument(
        "--units",
        "--frames",
        "--lines",
        dest="units",
        type=int,
        default=0,
        metavar="N",
        help="stop after N units (frames of a video device, lines of a gpio one, chunks otherwise), whole",
    )
    parser.add_argument("--bytes", "-c", dest="bytes", type=int, default=0, metavar="N", help="stop after N bytes")
    args = parser.parse_args(argv)
    if args.units < 0 or args.bytes < 0:
        parser.error("--units and --bytes take a count")
    runtime, name = parse_device_address(args.device)
    what = f"{runtime}/{name}"

    @inline_callbacks
    def job(reactor: Any, client: Any) -> Any:
        from twisted.python.failure import Failure

        from oneos.devices.client import DevicesClient
        from oneos.transfer import receive

        rpc = yield network_rpc(reactor, client, default_timeout=15.0)
        where = yield DevicesClient(rpc).read(runtime, name, units=args.units)
        sink = _LimitedSink(sys.stdout.buffer, args.bytes)
        try:
            yield receive(reactor, where.host, where.port, where.token, sink, **where.options())
        except _Enough:
            return 0
        except ReaderGone:
            return SIGPIPE_STATUS
        except OneOSError:
            raise _stream_failed(what, runtime, Failure()) from None
        return 0

    return int(run_with_client(args.pubsub or default_pubsub_url(), job))


def _write(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="oneos devices write", description="write standard input into a device")
    parser.add_argument("--pubsub", help="broker URL (default: from $ONEOS_HOME/config.json)")
    parser.add_argument("device", metavar="RUNTIME/NAME")
    args = parser.parse_args(argv)
    runtime, name = parse_device_address(args.device)
    what = f"{runtime}/{name}"

    @inline_callbacks
    def job(reactor: Any, client: Any) -> Any:
        from twisted.python.failure import Failure

        from oneos.cli.run import LocalSource
        from oneos.devices.client import DevicesClient
        from oneos.transfer import send

        rpc = yield network_rpc(reactor, client, default_timeout=15.0)
        where = yield DevicesClient(rpc).write(runtime, name)
        try:
            yield send(reactor, where.host, where.port, where.token, LocalSource(sys.stdin.buffer), **where.options())
        except OneOSError:
            raise _stream_failed(what, runtime, Failure()) from None
        return 0

    return int(run_with_client(args.pubsub or default_pubsub_url(), job))


def run(argv: list[str]) -> int:
    if argv and argv[0] == "cat":
        return _cat(argv[1:])
    if argv and argv[0] == "write":
        return _write(argv[1:])
    if argv and argv[0] == "list":
        return _list(argv[1:])
    return _list(argv)
