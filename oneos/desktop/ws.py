"""The desktop's websocket (``/ws``): operations onto the network's RPC, channels, terminals.

:func:`websocket_resource` is what the HTTP side mounts at ``/ws``: an
Autobahn ``WebSocketResource`` whose protocol, :class:`DesktopProtocol`,
checks the handshake (a live session in the ``oneos_session`` cookie, an
``Origin`` that is the page's own; otherwise HTTP 403) and hands every
message to a :class:`Connection`, which does the work:

* **operations** (docs/desktop.md, "Operations"), parsed and checked by
  :mod:`oneos.desktop.protocol`, run as the logged-in user: file operations
  with the user's file client (``ctx.grid.for_user(user).fs``), programs
  through the scheduler with ``user=``, their input and output only for
  their owner (or root), runtimes from the membership.  Each answers
  ``{"id", "ok", "result"}`` or ``{"id", "ok": false, "error": {kind,
  message}}``; a malformed frame is answered (kind ``EINVAL``) and the
  connection stays open;
* **channels**: ``runtimes`` (the membership's view, pushed on every change,
  a dead runtime included), ``agents`` (the agents' retained statuses, one
  broker subscription shared by every websocket of this runtime),
  ``pipes`` (polled every 2 s), ``output:AGENT`` (the program's stdout and
  stderr, one reader per agent shared by every websocket of this runtime,
  so a reconnecting page joins the same stream), ``device:RT/NAME`` (an
  input device read as the user, one reader per user and device shared by
  that user's tabs: a camera's frames as binary frames, anything else as
  text events);
* **devices**: ``devices.list`` (every live runtime's ``device_list``, as
  the user) and ``device.write`` (a few bytes into an output device, as the
  user); the devices' runtimes decide who may use what;
* **terminals** (:mod:`oneos.desktop.terminal`): binary frames ``[N][bytes]``.

Nothing blocks and nothing grows without bound: requests in flight,
subscriptions, terminals and program inputs are limited per connection.
When the browser does not read (the socket's buffer is full: the transport
pauses its producer), frames wait in a queue that events may fill only up
to :data:`EVENT_HOLD`; past it an ``output:`` channel's text is dropped and
counted (a marker says how much once the browser reads again), a state
channel is marked stale and sent whole again, and terminals keep only
their scrollback ring.  A device channel's video frames never wait in
that queue: while the browser is behind, each subscription keeps only the
newest frame and sends it when the browser reads again (older ones are
dropped whole).  A connection whose queue still grows past
:data:`HARD_LIMIT` (answers it could not drop) is closed.
"""

from __future__ import annotations

import codecs
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer, task
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from oneos import TOPIC_ROOT
from oneos.agents.client import AgentsClient
from oneos.agents.info import ATTACH, DISCARD, AgentError, AgentInfo, exit_status
from oneos.agents.watch import watch_agent
from oneos.desktop import protocol as wire
from oneos.desktop.context import DesktopContext
from oneos.desktop.protocol import AGENTS, DEVICE, OUTPUT, PIPES, RUNTIMES, Channel, DesktopError
from oneos.desktop.sessions import COOKIE, WebSession
from oneos.desktop.terminal import MAX_PER_CONNECTION, TerminalRegistry, WebTerminal
from oneos.devices.client import DevicesClient
from oneos.devices.errors import DENIED, NOT_FOUND, DeviceError
from oneos.devices.info import INPUT
from oneos.devices.info import OUTPUT as DEVICE_OUTPUT
from oneos.devices.mjpeg import FrameSplitter, MJPEGError
from oneos.errors import OneOSError, describe, error_kind
from oneos.fs.errors import IsADirectory, NotFound
from oneos.pubsub import messages, topics
from oneos.scheduler.client import SchedulerClient, StageSpec
from oneos.scheduler.pipeline import PipelineSyntaxError, parse_pipeline
from oneos.transfer import receive, send

log = Logger()

#: Websockets one login session may have open at once (tabs); more are refused (HTTP 429).
MAX_SOCKETS_PER_SESSION = 32
#: Websockets this runtime serves at once; more are refused (HTTP 503).
MAX_SOCKETS = 1000
#: Requests one connection may have in flight; more are refused (EBUSY) until answers go out.
MAX_INFLIGHT = 32
#: Channels one connection may be subscribed to.
MAX_SUBSCRIPTIONS = 64
#: Programs whose input one connection may be feeding at once.
MAX_INPUTS = 16
#: Bytes of one program's input waiting for the program to read it (from one connection).
INPUT_HOLD = 1024 * 1024
#: Programs whose output this runtime reads for its browsers at once.
MAX_OUTPUT_FEEDS = 256
#: Bytes of events that may wait for a browser that does not read; past it events are dropped.
EVENT_HOLD = 1024 * 1024
#: Bytes of frames (answers included) waiting for a browser after which the connection is closed.
HARD_LIMIT = 64 * 1024 * 1024
#: Largest answer sent (a huge directory listing is refused rather than sent).
MAX_REPLY = 32 * 1024 * 1024
#: Characters of program output in one event.
OUTPUT_EVENT = 64 * 1024
#: Most stages of a ``proc.pipeline``.
MAX_STAGES = 32
#: Seconds between two ``pipes`` events.
PIPES_INTERVAL = 2.0
#: Seconds between two diffs of the runtimes' statuses (CPU, memory), besides the membership's changes.
RUNTIMES_INTERVAL = 2.0
#: Seconds between checks that a connection's login session is still live.
SESSION_CHECK = 30.0
#: Seconds an ended program's output channel keeps its last event for late subscribers.
KEEP_FINISHED = 60.0
#: Seconds between asking the scheduler whether an agent whose streams ended has ended (its status may be gone).
END_POLL = 5.0
#: Device streams this runtime reads for its browsers at once (one per user and device).
MAX_DEVICE_FEEDS = 64
#: Seconds to wait for a device's runtime to answer (device_list, device_read, device_write).
DEVICE_RPC_TIMEOUT = 10.0
#: Largest video frame relayed (bytes); a stream with a larger one ends with an error.
MAX_VIDEO_FRAME = 8 * 1024 * 1024
#: Seconds between two text events of one device (its stream waits meanwhile: the device drops or pauses).
DEVICE_TEXT_INTERVAL = 0.1
#: Characters of a device's text in one event (the newest) and kept for a tab that joins.
DEVICE_TEXT = 4096
#: Close code sent when the login session ends (logout, expiry).
CLOSE_SESSION_ENDED = 4001
#: Close code sent when the browser fell too far behind.
CLOSE_TOO_SLOW = 4002
#: Close code sent when the desktop stops (the runtime stops).
CLOSE_STOPPING = 4003

LIVE_STATES = ("running", "paused")

#: The headers docs/desktop.md puts on every answer, /ws's included.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


# -- what answers carry ---------------------------------------------------------------------------------


def status_json(status: Any) -> dict[str, Any]:
    """A runtime's status as ``oneos status --json`` prints it (the state as the membership judges it now)."""
    body = asdict(status)
    body["tags"] = list(status.tags)
    body["interpreters"] = list(status.interpreters)
    return body


def entry(stat: Any) -> dict[str, Any]:
    """A file-tree entry as ``fs.list`` and ``fs.stat`` answer it."""
    return {
        "name": stat.name,
        "path": stat.path,
        "kind": stat.kind,
        "size": stat.size,
        "mode": stat.mode,
        "owner": stat.owner,
        "mtime": stat.mtime,
    }


@dataclass
class AfterReply:
    """An operation's result, and what to do once the answer is sent (the first events of a channel)."""

    result: Any
    then: Callable[[], Any]


class _LimitedSink:
    """Collects a file's bytes for ``fs.read``; refuses (EFBIG) past *limit*."""

    def __init__(self, path: str, limit: int) -> None:
        self.path = path
        self.limit = limit
        self.data = bytearray()

    def write(self, data: bytes) -> defer.Deferred:
        if len(self.data) + len(data) > self.limit:
            return defer.fail(_too_big(self.path, len(self.data) + len(data)))
        self.data += data
        return defer.succeed(None)

    def finish(self) -> defer.Deferred:
        return defer.succeed({"size": len(self.data)})

    def abort(self) -> None:
        pass


def _too_big(path: str, size: int) -> DesktopError:
    return DesktopError(
        f"{path}: {size} bytes is too large to open here (at most {wire.MAX_READ // (1024 * 1024)} MiB): download it",
        "EFBIG",
    )


class InputFeed:
    """One program's input from one connection: a transfer Source fed by ``proc.stdin``.

    What the browser sends waits here (at most :data:`INPUT_HOLD` bytes)
    until the stream to the program's runtime takes it; ``eof`` ends the
    stream, which closes the program's input.
    """

    def __init__(self, agent_id: str, limit: int = INPUT_HOLD) -> None:
        self.agent_id = agent_id
        self.limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self.eof = False
        self.error: Exception | None = None
        self._waiter: defer.Deferred | None = None

    def put(self, data: bytes, eof: bool = False) -> None:
        if self.error is not None:
            raise self.error
        if self.eof:
            raise AgentError(f"the input of agent {self.agent_id} has already ended", "EPIPE")
        if data:
            if self._size + len(data) > self.limit:
                raise DesktopError(
                    f"agent {self.agent_id} has not read its input yet ({self._size} bytes wait); try again later",
                    "EAGAIN",
                )
            self._chunks.append(data)
            self._size += len(data)
        self.eof = self.eof or eof
        self._wake()

    def fail(self, error: Exception) -> None:
        """The stream broke: what waits is dropped, later puts fail with *error*."""
        self.error = error
        self._chunks.clear()
        self._size = 0

    def end(self) -> None:
        """No more input (the connection went away)."""
        if not self.eof:
            self.eof = True
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and (self._chunks or self.eof):
            d, self._waiter = self._waiter, None
            d.callback(self._take())

    def _take(self) -> bytes:
        if not self._chunks:
            return b""
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        return data

    # transfer.Source
    def next(self) -> defer.Deferred:
        if self._chunks or self.eof:
            return defer.succeed(self._take())
        self._waiter = defer.Deferred()
        return self._waiter


# -- channels shared by every websocket of this runtime ------------------------------------------------------


class RuntimesFeed:
    """The membership's view, diffed on its changes and every :data:`RUNTIMES_INTERVAL` seconds."""

    def __init__(self, hub: DesktopHub) -> None:
        self.hub = hub
        self.subs: set[_RuntimesSub] = set()
        self._last: dict[str, dict[str, Any]] = {}
        self._loop: task.LoopingCall | None = None

    def snapshot(self) -> list[dict[str, Any]]:
        return [status_json(s) for s in self.hub.ctx.membership.statuses()]

    def add(self, sub: _RuntimesSub) -> None:
        self.hub.watch_membership()
        if not self.subs:
            self._last = {s["id"]: s for s in self.snapshot()}
            self._loop = task.LoopingCall(self.changed)
            self._loop.clock = self.hub.ctx.reactor
            self._loop.start(RUNTIMES_INTERVAL, now=False).addErrback(lambda f: log.failure("runtimes feed", f))
        self.subs.add(sub)
        sub.push({"statuses": self.snapshot()})

    def remove(self, sub: _RuntimesSub) -> None:
        self.subs.discard(sub)
        if not self.subs and self._loop is not None:
            if self._loop.running:
                self._loop.stop()
            self._loop = None

    def changed(self) -> None:
        """Push every status that differs from the last pushed (a runtime now dead included)."""
        if not self.subs:
            return
        now = {s["id"]: s for s in self.snapshot()}
        gone = set(self._last) - set(now)
        changed = [s for rid, s in now.items() if self._last.get(rid) != s]
        self._last = now
        for sub in list(self.subs):
            if gone:
                sub.push({"statuses": list(now.values())})
            else:
                for status in changed:
                    sub.push({"status": status})


class AgentsFeed:
    """Every agent's retained status (``oneos/v1/agents/RT/ID``), from one broker subscription."""

    def __init__(self, hub: DesktopHub) -> None:
        self.hub = hub
        self.subs: set[_AgentsSub] = set()
        #: "RUNTIME/ID" -> the agent's record (AgentInfo.encode())
        self.table: dict[str, dict[str, Any]] = {}
        self.ready = False
        self._starting = False
        self._generation = 0
        self._subscription: Any = None
        #: agents pushed as lost (their runtime is not live), so they are pushed once
        self._lost: set[str] = set()

    def snapshot(self) -> list[dict[str, Any]]:
        live = self.hub.live_ids()
        return sorted((self._view(info, live) for info in self.table.values()), key=lambda i: (i["runtime"], i["id"]))

    @staticmethod
    def _view(info: dict[str, Any], live: set[str]) -> dict[str, Any]:
        """As ``oneos ps`` shows it: an agent of a runtime that is not live is lost, not running."""
        if info.get("state") in LIVE_STATES and info["runtime"] not in live:
            return {
                **info,
                "state": "lost",
                "reason": info.get("reason") or f"runtime {info['runtime']} is unreachable",
            }
        return info

    def add(self, sub: _AgentsSub) -> None:
        self.hub.watch_membership()
        self.subs.add(sub)
        if self.ready:
            sub.push({"agents": self.snapshot()})
        elif not self._starting:
            self._start()

    def remove(self, sub: _AgentsSub) -> None:
        self.subs.discard(sub)
        if not self.subs:
            self._generation += 1
            self.ready = self._starting = False
            self.table.clear()
            self._lost.clear()
            subscription, self._subscription = self._subscription, None
            if subscription is not None:
                subscription.cancel().addErrback(lambda f: None)

    def _start(self) -> None:
        self._starting = True
        self._generation += 1
        stale, self._subscription = self._subscription, None
        if stale is not None:  # a start that failed half-way
            stale.cancel().addErrback(lambda f: None)
        generation = self._generation
        client = self.hub.ctx.grid.client

        def subscribed(subscription: Any) -> Any:
            if generation != self._generation:  # everyone left meanwhile
                subscription.cancel().addErrback(lambda f: None)
                return None
            self._subscription = subscription
            return client.barrier()

        def synced(_: Any) -> None:
            if generation != self._generation:
                return
            self._starting, self.ready = False, True
            snapshot = self.snapshot()
            for sub in list(self.subs):
                sub.push({"agents": snapshot})

        def failed(failure: Failure) -> None:
            if generation != self._generation:
                return
            log.warn("desktop: cannot follow the agents' statuses: {e}", e=failure.getErrorMessage())
            self._starting = False
            for sub in list(self.subs):
                sub.push({"error": f"cannot follow the agents: {failure.getErrorMessage()}"})

        d = client.subscribe(topics.ALL_AGENTS, lambda m: self._message(m, generation))
        d.addCallback(subscribed).addCallbacks(synced, failed)

    def _message(self, message: Any, generation: int) -> None:
        if generation != self._generation:
            return
        prefix = f"{TOPIC_ROOT}/agents/"
        if not message.topic.startswith(prefix):
            return
        key = message.topic[len(prefix) :]
        if key.count("/") != 1:
            return
        if not message.payload:  # the retained status was cleared (ended long ago)
            old = self.table.pop(key, None)
            self._lost.discard(key)
            if old is not None and self.ready:
                for sub in list(self.subs):
                    sub.push({"agent": {**old, "gone": True}})
            return
        try:
            info = AgentInfo.decode(messages.decode(message.payload, "agent.status")).encode()
        except (messages.MalformedMessage, OneOSError) as e:
            log.warn("desktop: dropped a malformed agent status on {topic}: {e}", topic=message.topic, e=str(e))
            return
        self.table[key] = info
        self._lost.discard(key)
        if self.ready:
            view = self._view(info, self.hub.live_ids())
            for sub in list(self.subs):
                sub.push({"agent": view})

    def membership_changed(self) -> None:
        """Agents of runtimes that just stopped being live are pushed as lost."""
        if not self.ready or not self.subs:
            return
        live = self.hub.live_ids()
        for key, info in list(self.table.items()):
            if info.get("state") not in LIVE_STATES:
                continue
            if info["runtime"] in live:
                self._lost.discard(key)
            elif key not in self._lost:
                self._lost.add(key)
                view = self._view(info, live)
                for sub in list(self.subs):
                    sub.push({"agent": view})


class _TextSink:
    """One output stream of a program, decoded as UTF-8 (invalid bytes replaced), into its feed."""

    def __init__(self, feed: OutputFeed, stream: str) -> None:
        self.feed = feed
        self.stream = stream
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(self, data: bytes) -> defer.Deferred:
        self.feed.text(self.stream, self._decoder.decode(data))
        return defer.succeed(None)

    def finish(self) -> defer.Deferred:
        self.feed.text(self.stream, self._decoder.decode(b"", final=True))
        return defer.succeed({})

    def abort(self) -> None:
        pass


class OutputFeed:
    """A program's stdout and stderr, read once for every browser of this runtime that watches it.

    The program's output is held by its runtime until someone reads it
    (``attach``); this reads it to its end, whoever watches, and forwards
    it to the subscribers of ``output:AGENT`` as they come and go.  Then
    comes ``{"end": true, "status": N}``, or ``{"error": ...}`` if a stream
    broke or the program's runtime stopped being live; that last event stays
    for :data:`KEEP_FINISHED` seconds for late subscribers.
    """

    def __init__(self, hub: DesktopHub, info: AgentInfo) -> None:
        self.hub = hub
        self.agent = info.id
        self.runtime = info.runtime
        self.info = info
        self.subs: set[_OutputSub] = set()
        #: the last event, once there is one
        self.final: dict[str, Any] | None = None
        self._drained = False
        self._status: dict[str, Any] | None = None
        self._watch: Any = None
        self._poll: task.LoopingCall | None = None
        self._expiry: Any = None

    def start(self) -> None:
        target = self.info.stdout_to.kind
        streams = (["stdout"] if target == ATTACH else []) + ([] if target == DISCARD else ["stderr"])
        if self.info.ended:
            self._status = self.info.encode()
        ended, subscribed = watch_agent(self.hub.ctx.grid.client, self.runtime, self.agent)
        subscribed.addCallbacks(self._subscribed, lambda f: None)
        ended.addCallbacks(self._ended, lambda f: None)
        reads = defer.DeferredList(
            [defer.ensureDeferred(self._read(name)) for name in streams], fireOnOneErrback=True, consumeErrors=True
        )
        reads.addCallbacks(self._streams_done, self._stream_failed)

    async def _read(self, stream: str) -> Any:
        where = await self.hub.agents.attach(self.runtime, self.agent, stream)
        return await self.hub.receive(
            self.hub.ctx.reactor, where.host, where.port, where.token, _TextSink(self, stream), **where.options()
        )

    def _subscribed(self, subscription: Any) -> None:
        if self.final is not None:
            subscription.cancel().addErrback(lambda f: None)
        else:
            self._watch = subscription

    def _ended(self, body: dict[str, Any]) -> None:
        self._status = body
        if self._drained:
            self._finish_end()

    def _streams_done(self, _: Any) -> None:
        self._drained = True
        if self._status is not None:
            self._finish_end()
            return
        # The retained status may be gone (the program ended long ago): ask the scheduler now and then too.
        self._poll = task.LoopingCall(self._ask)
        self._poll.clock = self.hub.ctx.reactor
        self._poll.start(END_POLL, now=False).addErrback(lambda f: None)

    def _ask(self) -> None:
        def located(info: AgentInfo) -> None:
            if info.ended and self._status is None:
                self._ended(info.encode())

        self.hub.scheduler.locate(self.agent).addCallbacks(located, lambda f: None)

    def _stream_failed(self, failure: Failure) -> None:
        error = failure.value.subFailure if isinstance(failure.value, defer.FirstError) else failure
        self.finish({"error": f"the output of agent {self.agent} broke: {error.getErrorMessage()}"})

    def _finish_end(self) -> None:
        status = self._status or {}
        try:
            code = exit_status(status) if "state" in status else 1
        except (KeyError, TypeError, ValueError):
            code = 1
        self.finish({"end": True, "status": code})

    def text(self, stream: str, text: str) -> None:
        if self.final is not None or not text:
            return
        for i in range(0, len(text), OUTPUT_EVENT):
            piece = text[i : i + OUTPUT_EVENT]
            for sub in list(self.subs):
                sub.output(stream, piece)

    def membership_changed(self, live: set[str]) -> None:
        if self.final is None and self.runtime not in live:
            self.finish(
                {
                    "error": f"runtime {self.runtime} is unreachable (it died, or the network is cut): "
                    f"the output of agent {self.agent} is lost"
                }
            )

    def finish(self, body: dict[str, Any]) -> None:
        if self.final is not None:
            return
        self.final = body
        for sub in list(self.subs):
            sub.push(body)
        self.stop()
        self._expiry = self.hub.ctx.reactor.callLater(KEEP_FINISHED, self.hub.forget_output, self)

    def stop(self) -> None:
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        self._poll = None
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel().addErrback(lambda f: None)

    def close(self) -> None:
        """The hub stops: nothing more is forwarded."""
        if self.final is None:
            self.final = {"error": "the desktop stopped"}
        self.stop()
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()


class _DeviceSink:
    """A device's stream into its feed, as a transfer Sink."""

    def __init__(self, feed: DeviceFeed) -> None:
        self.feed = feed

    def write(self, data: bytes) -> defer.Deferred:
        return self.feed.received(data)

    def finish(self) -> defer.Deferred:
        return defer.succeed({})

    def abort(self) -> None:
        pass


class _OneShot:
    """A transfer Source giving *data* once, then its end (``device.write``)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def next(self) -> defer.Deferred:
        data, self.data = self.data, b""
        return defer.succeed(data)


class DeviceFeed:
    """One input device read as one user, for every tab of that user that watches it (``device:RT/NAME``).

    The device's runtime is asked for a stream as the user
    (``device_read``, which checks the device's owner and mode); the feed
    connects once it has the address and relays what comes:

    * a camera (driver ``video``): the stream is cut into whole JPEG frames
      (:class:`~oneos.devices.mjpeg.FrameSplitter`) and each goes to every
      subscription as one binary frame (:func:`oneos.desktop.protocol.device_frame`).
      The sink never waits, so the device's own fan-out never holds a frame
      for us; each subscription drops what its browser cannot take;
    * anything else (a pin, a line device, a program's output): its text
      (UTF-8, invalid bytes replaced) as ``{"data", "bytes"}`` events, at
      most one per :data:`DEVICE_TEXT_INTERVAL`: the sink waits that long
      between writes, so a fast device (``random``) is paced by its own
      rules (dropped or paused at its runtime) rather than flooding the tab.

    The newest frame (or the last :data:`DEVICE_TEXT` characters) is kept
    for a tab that joins later.  The feed ends with ``{"end": true}`` when the
    device's stream ends, or ``{"error", "kind"}`` when it fails, its runtime
    dies or the device is refused; then it is forgotten, so the next
    ``sub.open`` asks again.  When its last subscriber leaves the stream is
    closed (the transfer is cancelled), so the device's runtime sees its
    reader leave at once.
    """

    def __init__(self, hub: DesktopHub, user: str, runtime: str, name: str, driver: str) -> None:
        self.hub = hub
        self.user = user
        self.runtime = runtime
        self.name = name
        self.key = (user, runtime, name)
        self.channel = Channel(DEVICE, runtime=runtime, device=name).name
        self.video = driver == "video"
        self.subs: set[_DeviceSub] = set()
        #: the last event once there is one (end or error); nothing is relayed after it
        self.final: dict[str, Any] | None = None
        self.ready = False
        #: sub.open requests waiting for the device's runtime to answer
        self._waiters: list[defer.Deferred] = []
        self._reading: defer.Deferred | None = None
        self._pace: defer.Deferred | None = None
        self._splitter = FrameSplitter(MAX_VIDEO_FRAME)
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        #: the newest frame, as the binary frame a joining tab is sent first
        self.last_frame: bytes | None = None
        #: the newest text (at most DEVICE_TEXT characters)
        self.last_text = ""
        self.frames = 0
        self.bytes = 0

    # -- opening -----------------------------------------------------------------------------------
    def start(self) -> None:
        d = self.hub.devices_for(self.user).read(self.runtime, self.name)
        d.addCallbacks(self._opened, self._refused)

    def when_ready(self) -> defer.Deferred:
        """Fires with this feed once the device's runtime gave a stream, or fails with its refusal."""
        if self.final is not None and "error" in self.final:
            return defer.fail(DesktopError(self.final["error"], self.final.get("kind", "EIO")))
        if self.ready:
            return defer.succeed(self)
        d: defer.Deferred = defer.Deferred()
        self._waiters.append(d)
        return d

    def _opened(self, where: Any) -> None:
        if self.final is not None:  # everyone left, or the runtime died, while we waited
            return
        self.ready = True
        self._reading = self.hub.receive(
            self.hub.ctx.reactor, where.host, where.port, where.token, _DeviceSink(self), **where.options()
        )
        self._reading.addCallbacks(lambda _: self.finish({"end": True}), self._broke)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self)

    def _refused(self, failure: Failure) -> None:
        error = failure.value
        if not isinstance(error, OneOSError):
            log.failure("desktop: asking for device {rt}/{name} failed", failure, rt=self.runtime, name=self.name)
        self.finish({"error": describe(error), "kind": error_kind(error)})

    # -- relaying ------------------------------------------------------------------------------------
    def received(self, data: bytes) -> defer.Deferred:
        if self.final is not None:
            return defer.succeed(None)
        self.bytes += len(data)
        if self.video:
            try:
                frames = self._splitter.feed(data)
            except MJPEGError as e:
                return defer.fail(DesktopError(f"device {self.name} on {self.runtime}: {e}", "EPROTO"))
            for frame in frames:
                self.frames += 1
                payload = self.last_frame = wire.device_frame(self.channel, frame)
                for sub in list(self.subs):
                    sub.frame(payload)
            return defer.succeed(None)
        text = self._decoder.decode(data)
        if not text:
            return defer.succeed(None)
        self.last_text = (self.last_text + text)[-DEVICE_TEXT:]
        body = {"data": text[-DEVICE_TEXT:], "bytes": self.bytes}
        if len(text) > DEVICE_TEXT:
            body["dropped"] = len(text) - DEVICE_TEXT
        for sub in list(self.subs):
            sub.push(body)
        self._pace = task.deferLater(self.hub.ctx.reactor, DEVICE_TEXT_INTERVAL, lambda: None)
        return self._pace

    def _broke(self, failure: Failure) -> None:
        if self.final is not None or failure.check(defer.CancelledError):
            return
        error = failure.value
        message = describe(error)
        if error_kind(error) == "EPIPE" and "vanished" in message:
            message = f"{message} (did runtime {self.runtime} stop?)"
        self.finish({"error": f"device {self.name} on {self.runtime}: {message}", "kind": error_kind(error)})

    def membership_changed(self, live: set[str]) -> None:
        if self.final is None and self.runtime not in live:
            self.finish(
                {
                    "error": f"runtime {self.runtime} is unreachable (it died, or the network is cut): "
                    f"the stream of device {self.name} ended",
                    "kind": "EPIPE",
                }
            )

    # -- subscribers ----------------------------------------------------------------------------------
    def join(self, sub: _DeviceSub) -> None:
        """*sub* gets what comes next, after the newest frame or text (so a second tab sees the picture at once)."""
        if self.final is not None:
            sub.end(self.final)
            return
        self.subs.add(sub)
        sub.push({"open": True, "video": self.video})
        if self.last_frame is not None:
            sub.frame(self.last_frame)
        elif self.last_text:
            sub.push({"data": self.last_text, "bytes": self.bytes})

    def leave(self, sub: _DeviceSub | None) -> None:
        """*sub* left (None: a request that opened the feed went away before joining it): close when nobody is left."""
        if sub is not None:
            self.subs.discard(sub)
        if not self.subs and not self._waiters and self.final is None:
            self.close()

    def finish(self, body: dict[str, Any]) -> None:
        """The stream ended (*body*: ``end`` or ``error``): say so to every subscriber, stop, be forgotten."""
        if self.final is not None:
            return
        self.final = body
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(DesktopError(body.get("error", "the device's stream ended"), body.get("kind", "EIO")))
        subs, self.subs = list(self.subs), set()
        for sub in subs:
            sub.end(body)
        self._stop()

    def close(self) -> None:
        """Nobody watches any more (or the desktop stops): close the stream without a word."""
        if self.final is None:
            self.final = {"end": True}
        self.subs.clear()
        self._stop()

    def _stop(self) -> None:
        self.hub.forget_device(self)
        reading, self._reading = self._reading, None
        if reading is not None and not reading.called:
            reading.cancel()
        pace, self._pace = self._pace, None
        if pace is not None and not pace.called:
            pace.cancel()


class DesktopHub:
    """What every websocket of this runtime shares: the context, the RPC clients, the shared channels,
    the terminals (a reattach may come on any websocket)."""

    def __init__(
        self,
        ctx: DesktopContext,
        *,
        scheduler: Any = None,
        agents: Any = None,
        devices: Any = None,
        receive: Callable[..., defer.Deferred] = receive,
        send: Callable[..., defer.Deferred] = send,
        terminals: TerminalRegistry | None = None,
    ) -> None:
        self.ctx = ctx
        self.scheduler = scheduler if scheduler is not None else SchedulerClient(ctx.grid.rpc)
        self.agents = agents if agents is not None else AgentsClient(ctx.grid.rpc)
        #: the devices' client (``as_user(user)`` gives one acting for a user)
        self.devices = devices if devices is not None else DevicesClient(ctx.grid.rpc, DEVICE_RPC_TIMEOUT)
        #: transfer.receive / transfer.send (replaced in tests)
        self.receive = receive
        self.send = send
        self.terminals = terminals if terminals is not None else TerminalRegistry(ctx.reactor, ctx.shell)
        self.runtimes = RuntimesFeed(self)
        self.agent_statuses = AgentsFeed(self)
        self.outputs: dict[str, OutputFeed] = {}
        #: (user, runtime, device) -> the feed reading it
        self.device_feeds: dict[tuple[str, str, str], DeviceFeed] = {}
        self.connections: set[Connection] = set()
        self._watching = False

    def fs(self, user: str) -> Any:
        """A file client acting as *user*."""
        return self.ctx.grid.for_user(user).fs

    def live_ids(self) -> set[str]:
        return {s.id for s in self.ctx.membership.live()}

    def devices_for(self, user: str) -> Any:
        """A devices client acting for *user*: the device's runtime checks its owner and mode against them."""
        return self.devices.as_user(user)

    def locate_device(self, runtime: str, name: str, direction: str) -> Any:
        """Device *name* of live runtime *runtime* as its status tells it (ENOENT, or EACCES for the wrong side).

        Checked here so a mistake is answered at once rather than after an
        RPC to a runtime that is not there; who may use the device is its
        runtime's decision.
        """
        status = next((s for s in self.ctx.membership.live() if s.id == runtime), None)
        if status is None:
            raise DeviceError(f"{runtime}/{name}: no such device (runtime {runtime} is not running)", NOT_FOUND)
        device = next((d for d in status.devices if d.name == name), None)
        if device is None:
            raise DeviceError(f"{runtime}/{name}: no such device", NOT_FOUND)
        if direction == INPUT and device.direction == DEVICE_OUTPUT:
            raise DeviceError(f"{runtime}/{name} is an output device: it can be written, not read", DENIED)
        if direction == DEVICE_OUTPUT and device.direction == INPUT:
            raise DeviceError(f"{runtime}/{name} is an input device: it can be read, not written", DENIED)
        return device

    def device_feed(self, user: str, runtime: str, name: str) -> defer.Deferred:
        """The feed of device *runtime*/*name* read as *user* (started now if nobody of theirs reads it yet);
        fires once the device's runtime gave the stream, or fails with its refusal."""
        feed = self.device_feeds.get((user, runtime, name))
        if feed is None:
            device = self.locate_device(runtime, name, INPUT)
            if len(self.device_feeds) >= MAX_DEVICE_FEEDS:
                raise DesktopError(f"this runtime already reads {MAX_DEVICE_FEEDS} devices for its browsers", "EBUSY")
            self.watch_membership()
            feed = self.device_feeds[(user, runtime, name)] = DeviceFeed(self, user, runtime, name, device.driver)
            feed.start()
        return feed.when_ready()

    def forget_device(self, feed: DeviceFeed) -> None:
        if self.device_feeds.get(feed.key) is feed:
            del self.device_feeds[feed.key]

    def watch_membership(self) -> None:
        """Listen to the membership's changes (once: it has no way to stop listening)."""
        if not self._watching:
            self._watching = True
            self.ctx.membership.on_change(self._membership_changed)

    def _membership_changed(self) -> None:
        self.runtimes.changed()
        self.agent_statuses.membership_changed()
        if self.outputs or self.device_feeds:
            live = self.live_ids()
            for feed in list(self.outputs.values()):
                feed.membership_changed(live)
            for device in list(self.device_feeds.values()):
                device.membership_changed(live)

    def output(self, info: AgentInfo) -> OutputFeed:
        """The feed of *info*'s output, started now if nobody reads it yet."""
        feed = self.outputs.get(info.id)
        if feed is None:
            if len(self.outputs) >= MAX_OUTPUT_FEEDS:
                raise DesktopError(f"this runtime already follows the output of {MAX_OUTPUT_FEEDS} programs", "EBUSY")
            self.watch_membership()
            feed = self.outputs[info.id] = OutputFeed(self, info)
            feed.start()
            if feed.final is None and info.runtime not in self.live_ids():
                feed.membership_changed(self.live_ids())
        return feed

    def forget_output(self, feed: OutputFeed) -> None:
        if self.outputs.get(feed.agent) is feed:
            del self.outputs[feed.agent]

    def stop(self) -> None:
        """The desktop stops: close every websocket and terminal, stop reading programs' output."""
        for connection in list(self.connections):
            connection.close(CLOSE_STOPPING, "the desktop is stopping")
        self.terminals.close_all()
        for feed in list(self.outputs.values()):
            feed.close()
        self.outputs.clear()
        for device in list(self.device_feeds.values()):
            device.finish({"error": "the desktop is stopping", "kind": "ESHUTDOWN"})
        self.device_feeds.clear()


# -- one connection's subscriptions -----------------------------------------------------------------------


class _Sub:
    """A channel one connection is subscribed to."""

    def __init__(self, connection: Connection, channel: Channel) -> None:
        self.connection = connection
        self.channel = channel
        self.name = channel.name

    def push(self, body: dict[str, Any]) -> None:
        self.connection.push(self.name, body)

    def start(self) -> None:
        """Send the first events (the answer to ``sub.open`` has gone out)."""

    def stop(self) -> None:
        """Send nothing more."""

    def resync(self) -> None:
        """Events were dropped while the browser did not read: send the whole state again."""

    def flush(self) -> None:
        """The browser reads again: send what was kept for it (a device's newest frame)."""


class _RuntimesSub(_Sub):
    def start(self) -> None:
        self.connection.hub.runtimes.add(self)

    def stop(self) -> None:
        self.connection.hub.runtimes.remove(self)

    def resync(self) -> None:
        self.push({"statuses": self.connection.hub.runtimes.snapshot()})


class _AgentsSub(_Sub):
    def start(self) -> None:
        self.connection.hub.agent_statuses.add(self)

    def stop(self) -> None:
        self.connection.hub.agent_statuses.remove(self)

    def resync(self) -> None:
        feed = self.connection.hub.agent_statuses
        if feed.ready:
            self.push({"agents": feed.snapshot()})


class _PipesSub(_Sub):
    def __init__(self, connection: Connection, channel: Channel) -> None:
        super().__init__(connection, channel)
        self._loop: task.LoopingCall | None = None
        self._busy = False

    def start(self) -> None:
        self._loop = task.LoopingCall(self._poll)
        self._loop.clock = self.connection.ctx.reactor
        self._loop.start(PIPES_INTERVAL, now=True).addErrback(lambda f: log.failure("pipes channel", f))

    def _poll(self) -> None:
        if self._busy:
            return
        self._busy = True

        def got(rows: list[Any]) -> None:
            self.push({"pipes": [row.encode() for row in rows]})

        def failed(failure: Failure) -> None:
            self.push({"error": wire.error_body(failure.value)["message"]})

        d = self.connection.hub.scheduler.pipes()
        d.addCallbacks(got, failed).addBoth(lambda _: setattr(self, "_busy", False))

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None


class _OutputSub(_Sub):
    def __init__(self, connection: Connection, channel: Channel, info: AgentInfo) -> None:
        super().__init__(connection, channel)
        self.info = info
        self.feed: OutputFeed | None = None

    def start(self) -> None:
        try:
            feed = self.connection.hub.output(self.info)
        except DesktopError as e:
            self.push({"error": str(e)})
            return
        self.feed = feed
        if feed.final is not None:
            self.push(feed.final)
        else:
            feed.subs.add(self)

    def output(self, stream: str, text: str) -> None:
        self.connection.push_output(self.name, stream, text)

    def resync(self) -> None:
        """The last event (end or error) was dropped while the browser did not read: it must still arrive."""
        if self.feed is not None and self.feed.final is not None:
            self.push(self.feed.final)

    def stop(self) -> None:
        if self.feed is not None:
            self.feed.subs.discard(self)


class _DeviceSub(_Sub):
    """One tab's subscription to a device: text events as any channel's; video frames sent at once, or
    (while the browser is behind) the newest one kept and sent when it reads again."""

    def __init__(self, connection: Connection, channel: Channel, feed: DeviceFeed) -> None:
        super().__init__(connection, channel)
        self.feed = feed
        self.pending: bytes | None = None
        #: frames dropped because a newer one came while the browser was behind
        self.dropped = 0

    def start(self) -> None:
        self.feed.join(self)

    def frame(self, payload: bytes) -> None:
        connection = self.connection
        if connection.closed or connection.subs.get(self.name) is not self:
            return
        if connection.congested:
            if self.pending is not None:
                self.dropped += 1
            self.pending = payload
            return
        connection.send_binary(payload, self.name)

    def flush(self) -> None:
        if self.pending is not None and not self.connection.congested:
            payload, self.pending = self.pending, None
            self.connection.send_binary(payload, self.name)

    def resync(self) -> None:
        """Text events were dropped: the newest text stands for them."""
        if not self.feed.video and self.feed.last_text:
            self.push({"data": self.feed.last_text, "bytes": self.feed.bytes, "resync": True})

    def end(self, body: dict[str, Any]) -> None:
        self.pending = None
        self.connection.end_channel(self, body)

    def stop(self) -> None:
        self.pending = None
        self.feed.leave(self)


# -- one websocket -------------------------------------------------------------------------------------------


class Connection:
    """One browser tab's websocket, whatever carries it (:class:`DesktopProtocol`, or a test).

    *send* takes ``(payload, binary)``; *close* takes ``(code, reason)`` and
    must end in :meth:`lost` (the protocol's ``onClose``).  The carrier
    calls :meth:`pause`/:meth:`resume` as the browser stops and starts
    reading (the transport's producer), :meth:`text` and :meth:`binary`
    with each message, and :meth:`lost` once the socket is gone.
    """

    def __init__(
        self,
        hub: DesktopHub,
        session: WebSession,
        send: Callable[[bytes, bool], None],
        close: Callable[[int, str], None],
    ) -> None:
        self.hub = hub
        self.ctx = hub.ctx
        self.session = session
        self.user = session.user
        self._send = send
        self._close = close
        self.paused = False
        self.closed = False
        self._queue: deque[tuple[bytes, bool, str | None]] = deque()
        self._queued = 0
        self.inflight = 0
        self.subs: dict[str, _Sub] = {}
        #: channels whose events were dropped (sent whole again when the browser reads)
        self._stale: set[str] = set()
        #: output channel -> stream -> characters dropped
        self._dropped: dict[str, dict[str, int]] = {}
        self.terms: dict[int, WebTerminal] = {}
        self.inputs: dict[str, InputFeed] = {}
        self._on_end = self._session_ended
        session.on_end.append(self._on_end)
        self._check = task.LoopingCall(self._check_session)
        self._check.clock = self.ctx.reactor
        self._check.start(SESSION_CHECK, now=False).addErrback(lambda f: None)
        hub.connections.add(self)
        if session.revoked:  # it ended during the handshake: its on_end callbacks have run already
            self.close(CLOSE_SESSION_ENDED, "the login session ended")

    # -- sending ------------------------------------------------------------------------------------
    @property
    def congested(self) -> bool:
        """The browser is behind: frames wait in the queue."""
        return self.paused or bool(self._queue)

    def _out(self, payload: bytes, binary: bool = False, channel: str | None = None) -> None:
        if self.closed:
            return
        if self.congested:
            self._queue.append((payload, binary, channel))
            self._queued += len(payload)
            if self._queued > HARD_LIMIT:
                log.info(
                    "desktop: closing the websocket of {user}: the browser does not read ({n} bytes wait)",
                    user=self.user,
                    n=self._queued,
                )
                self.close(CLOSE_TOO_SLOW, "the browser does not read what it is sent")
            return
        self._write(payload, binary)

    def _write(self, payload: bytes, binary: bool) -> None:
        try:
            self._send(payload, binary)
        except Exception as e:
            log.info("desktop: a websocket send failed ({e}); closing it", e=str(e))
            self.lost()

    def _room(self, size: int) -> bool:
        """Whether an event of *size* bytes may be queued or sent now."""
        return not self.congested or self._queued + size <= EVENT_HOLD

    def reply(self, payload: bytes) -> None:
        self._out(payload)

    def push(self, channel: str, body: dict[str, Any]) -> None:
        """An event of a channel; dropped (the channel marked stale) while the browser is too far behind."""
        if channel not in self.subs or self.closed:
            return
        payload = wire.event(channel, body)
        if not self._room(len(payload)):
            self._stale.add(channel)
            return
        if channel in self._dropped:  # what was dropped is said before what comes after it
            self._markers(channel)
        self._out(payload, False, channel)

    def push_output(self, channel: str, stream: str, text: str) -> None:
        """A program's output; dropped and counted while the browser is too far behind."""
        if channel not in self.subs or self.closed:
            return
        payload = wire.event(channel, {"stream": stream, "data": text})
        if not self._room(len(payload)):
            counts = self._dropped.setdefault(channel, {})
            counts[stream] = counts.get(stream, 0) + len(text)
            return
        if channel in self._dropped:
            self._markers(channel)
        self._out(payload, False, channel)

    def _markers(self, channel: str) -> None:
        for stream, count in self._dropped.pop(channel, {}).items():
            text = f"\n[oneos: {count} characters of {stream} dropped: the browser was not reading]\n"
            self._out(wire.event(channel, {"stream": stream, "data": text, "dropped": count}), False, channel)

    def send_binary(self, payload: bytes, channel: str | None = None) -> None:
        """A terminal's or a device's frame (both only call it while not congested)."""
        self._out(payload, True, channel)

    def end_channel(self, sub: _Sub, body: dict[str, Any]) -> None:
        """*sub*'s channel ended by itself (a device's stream): its last event, never dropped, and no more events.

        The browser need not close it; a later ``sub.open`` of the same name opens it afresh.
        """
        if self.closed or self.subs.get(sub.name) is not sub:
            return
        del self.subs[sub.name]
        self._stale.discard(sub.name)
        self._out(wire.event(sub.name, body), False, sub.name)

    def pause(self) -> None:
        """The browser stopped reading (the socket's buffer is full)."""
        self.paused = True

    def resume(self) -> None:
        """The browser reads again: send what waits, then what was dropped meanwhile."""
        self.paused = False
        while self._queue and not self.paused and not self.closed:
            payload, binary, _ = self._queue.popleft()
            self._queued -= len(payload)
            self._write(payload, binary)
        if self.congested or self.closed:
            return
        for name in list(self._dropped):
            self._markers(name)
        stale, self._stale = self._stale, set()
        for name in stale:
            sub = self.subs.get(name)
            if sub is not None:
                sub.resync()
        for sub in list(self.subs.values()):
            if self.congested:
                break
            sub.flush()
        for terminal in list(self.terms.values()):
            if self.congested:
                break
            terminal.catch_up()

    def _purge(self, channel: str) -> None:
        kept = deque(item for item in self._queue if item[2] != channel)
        self._queued = sum(len(item[0]) for item in kept)
        self._queue = kept
        self._stale.discard(channel)
        self._dropped.pop(channel, None)

    # -- the session -----------------------------------------------------------------------------
    def _session_ended(self) -> None:
        self.close(CLOSE_SESSION_ENDED, "the login session ended")

    def _check_session(self) -> None:
        if self.ctx.sessions.get(self.session.id, touch=False) is None:
            self.close(CLOSE_SESSION_ENDED, "the login session ended")

    def _alive(self) -> bool:
        """A message from the browser: the session is active (or over: then the socket closes)."""
        if self.ctx.sessions.get(self.session.id) is None:
            self.close(CLOSE_SESSION_ENDED, "the login session ended")
            return False
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed:
            return
        try:
            self._close(code, reason)
        finally:
            self.lost()

    def lost(self) -> None:
        """The websocket is gone: stop every channel, leave terminals to their reattach window."""
        if self.closed:
            return
        self.closed = True
        self.hub.connections.discard(self)
        if self._check.running:
            self._check.stop()
        try:
            self.session.on_end.remove(self._on_end)
        except ValueError:
            pass
        for sub in list(self.subs.values()):
            sub.stop()
        self.subs.clear()
        for feed in list(self.inputs.values()):
            feed.end()
        self.inputs.clear()
        terms, self.terms = self.terms, {}
        for terminal in terms.values():
            terminal.detach()
        self._queue.clear()
        self._queued = 0

    # -- receiving -------------------------------------------------------------------------------
    def text(self, payload: bytes) -> None:
        """A text frame: one request."""
        if self.closed or not self._alive():
            return
        try:
            request = wire.parse_request(payload)
        except wire.BadRequest as e:
            self.reply(wire.fail(e.request_id, e.kind, str(e)))
            return
        if self.inflight >= MAX_INFLIGHT:
            self.reply(wire.fail(request.id, "EBUSY", f"too many requests in flight (at most {MAX_INFLIGHT})"))
            return
        self.inflight += 1
        handler = getattr(self, "op_" + request.op.replace(".", "_"))
        d = defer.maybeDeferred(handler, **request.args)
        d.addCallbacks(self._answer, self._refuse, callbackArgs=(request.id,), errbackArgs=(request.id,))
        d.addErrback(lambda f: log.failure("desktop: answering a request failed", f))

    def _answer(self, result: Any, request_id: int | float) -> None:
        self.inflight -= 1
        then = None
        if isinstance(result, AfterReply):
            result, then = result.result, result.then
        try:
            payload = wire.ok(request_id, result)
        except (TypeError, ValueError) as e:
            log.error("desktop: an answer is not JSON: {e}", e=str(e))
            payload = wire.fail(request_id, "EIO", "internal error: the answer could not be encoded")
            then = None
        if len(payload) > MAX_REPLY:
            payload = wire.fail(request_id, "EFBIG", f"the answer is too large to send ({len(payload)} bytes)")
            then = None
        self.reply(payload)
        if then is not None and not self.closed:
            then()

    def _refuse(self, failure: Failure, request_id: int | float) -> None:
        self.inflight -= 1
        error = failure.value
        if not isinstance(error, OneOSError):
            if isinstance(error, defer.CancelledError):
                return
            log.failure("desktop: an operation failed", failure)
            self.reply(wire.fail(request_id, "EIO", f"internal error: {wire.error_body(error)['message']}"))
            return
        self.reply(wire.fail_with(request_id, error))

    def binary(self, payload: bytes) -> None:
        """A binary frame: ``[N][bytes]`` typed into terminal N."""
        if self.closed or not self._alive():
            return
        try:
            number, data = wire.parse_term_frame(payload)
        except DesktopError as e:
            self.reply(wire.fail(None, e.kind, str(e)))
            return
        terminal = self.terms.get(number)
        if terminal is None:
            self.reply(wire.fail(None, wire.EINVAL, f"no terminal {number} on this connection"))
            return
        terminal.input(data)

    # -- operations: the session and the runtimes -----------------------------------------------------
    def op_session_whoami(self) -> dict[str, Any]:
        return {"user": self.user, "runtime": self.ctx.runtime_id}

    def op_runtimes_list(self) -> list[dict[str, Any]]:
        return [status_json(s) for s in self.ctx.membership.statuses()]

    # -- operations: files ------------------------------------------------------------------------------
    @property
    def fs(self) -> Any:
        return self.hub.fs(self.user)

    def op_fs_list(self, path: str) -> defer.Deferred:
        return self.fs.listdir(path).addCallback(lambda rows: [entry(s) for s in rows])

    def op_fs_stat(self, path: str) -> defer.Deferred:
        return self.fs.stat(path).addCallback(entry)

    async def op_fs_read(self, path: str) -> dict[str, Any]:
        fs = self.fs
        st = await fs.stat(path)
        if st.is_dir:
            raise IsADirectory(path)
        if st.size > wire.MAX_READ:
            raise _too_big(path, st.size)
        sink = _LimitedSink(path, wire.MAX_READ)
        await fs.read_into(path, sink)
        try:
            text = bytes(sink.data).decode("utf-8")
        except UnicodeDecodeError:
            raise DesktopError(f"{path}: not UTF-8 text; download it to open it", wire.EINVAL) from None
        # the mtime read before the content: if it changed in between, a save is refused (ESTALE), never lost
        return {"text": text, "mtime": st.mtime, "size": len(sink.data)}

    async def op_fs_write(self, path: str, text: str, mtime: float | None) -> dict[str, Any]:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            raise DesktopError(f"{path}: the text is not valid Unicode", wire.EINVAL) from None
        fs = self.fs
        try:
            st = await fs.stat(path)
        except NotFound:
            st = None
        if st is not None and st.is_dir:
            raise IsADirectory(path)
        if mtime is None and st is not None:
            raise DesktopError(f"{path} already exists (it was made after the editor opened): reload it", "ESTALE")
        if mtime is not None and st is None:
            raise DesktopError(f"{path} was removed since the editor loaded it", "ESTALE")
        if mtime is not None and st is not None and st.mtime > mtime:
            raise DesktopError(f"{path} changed since the editor loaded it: reload it (or save a copy)", "ESTALE")
        written = await fs.write(path, data)
        return {"mtime": written.mtime, "size": written.size}

    def op_fs_mkdir(self, path: str) -> defer.Deferred:
        return self.fs.mkdir(path).addCallback(entry)

    def op_fs_rename(self, src: str, dst: str) -> defer.Deferred:
        return self.fs.rename(src, dst).addCallback(entry)

    def op_fs_remove(self, path: str, recursive: bool) -> defer.Deferred:
        return self.fs.remove(path, recursive=recursive).addCallback(lambda _: {})

    # -- operations: programs ---------------------------------------------------------------------------
    def op_proc_list(self, all: bool) -> defer.Deferred:
        return self.hub.scheduler.ps(all=all).addCallback(lambda rows: [r.encode() for r in rows])

    def op_proc_run(self, program: str, args: list[str], runtime: str | None, tags: list[str]) -> defer.Deferred:
        d = self.hub.scheduler.spawn(program, args, runtime=runtime or None, tags=tags, user=self.user)
        return d.addCallback(lambda info: info.encode())

    def op_proc_pipeline(self, text: str) -> defer.Deferred:
        try:
            stages = parse_pipeline(text)
        except PipelineSyntaxError as e:
            raise DesktopError(str(e), wire.EINVAL) from None
        if len(stages) > MAX_STAGES:
            raise DesktopError(f"a pipeline has at most {MAX_STAGES} stages", wire.EINVAL)
        specs = [StageSpec(s.program, s.args, s.runtime, s.tags, self.user) for s in stages]
        return self.hub.scheduler.pipeline(specs).addCallback(lambda infos: [i.encode() for i in infos])

    def op_proc_kill(self, id: str) -> defer.Deferred:
        return self.hub.scheduler.kill(id, user=self.user).addCallback(lambda info: info.encode())

    def op_proc_pause(self, id: str) -> defer.Deferred:
        return self.hub.scheduler.pause(id, user=self.user).addCallback(lambda info: info.encode())

    def op_proc_resume(self, id: str) -> defer.Deferred:
        return self.hub.scheduler.resume(id, user=self.user).addCallback(lambda info: info.encode())

    async def _owned(self, agent_id: str) -> AgentInfo:
        """The agent's record, if its streams are this user's to use (root may use any)."""
        info: AgentInfo = await self.hub.scheduler.locate(agent_id)
        if self.user != "root" and info.user != self.user:
            raise AgentError(f"agent {agent_id} belongs to {info.user or 'nobody'}, not {self.user}", "EPERM")
        return info

    async def op_proc_stdin(self, id: str, data: str, eof: bool) -> dict[str, Any]:
        feed = self.inputs.get(id)
        if feed is not None and feed.error is not None:
            # the stream broke since the last write: say so once; the next write opens a new stream
            del self.inputs[id]
            raise feed.error
        if feed is None:
            if len(self.inputs) >= MAX_INPUTS:
                raise DesktopError(f"this connection already feeds {MAX_INPUTS} programs' input", "EBUSY")
            feed = self.inputs[id] = InputFeed(id)
            try:
                info = await self._owned(id)
                if info.ended:
                    raise AgentError(f"agent {id} has ended ({info.state})", "ESRCH")
                where = await self.hub.agents.stdin(info.runtime, id)
            except BaseException as e:
                feed.fail(e if isinstance(e, Exception) else DesktopError("cancelled", "EIO"))
                if self.inputs.get(id) is feed:
                    del self.inputs[id]
                raise
            if self.closed:  # the tab went away meanwhile: nobody to feed the program for
                self.inputs.pop(id, None)
                return {}
            d = self.hub.send(self.ctx.reactor, where.host, where.port, where.token, feed, **where.options())
            d.addCallbacks(lambda _: self._input_done(feed, None), lambda f: self._input_done(feed, f))
        try:
            encoded = data.encode("utf-8")
        except UnicodeEncodeError:
            raise DesktopError("the data is not valid Unicode", wire.EINVAL) from None
        feed.put(encoded, eof)
        return {}

    def _input_done(self, feed: InputFeed, failure: Failure | None) -> None:
        """The stream to the program ended: after an EOF, forget it; broken, keep it to report once."""
        if failure is not None:
            error = failure.value
            feed.fail(error if isinstance(error, Exception) else DesktopError(str(error), "EIO"))
            return
        if feed.error is None:
            feed.fail(AgentError(f"the input of agent {feed.agent_id} has ended", "EPIPE"))
        if self.inputs.get(feed.agent_id) is feed:
            del self.inputs[feed.agent_id]

    def op_pipes_list(self) -> defer.Deferred:
        return self.hub.scheduler.pipes().addCallback(lambda rows: [r.encode() for r in rows])

    # -- operations: devices -----------------------------------------------------------------------------
    async def op_devices_list(self) -> dict[str, Any]:
        """Every device of every live runtime that has some, as the user sees them; a runtime that does not
        answer is named in ``errors`` and the others are listed."""
        live = [s for s in self.ctx.membership.live() if s.devices]
        client = self.hub.devices_for(self.user)
        results = await defer.DeferredList([client.list_devices(s.id) for s in live], consumeErrors=True)
        devices: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for status, (ok, value) in zip(live, results, strict=True):
            if ok:
                devices.extend(d.encode() for d in value)
            else:
                errors.append({"runtime": status.id, **wire.error_body(value.value)})
        return {"devices": devices, "errors": errors}

    async def op_device_write(self, runtime: str, name: str, data: str) -> dict[str, Any]:
        """*data* (UTF-8) into output device *runtime*/*name*, as the user; the device's answer (bytes taken)."""
        try:
            encoded = data.encode("utf-8")
        except UnicodeEncodeError:
            raise DesktopError("the data is not valid Unicode", wire.EINVAL) from None
        self.hub.locate_device(runtime, name, DEVICE_OUTPUT)
        where = await self.hub.devices_for(self.user).write(runtime, name)
        status = await self.hub.send(
            self.ctx.reactor, where.host, where.port, where.token, _OneShot(encoded), **where.options()
        )
        return status if isinstance(status, dict) else {}

    # -- operations: channels ----------------------------------------------------------------------------
    async def op_sub_open(self, channel: str) -> Any:
        parsed = wire.parse_channel(channel)
        name = parsed.name
        if name in self.subs:
            return {}
        if len(self.subs) >= MAX_SUBSCRIPTIONS:
            raise DesktopError(f"at most {MAX_SUBSCRIPTIONS} channels per connection", "EBUSY")
        sub: _Sub
        if parsed.kind == RUNTIMES:
            sub = _RuntimesSub(self, parsed)
        elif parsed.kind == AGENTS:
            sub = _AgentsSub(self, parsed)
        elif parsed.kind == PIPES:
            sub = _PipesSub(self, parsed)
        elif parsed.kind == DEVICE:
            feed = await self.hub.device_feed(self.user, parsed.runtime, parsed.device)
            if name in self.subs or self.closed or len(self.subs) >= MAX_SUBSCRIPTIONS:
                feed.leave(None)  # nobody of this request joins it: close it if nobody else has
                if name in self.subs or self.closed:
                    return {}
                raise DesktopError(f"at most {MAX_SUBSCRIPTIONS} channels per connection", "EBUSY")
            sub = _DeviceSub(self, parsed, feed)
        else:
            assert parsed.kind == OUTPUT
            if parsed.agent not in self.hub.outputs and len(self.hub.outputs) >= MAX_OUTPUT_FEEDS:
                raise DesktopError(f"this runtime already follows the output of {MAX_OUTPUT_FEEDS} programs", "EBUSY")
            info = await self._owned(parsed.agent)
            if name in self.subs or self.closed:  # opened twice at once, or gone meanwhile
                return {}
            if len(self.subs) >= MAX_SUBSCRIPTIONS:
                raise DesktopError(f"at most {MAX_SUBSCRIPTIONS} channels per connection", "EBUSY")
            sub = _OutputSub(self, parsed, info)
        self.subs[name] = sub
        return AfterReply({}, sub.start)

    def op_sub_close(self, channel: str) -> dict[str, Any]:
        name = wire.parse_channel(channel).name
        sub = self.subs.pop(name, None)
        if sub is not None:
            sub.stop()
            self._purge(name)
        return {}

    # -- operations: terminals ----------------------------------------------------------------------------
    def _free_number(self) -> int:
        for number in range(wire.MAX_TERM + 1):
            if number not in self.terms:
                return number
        raise DesktopError("no free terminal number", "EBUSY")  # pragma: no cover (MAX_PER_CONNECTION is lower)

    def op_term_open(self, cols: int, rows: int, resume: str | None) -> AfterReply:
        if len(self.terms) >= MAX_PER_CONNECTION:
            raise DesktopError(f"at most {MAX_PER_CONNECTION} terminals per connection", "EBUSY")
        registry = self.hub.terminals
        if resume:
            terminal = registry.find(resume, self.session)
            for number, mine in list(self.terms.items()):
                if mine is terminal:  # already here: the same number
                    return AfterReply({"term": number, "key": terminal.key}, lambda: None)
            terminal.resize(cols, rows)
        else:
            terminal = registry.open(self.session, cols, rows)
        number = self._free_number()
        self.terms[number] = terminal
        return AfterReply({"term": number, "key": terminal.key}, lambda: self._attach(number, terminal))

    def _attach(self, number: int, terminal: WebTerminal) -> None:
        if self.terms.get(number) is terminal and not terminal.closed:
            terminal.attach(self, number)

    def _terminal(self, term: int) -> WebTerminal:
        terminal = self.terms.get(term)
        if terminal is None:
            raise DesktopError(f"no terminal {term} on this connection", wire.EINVAL)
        return terminal

    def op_term_resize(self, term: int, cols: int, rows: int) -> dict[str, Any]:
        self._terminal(term).resize(cols, rows)
        return {}

    def op_term_close(self, term: int) -> dict[str, Any]:
        terminal = self._terminal(term)
        del self.terms[term]
        terminal.close()
        return {}

    # TerminalPeer
    def terminal_ended(self, number: int, status: int) -> None:
        if self.terms.get(number) is not None and self.terms[number].closed:
            del self.terms[number]
            self.reply(wire.dumps({"channel": "term", "event": {"term": number, "end": True, "status": status}}))
        elif number not in self.terms:
            pass  # closed by term.close: its answer says so

    def terminal_taken(self, number: int) -> None:
        self.terms.pop(number, None)


# -- Autobahn ------------------------------------------------------------------------------------------------


@implementer(IPushProducer)
class _Flow:
    """Registered on the websocket's transport: tells the connection when the browser stops and starts reading."""

    def __init__(self) -> None:
        self.connection: Connection | None = None
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True
        if self.connection is not None:
            self.connection.pause()

    def resumeProducing(self) -> None:
        self.paused = False
        if self.connection is not None:
            self.connection.resume()

    def stopProducing(self) -> None:
        self.paused = True
        if self.connection is not None:
            self.connection.pause()


class DesktopProtocol(WebSocketServerProtocol):
    """One websocket: the handshake's checks, then every message to its :class:`Connection`."""

    factory: DesktopFactory
    session: WebSession | None = None
    connection: Connection | None = None

    def onConnect(self, request: Any) -> Any:
        hub = self.factory.hub
        headers = request.headers
        tls = bool(hub.ctx.tls) or ISSLTransport.providedBy(self.transport)
        if not wire.same_origin(headers.get("origin"), headers.get("host"), tls):
            origin = str(headers.get("origin", ""))[:100]
            log.info("desktop: refused a websocket from {peer}: Origin {origin!r}", peer=self.peer, origin=origin)
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "Forbidden: not the desktop's own page")
        session = hub.ctx.sessions.get(wire.cookie_value(headers.get("cookie"), COOKIE))
        if session is None:
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "Forbidden: not logged in")
        if sum(1 for c in hub.connections if c.session is session) >= MAX_SOCKETS_PER_SESSION:
            raise ConnectionDeny(429, "Too Many Requests: too many websockets for this login")
        self.session = session
        return None

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        # Autobahn's own origin check (allowedOrigins: web pages only) refuses as the docs say: 403
        if code == 400 and "origin" in reason.lower():
            code = 403
        headers = list(responseHeaders or []) + list(SECURITY_HEADERS.items())
        super().failHandshake(reason, code, headers)

    def onOpen(self) -> None:
        assert self.session is not None
        flow = _Flow()
        self.connection = Connection(self.factory.hub, self.session, self._ws_send, self._ws_close)
        flow.connection = self.connection
        transport: Any = self.transport
        try:
            # Twisted Web's channel was the producer of this transport until the websocket took it over
            if getattr(transport, "producer", None) is not None or getattr(transport, "_producer", None) is not None:
                transport.unregisterProducer()
            transport.registerProducer(flow, True)
        except Exception as e:  # no flow control: nothing is ever congested, the autoping still ends a dead peer
            log.warn("desktop: no flow control on a websocket ({e})", e=str(e))

    def _ws_send(self, payload: bytes, binary: bool) -> None:
        # the 1 MiB limit is for what the browser sends; an answer (a file of up to 4 MiB) may be larger
        limit: int = getattr(self, "maxMessagePayloadSize", wire.MAX_MESSAGE)
        self.maxMessagePayloadSize = 0
        try:
            self.sendMessage(payload, isBinary=binary)
        finally:
            self.maxMessagePayloadSize = limit

    def _ws_close(self, code: int, reason: str) -> None:
        try:
            self.sendClose(code, reason[:100])
        except Exception:
            self.dropConnection(abort=True)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.connection is None:
            return
        if isBinary:
            self.connection.binary(payload)
        else:
            self.connection.text(payload)

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        if self.connection is not None:
            self.connection.lost()


class DesktopFactory(WebSocketServerFactory):
    """Builds :class:`DesktopProtocol`; holds the :class:`DesktopHub` they share."""

    protocol = DesktopProtocol  # type: ignore[assignment]  # Twisted types Factory.protocol as a callable

    def __init__(self, hub: DesktopHub) -> None:
        super().__init__(server="OneOS", headers=dict(SECURITY_HEADERS))
        self.hub = hub
        self.setProtocolOptions(
            maxMessagePayloadSize=wire.MAX_MESSAGE,
            maxFramePayloadSize=wire.MAX_MESSAGE,
            # Autobahn allows every origin by default; web pages only (no null, file: or extension origins).
            # The exact check (the page's own origin, per request) is DesktopProtocol.onConnect's.
            allowedOrigins=["http://*", "https://*"],
            allowNullOrigin=False,
            maxConnections=MAX_SOCKETS,
            webStatus=False,
            # a refused frame (too large, not UTF-8) gets a close frame saying why (1009, 1007), then the drop
            failByDrop=False,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=5,
            autoPingInterval=20,
            autoPingTimeout=20,
            perMessageCompressionAccept=lambda offers: None,
        )
        self.noisy = False


class DesktopWebSocketResource(WebSocketResource):
    """The ``/ws`` resource; ``hub`` is what its websockets share, :meth:`stop` closes them all."""

    def __init__(self, factory: DesktopFactory) -> None:
        super().__init__(factory)
        self.factory = factory
        self.hub = factory.hub

    def stop(self) -> None:
        self.hub.stop()


def websocket_resource(ctx: DesktopContext) -> DesktopWebSocketResource:
    """The resource the HTTP side mounts at ``/ws``."""
    return DesktopWebSocketResource(DesktopFactory(DesktopHub(ctx)))
