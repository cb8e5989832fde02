"""The direct RPC channel (oneos.pubsub.direct), driven deterministically.

Frames, tickets bound to the identity the bus authenticated, pipelined
calls answered out of order, and every fallback decision: what goes over
the bus, when, and what fails instead.  Time is a ``task.Clock``; the two
ends of a channel are joined by Twisted's in-memory ``iosim`` transports,
or are a ``StringTransport`` where one end is played by hand.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim

from oneos.errors import NotPermitted, RPCError, RPCTimeout
from oneos.fs.errors import NotFound
from oneos.pubsub import direct, messages
from oneos.pubsub.direct import (
    MAX_FRAME,
    DirectError,
    DirectLost,
    DirectRoute,
    DirectServer,
    FrameDecoder,
    Ticket,
    Tickets,
    encode_frame,
)
from oneos.pubsub.rpc import RPCClient, RPCServer, Unanswered

# -- frames -------------------------------------------------------------------------------------------


def test_frames_round_trip_whatever_the_cut():
    bodies = [b"{}", b"x" * 1000, b"", messages.encode("rpc.reply", id="1", ok=True, result=[1, 2])]
    wire = b"".join(encode_frame(b) for b in bodies)
    for piece in (1, 3, 7, len(wire)):
        decoder = FrameDecoder()
        got: list[bytes] = []
        for i in range(0, len(wire), piece):
            got += decoder.feed(wire[i : i + piece])
        assert got == bodies, piece


def test_an_oversized_frame_is_refused_before_it_is_buffered():
    decoder = FrameDecoder(limit=10)
    with pytest.raises(DirectError, match="larger than 10"):
        decoder.feed(direct.LENGTH.pack(11))  # only the header has arrived
    with pytest.raises(DirectError):
        encode_frame(b"x" * (MAX_FRAME + 1))


def test_an_answer_too_large_for_a_frame_becomes_an_error_saying_so():
    body = messages.decode(direct.reply_body("7", {"ok": True, "result": "x" * MAX_FRAME}), "rpc.reply")
    assert body["id"] == "7" and body["ok"] is False and "larger than" in body["error"]["message"]
    body = messages.decode(direct.reply_body("8", {"ok": True, "result": {1, 2}}), "rpc.reply")
    assert "unserialisable" in body["error"]["message"]


# -- deadlines ----------------------------------------------------------------------------------------


def test_deadlines_expire_what_is_overdue_with_one_timer():
    clock = task.Clock()
    expired: list[str] = []
    deadlines = direct.Deadlines(clock, expired.append)
    for i, at in enumerate((5, 5, 6, 7)):
        deadlines.add(f"k{i}", at)
    assert len(clock.getDelayedCalls()) == 1
    deadlines.discard("k1")  # answered in time: forgotten, no timer touched
    deadlines.add("early", 1)  # an earlier deadline moves the one timer
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(1)
    assert expired == ["early"]
    clock.advance(4)
    assert expired == ["early", "k0"]
    clock.advance(2)
    assert expired == ["early", "k0", "k2", "k3"] and clock.getDelayedCalls() == []
    deadlines.add("x", 10)
    deadlines.discard("x")
    assert clock.getDelayedCalls() == []  # nothing left to watch: no timer left


def test_a_server_cancels_work_its_caller_stopped_waiting_for():
    grid = Grid()
    done = grid.rpc.handle("rt-b", "slow", {"name": "x"}, {"timeout": 2})
    grid.clock.advance(2.5)
    assert pending(done)
    grid.clock.advance(1)
    assert answered(done) is None  # cancelled: nobody is told (the bus stays silent, a channel says Unanswered)
    assert grid.handlers.held["x"].called
    quick = grid.rpc.handle("rt-b", "slow", {"name": "y"}, {"timeout": 2})
    grid.handlers.held["y"].callback("ok")
    assert answered(quick) == {"ok": True, "result": "ok"} and grid.clock.getDelayedCalls() == []


# -- tickets ------------------------------------------------------------------------------------------


def test_a_ticket_names_its_identity_once_and_only_before_it_expires():
    clock = task.Clock()
    tickets = Tickets(clock, ttl=30)
    a, b = tickets.issue("alice@laptop"), tickets.issue("rt-b")
    assert a != b and len(a) == 2 * direct.TICKET_BYTES
    assert tickets.redeem(a) == "alice@laptop"
    assert tickets.redeem(a) is None  # reused
    assert tickets.redeem("f" * 32) is None  # forged
    clock.advance(30.1)
    assert tickets.redeem(b) is None  # expired


def test_expired_tickets_are_dropped_as_new_ones_come_and_their_number_is_bounded():
    clock = task.Clock()
    tickets = Tickets(clock, ttl=1, limit=3)
    for _ in range(3):
        tickets.issue("rt-a")
    clock.advance(2)
    tickets.issue("rt-a")
    assert len(tickets) == 1
    for _ in range(10):
        tickets.issue("rt-a")
    assert len(tickets) == 3


# -- a server and its clients --------------------------------------------------------------------------


class FakePort:
    def __init__(self, host: str = "0.0.0.0", port: int = 7001) -> None:
        self.address = IPv4Address("TCP", host, port)
        self.stopped = False

    def getHost(self) -> IPv4Address:
        return self.address

    def stopListening(self) -> None:
        self.stopped = True


class Bus:
    """What an RPCServer needs of its pubsub client; *identities*: the network checks who connects."""

    def __init__(self, clock: task.Clock, identities: bool = True) -> None:
        self.reactor = clock
        self.address = SimpleNamespace(username="rt-fs" if identities else None)


class Handlers:
    """fs-like handlers whose answers the test releases in any order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.held: dict[str, defer.Deferred] = {}

    def table(self) -> dict[str, Any]:
        def stat(path: str, system: bool = False, user: str | None = None) -> Any:
            self.calls.append(("stat", {"path": path, "system": system, "user": user}))
            if path == "/missing":
                raise NotFound(path)
            return {"path": path, "user": user, "system": system}

        def slow(name: str, user: str | None = None) -> defer.Deferred:
            self.calls.append(("slow", {"name": name}))
            d: defer.Deferred = defer.Deferred()
            self.held[name] = d
            return d

        def mkdir(path: str, user: str | None = None) -> Any:
            self.calls.append(("mkdir", {"path": path, "user": user}))
            return {"path": path}

        def chown(path: str, owner: str, user: str | None = None) -> Any:
            return {"path": path, "owner": owner}

        return {"stat": stat, "slow": slow, "mkdir": mkdir, "chown": chown}


class Grid:
    """One RPCServer with its DirectServer, and routes that reach it through in-memory TCP."""

    def __init__(self, identities: bool = True, guard: Any = None, **server_options: Any) -> None:
        self.clock = task.Clock()
        self.handlers = Handlers()
        self.rpc = RPCServer(
            Bus(self.clock, identities),  # type: ignore[arg-type]
            "fs",
            self.handlers.table(),
            guard=guard,
            clients=("stat", "slow", "mkdir"),
        )
        self.rpc.active = True  # as after start(); the bus's subscription is not part of these tests
        self.server = DirectServer(self.clock, self.rpc, clock=self.clock, **server_options)
        self.server.port = FakePort()
        self.server.advertise = "10.0.0.5"
        self.pumps: list[iosim.IOPump] = []
        self.bus_calls: list[tuple[str, dict[str, Any], float]] = []
        self.bus_answers: list[defer.Deferred] = []
        self.tickets_asked = 0
        self.refuse_connections = False

    def ticket_for(self, caller: str) -> Any:
        def ask() -> defer.Deferred:
            self.tickets_asked += 1
            return self.rpc.handle(caller, direct.TICKET_METHOD, {}, {}).addCallback(self._result)

        return ask

    @staticmethod
    def _result(fields: dict[str, Any] | None) -> Any:
        assert fields is not None
        if not fields["ok"]:
            raise RPCError(fields["error"]["message"], kind=fields["error"]["kind"])
        return fields["result"]

    def bus(self, method: str, args: dict[str, Any], meta: dict[str, Any], timeout: float) -> defer.Deferred:
        self.bus_calls.append((method, args, timeout))
        d: defer.Deferred = defer.Deferred()
        self.bus_answers.append(d)
        return d

    def connect(self, host: str, port: int, tls: bool, protocol: Any) -> defer.Deferred:
        assert (host, port) == ("10.0.0.5", 7001)
        if self.refuse_connections:
            return defer.fail(ConnectionRefusedError("refused"))
        server = direct._ServerFactory(self.server).buildProtocol(None)
        pump = iosim.connect(
            server, iosim.makeFakeServer(server), protocol, iosim.makeFakeClient(protocol), greet=False
        )
        self.pumps.append(pump)
        pump.flush()
        return defer.succeed(protocol)

    def route(self, caller: str = "alice@laptop", **kw: Any) -> DirectRoute:
        return DirectRoute(
            self.clock,
            "fs",
            self.ticket_for(caller),
            self.bus,
            connect=self.connect,
            clock=self.clock,
            retry_safe=kw.pop("retry_safe", ("stat", "slow")),
            open_after=kw.pop("open_after", 1),
            **kw,
        )

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()

    def opened(self, route: DirectRoute) -> DirectRoute:
        """Make the first call (over the bus) so the route opens its channel; return it open."""
        assert route.call("stat", {"path": "/"}, {}, 5) is None
        self.flush()
        assert route.state == route.OPEN, route.last_error
        return route


def answered(d: defer.Deferred) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "not answered yet"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def pending(d: defer.Deferred) -> bool:
    out: list[Any] = []
    d.addBoth(lambda r: (out.append(r), r)[1])
    return not out


def test_the_first_call_goes_over_the_bus_and_later_ones_take_the_channel():
    grid = Grid()
    route = grid.route()
    assert route.call("stat", {"path": "/a"}, {}, 5) is None  # no channel yet: the bus
    grid.flush()
    assert route.state == route.OPEN and grid.tickets_asked == 1 and grid.server.connections == 1
    d = route.call("stat", {"path": "/b"}, {}, 5)
    assert d is not None
    grid.flush()
    assert answered(d) == {"path": "/b", "user": "alice", "system": False}
    assert route.server == "10.0.0.5:7001" and route.sent == 1


def test_a_one_shot_caller_asks_for_no_channel():
    grid = Grid()
    route = grid.route(open_after=2)
    assert route.call("stat", {"path": "/a"}, {}, 5) is None
    grid.flush()
    assert route.state == route.IDLE and grid.tickets_asked == 0  # one call: not worth a ticket
    assert route.call("stat", {"path": "/b"}, {}, 5) is None
    grid.flush()
    assert route.state == route.OPEN and grid.tickets_asked == 1


def test_the_connection_acts_as_the_ticket_s_identity_whatever_it_says():
    grid = Grid()
    route = grid.opened(grid.route("alice@laptop"))
    # a client identity cannot name another user nor reach the kernel's area, on the channel as on the bus
    d = route.call("stat", {"path": "/etc/oneos/users.json", "user": "root", "system": True}, {}, 5)
    grid.flush()
    assert answered(d) == {"path": "/etc/oneos/users.json", "user": "alice", "system": False}
    refused = route.call("chown", {"path": "/x", "owner": "alice"}, {}, 5)  # a runtime-only method
    grid.flush()
    with pytest.raises(NotPermitted):
        answered(refused)
    assert grid.server.connections == 1  # a refusal is an answer, not the end of the channel


def test_a_runtime_s_ticket_lets_it_name_the_user_it_acts_for():
    grid = Grid()
    route = grid.opened(grid.route("rt-b"))
    d = route.call("stat", {"path": "/home/bob", "user": "bob"}, {}, 5)
    grid.flush()
    assert answered(d)["user"] == "bob"


def test_pipelined_calls_are_answered_as_they_finish_and_matched_by_id():
    grid = Grid()
    route = grid.opened(grid.route())
    calls = {name: route.call("slow", {"name": name}, {}, 5) for name in ("a", "b", "c")}
    grid.flush()
    assert [c for c in grid.handlers.calls if c[0] == "slow"] == [("slow", {"name": n}) for n in "abc"]
    assert all(pending(d) for d in calls.values())  # all three at work at once
    for name in ("c", "a", "b"):
        grid.handlers.held[name].callback(name.upper())
        grid.flush()
        assert answered(calls[name]) == name.upper()


def test_a_server_with_many_calls_at_work_stops_reading_until_some_are_answered():
    grid = Grid(max_in_flight=4)
    ticket = grid.server.ticket("rt-b")["ticket"]
    protocol, transport = raw_client(grid)
    protocol.dataReceived(ticket.encode() + b"\n" + b"".join(request(str(i), "slow", name=str(i)) for i in range(4)))
    assert transport.producerState == "paused"
    for i in range(3):
        grid.handlers.held[str(i)].callback(i)
    assert transport.producerState == "producing"
    assert [f["id"] for f in frames(transport)[1:]] == ["0", "1", "2"]


def test_remote_errors_keep_their_kind():
    grid = Grid()
    route = grid.opened(grid.route())
    d = route.call("stat", {"path": "/missing"}, {}, 5)
    grid.flush()
    with pytest.raises(NotFound):
        answered(d)
    runtime = grid.opened(grid.route("rt-b"))
    d = runtime.call("nothing", {}, {}, 5)
    grid.flush()
    with pytest.raises(RPCError) as e:
        answered(d)
    assert e.value.kind == "NoSuchMethod"


def raw_client(grid: Grid) -> tuple[Any, StringTransport]:
    protocol = direct._ServerFactory(grid.server).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def frames(transport: StringTransport) -> list[dict[str, Any]]:
    out = [messages.decode(b) for b in FrameDecoder().feed(transport.value())]
    transport.clear()
    return out


def request(corr: str, method: str, **args: Any) -> bytes:
    return encode_frame(messages.encode("rpc.request", id=corr, method=method, args=args, meta={}))


@pytest.mark.parametrize("which", ["forged", "reused", "expired"])
def test_a_bad_ticket_is_refused_and_what_follows_it_is_never_run(which):
    grid = Grid()
    ticket = grid.server.ticket("alice@laptop")["ticket"]
    if which == "reused":
        first, transport = raw_client(grid)
        first.dataReceived(ticket.encode() + b"\n")
        assert frames(transport)[0]["type"] == "rpc.ready"
    elif which == "expired":
        grid.clock.advance(direct.TICKET_TTL + 1)
    elif which == "forged":
        ticket = "0" * len(ticket)
    protocol, transport = raw_client(grid)
    protocol.dataReceived(ticket.encode() + b"\n" + request("1", "stat", path="/"))
    [refusal] = frames(transport)
    assert refusal["type"] == "rpc.reply" and refusal["ok"] is False and refusal["error"]["kind"] == "EACCES"
    assert transport.disconnecting
    assert grid.handlers.calls == []


def test_a_refused_connection_gets_no_second_try():
    grid = Grid()
    good = grid.server.ticket("rt-b")["ticket"]
    protocol, transport = raw_client(grid)
    protocol.dataReceived(b"0" * 32 + b"\n")
    protocol.dataReceived(good.encode() + b"\n" + request("1", "mkdir", path="/x"))
    assert [f["error"]["kind"] for f in frames(transport)] == ["EACCES"]
    assert grid.handlers.calls == []
    assert grid.server.tickets.redeem(good) == "rt-b"  # never used by that connection


def test_a_connection_without_a_ticket_line_is_closed():
    grid = Grid()
    protocol, transport = raw_client(grid)
    protocol.dataReceived(b"x" * 200)  # no newline, too long for a ticket
    assert transport.disconnecting
    protocol, transport = raw_client(grid)
    grid.clock.advance(direct.LINE_TIMEOUT + 1)
    assert transport.disconnected or transport.disconnecting


def test_a_guard_that_would_stay_silent_on_the_bus_says_unanswered_on_the_channel():
    silent = [False]

    def guard(method: str, meta: dict[str, Any]) -> None:
        if silent[0]:
            raise Unanswered("no word from the broker within the lease")

    grid = Grid(guard=guard)
    ticket = grid.server.ticket("rt-b")["ticket"]
    protocol, transport = raw_client(grid)
    protocol.dataReceived(ticket.encode() + b"\n")
    frames(transport)
    silent[0] = True
    protocol.dataReceived(request("9", "mkdir", path="/d"))
    [reply] = frames(transport)
    assert reply["id"] == "9" and reply["error"]["kind"] == direct.UNANSWERED
    assert grid.handlers.calls == []  # not done: the client may ask the bus


def test_a_lapsed_lease_cuts_every_channel_so_nothing_late_is_answered():
    lapsed = [False]

    def guard(method: str, meta: dict[str, Any]) -> None:
        if lapsed[0]:
            raise Unanswered("no word from the broker within the lease")

    grid = Grid(guard=guard)
    ticket = grid.server.ticket("rt-b")["ticket"]
    protocol, transport = raw_client(grid)
    protocol.dataReceived(ticket.encode() + b"\n")
    frames(transport)
    grid.clock.advance(direct.WATCH_INTERVAL * 4)
    assert not transport.disconnecting  # the guard answers: the channel stays
    lapsed[0] = True
    grid.clock.advance(direct.WATCH_INTERVAL)
    assert transport.disconnecting  # aborted
    lapsed[0] = False  # the server hears the broker again before it hands the role over ...
    protocol.dataReceived(request("1", "mkdir", path="/late"))  # ... and a request that waited in the network arrives
    assert grid.handlers.calls == [] and frames(transport) == []  # never run, never answered
    protocol.connectionLost(Failure(ConnectionError("aborted")))
    assert grid.clock.getDelayedCalls() == []  # no channel, no watch


def test_a_lapsed_server_hands_out_no_tickets():
    def guard(method: str, meta: dict[str, Any]) -> None:
        raise Unanswered("lease lapsed")

    grid = Grid(guard=guard)
    assert answered(grid.rpc.handle("rt-b", direct.TICKET_METHOD, {}, {})) is None


def test_ticket_answers_say_where_and_whether_with_tls():
    grid = Grid()
    answer = Ticket.decode(answered(grid.rpc.handle("alice@laptop", direct.TICKET_METHOD, {}, {}))["result"])
    assert (answer.host, answer.port, answer.tls) == ("10.0.0.5", 7001, False)
    grid.server.tls = object()
    assert grid.server.where()["tls"] is True
    with pytest.raises(messages.MalformedMessage):
        Ticket.decode({"host": "h", "port": "80", "ticket": "t"})


def test_a_stopping_server_finishes_its_calls_says_unanswered_to_new_ones_then_closes():
    grid = Grid()
    ticket = grid.server.ticket("rt-b")["ticket"]
    protocol, transport = raw_client(grid)
    protocol.dataReceived(ticket.encode() + b"\n" + request("1", "slow", name="x"))
    frames(transport)
    stopped = grid.server.stop()
    assert pending(stopped) and not transport.disconnecting
    protocol.dataReceived(request("2", "mkdir", path="/late"))
    [late] = frames(transport)
    assert late["id"] == "2" and late["error"]["kind"] == direct.UNANSWERED
    grid.handlers.held["x"].callback("done")
    [done] = frames(transport)
    assert done["id"] == "1" and done["result"] == "done"
    assert transport.disconnecting
    protocol.connectionLost(Failure(ConnectionError("closed")))
    assert answered(stopped) is None
    assert [c[0] for c in grid.handlers.calls] == ["slow"]


def test_a_stopping_server_cuts_a_channel_whose_calls_never_end():
    grid = Grid(close_grace=2)
    ticket = grid.server.ticket("rt-b")["ticket"]
    protocol, transport = raw_client(grid)
    protocol.dataReceived(ticket.encode() + b"\n" + request("1", "slow", name="x"))
    grid.server.stop()
    grid.clock.advance(2.1)
    assert transport.disconnected or transport.disconnecting


def test_a_server_listens_where_it_is_told_and_not_once_stopped():
    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    rpc = RPCServer(Bus(task.Clock()), "fs", {})  # type: ignore[arg-type]
    server = DirectServer(reactor, rpc)
    assert answered(server.listen("tcp:0:interface=10.0.0.5", "10.0.0.5")).startswith("10.0.0.5:")
    assert reactor.tcpServers[-1][3] == "10.0.0.5" and rpc.direct is server
    answered(server.stop())
    with pytest.raises(direct.NoChannel):
        server.where()
    late = DirectServer(reactor, RPCServer(Bus(task.Clock()), "fs", {}))  # type: ignore[arg-type]
    late.stop()  # the service stopped while its listener was being opened
    with pytest.raises(direct.NoChannel):
        answered(late.listen("tcp:0:interface=127.0.0.1"))
    assert late.port is None


# -- the client's fallback decisions -------------------------------------------------------------------


def test_an_unanswered_call_goes_over_the_bus_and_the_channel_is_left():
    silent = [False]

    def guard(method: str, meta: dict[str, Any]) -> None:
        if silent[0]:
            raise Unanswered("lease")

    grid = Grid(guard=guard)
    route = grid.opened(grid.route())
    silent[0] = True
    d = route.call("mkdir", {"path": "/d"}, {}, 5)
    grid.flush()
    assert [c[0] for c in grid.bus_calls] == ["mkdir"]
    assert grid.bus_calls[-1][1] == {"path": "/d"} and 0 < grid.bus_calls[-1][2] <= 5
    grid.bus_answers[-1].callback({"path": "/d"})
    assert answered(d) == {"path": "/d"}
    assert route.state == route.WAITING and route.channel is None
    grid.flush()
    assert grid.server.connections == 0  # nothing outstanding on it: closed
    # calls go over the bus until the pause is over; then a new ticket (over the bus) opens a new channel
    silent[0] = False
    assert route.call("stat", {"path": "/"}, {}, 5) is None and grid.tickets_asked == 1
    grid.clock.advance(direct.RETRY_MIN)
    assert route.call("stat", {"path": "/"}, {}, 5) is None
    grid.flush()
    assert route.state == route.OPEN and grid.tickets_asked == 2 and route.opened == 2


def test_a_broken_connection_resends_what_only_reads_and_fails_what_changes():
    grid = Grid()
    route = grid.opened(grid.route())
    read = route.call("slow", {"name": "r"}, {}, 5)
    write = route.call("mkdir", {"path": "/m"}, {}, 5)
    # the server dies before answering (its machine resets the connection)
    [pump] = grid.pumps
    pump.clientIO.protocol.connectionLost(Failure(ConnectionResetError("reset by peer")))
    assert grid.bus_calls[-1][0] == "slow"  # sent again over the bus
    with pytest.raises(DirectLost) as e:
        answered(write)
    assert "may or may not have been done" in str(e.value) and "'mkdir'" in str(e.value)
    grid.bus_answers[-1].callback("from the new server")
    assert answered(read) == "from the new server"
    assert route.state == route.WAITING


def test_a_resend_past_its_deadline_times_out_instead():
    grid = Grid()
    route = grid.opened(grid.route())
    read = route.call("slow", {"name": "r"}, {}, 5)
    grid.flush()
    grid.clock.pump([1] * 4)
    [pump] = grid.pumps
    pump.clientIO.protocol.connectionLost(Failure(ConnectionResetError("reset")))
    assert grid.bus_calls[-1][2] == pytest.approx(1.0)  # what is left of its 5 s
    grid.bus_answers[-1].errback(RPCTimeout("fs", "slow", 1.0))
    with pytest.raises(RPCTimeout):
        answered(read)


def test_a_call_that_times_out_fails_as_on_the_bus_and_the_channel_takes_no_more():
    grid = Grid()
    route = grid.opened(grid.route())
    d = route.call("slow", {"name": "never"}, {}, 2)
    grid.flush()
    grid.clock.advance(2.1)
    with pytest.raises(RPCTimeout):
        answered(d)
    assert route.state == route.WAITING and route.call("stat", {"path": "/"}, {}, 5) is None


def test_refused_connections_and_tickets_back_off_doubling():
    grid = Grid()
    grid.refuse_connections = True
    route = grid.route()
    waits = []
    for _ in range(4):
        assert route.call("stat", {"path": "/"}, {}, 5) is None
        assert route.state == route.WAITING
        waits.append(route._retry_at - grid.clock.seconds())
        grid.clock.advance(waits[-1])
    assert waits == [0.5, 1.0, 2.0, 4.0]
    grid.refuse_connections = False
    grid.opened(route)
    assert route._delay == direct.RETRY_MIN  # a channel that opens starts the pauses again


def test_a_server_without_a_direct_channel_is_asked_again_only_much_later():
    grid = Grid()
    grid.server.port = None  # not listening: rpc_ticket fails with NoDirectChannel
    route = grid.route()
    route.call("stat", {"path": "/"}, {}, 5)
    assert route.state == route.WAITING and route._retry_at == direct.NO_CHANNEL_RETRY
    # an older server, without the method at all
    grid.rpc.direct = None
    grid.server.port = FakePort()
    route = grid.route()
    route.call("stat", {"path": "/"}, {}, 5)  # a client identity is refused it: not for clients
    assert route.state == route.WAITING and route._retry_at == direct.NO_CHANNEL_RETRY
    route = grid.route("rt-b")
    route.call("stat", {"path": "/"}, {}, 5)  # a runtime: no such method
    assert "no method" in route.last_error and route._retry_at == direct.NO_CHANNEL_RETRY


def test_a_refused_ticket_means_the_bus():
    grid = Grid()
    route = DirectRoute(
        grid.clock,
        "fs",
        lambda: defer.succeed({"host": "10.0.0.5", "port": 7001, "ticket": "0" * 32}),
        grid.bus,
        connect=grid.connect,
        clock=grid.clock,
        open_after=1,
    )
    assert route.call("stat", {"path": "/"}, {}, 5) is None
    grid.flush()
    assert route.state == route.WAITING and "refused the ticket" in route.last_error


def test_closing_fails_what_is_outstanding_and_closes_the_channel():
    grid = Grid()
    route = grid.opened(grid.route())
    d = route.call("slow", {"name": "x"}, {}, 5)
    closed = route.close()
    with pytest.raises(RPCError) as e:
        answered(d)
    assert e.value.kind == "Cancelled"
    grid.flush()
    assert answered(closed) is None and grid.server.connections == 0
    assert route.call("stat", {"path": "/"}, {}, 5) is None and route.state == route.CLOSED


# -- through RPCClient ------------------------------------------------------------------------------


class Publisher:
    """An RPCClient's pubsub client that records what goes over the bus."""

    identity = "alice@laptop"
    client_id = "c1"

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    def subscribe(self, topic: str, callback: Any) -> defer.Deferred:
        return defer.succeed(None)

    def publish(self, topic: str, payload: bytes, **kw: Any) -> defer.Deferred:
        self.published.append((topic, messages.decode(payload)))
        return defer.succeed(None)


def test_the_rpc_client_routes_an_enabled_target_through_its_channel():
    grid = Grid()
    bus = Publisher()
    prechecked: list[str] = []
    rpc = RPCClient(bus, grid.clock, precheck=prechecked.append)  # type: ignore[arg-type]
    route = rpc.enable_direct("fs", retry_safe=("stat",), connect=grid.connect, open_after=1)
    assert route is not None and rpc.enable_direct("fs") is route
    route.clock = grid.clock
    first = rpc.call("fs", "stat", path="/a")
    assert [(b["method"]) for _, b in bus.published] == ["stat", direct.TICKET_METHOD]
    # answer the ticket request as the bus would (the server's handle, for the publishing identity)
    ticket_request = bus.published[-1][1]
    fields = answered(grid.rpc.handle(bus.identity, direct.TICKET_METHOD, {}, {}))
    rpc._on_reply(SimpleNamespace(payload=messages.encode("rpc.reply", id=ticket_request["id"], **fields)))  # type: ignore[arg-type]
    grid.flush()
    assert route.state == route.OPEN
    second = rpc.call("fs", "stat", path="/b")
    other = rpc.call("scheduler", "ps")  # not enabled: the bus
    grid.flush()
    assert answered(second)["path"] == "/b"
    assert [b["method"] for _, b in bus.published] == ["stat", direct.TICKET_METHOD, "ps"]
    assert prechecked == ["fs", "fs", "scheduler"]  # the precheck still runs first, whatever the route
    assert pending(first) and pending(other)
    closed = rpc.close()
    grid.flush()
    assert answered(closed) is None and rpc.route("fs") is None and rpc.enable_direct("fs") is None
    for call in (first, other):
        with pytest.raises(RPCError) as e:
            answered(call)
        assert e.value.kind == "Cancelled"


def test_an_fs_client_turns_the_channel_on_with_its_read_only_methods():
    from oneos.fs.client import RETRY_SAFE, FSClient

    rpc = RPCClient(Publisher(), task.Clock())  # type: ignore[arg-type]
    FSClient(rpc, task.Clock())
    route = rpc.route("fs")
    assert route is not None and route.retry_safe == frozenset(RETRY_SAFE)
    assert not {"mkdir", "remove", "rename", "copy", "chmod", "chown", "write_small"} & route.retry_safe
    rpc2 = RPCClient(Publisher(), task.Clock())  # type: ignore[arg-type]
    FSClient(rpc2, task.Clock(), direct=False).as_user("bob")
    assert rpc2.route("fs") is None


def test_stat_many_of_a_large_glob_goes_in_batches_and_keeps_the_order():
    from oneos.fs.client import STAT_BATCH, FSClient

    calls: list[list[str]] = []

    class Answering:
        def call(self, target: str, method: str, timeout: float | None = None, **args: Any) -> defer.Deferred:
            calls.append(args["paths"])
            rows = [
                {"error": {"kind": "ENOENT", "message": f"{p}: no such file or directory"}}
                if p.endswith("7")
                else {
                    "stat": {"path": p, "kind": "file", "size": 1, "mode": 0o644, "owner": "a", "ctime": 1, "mtime": 1}
                }
                for p in args["paths"]
            ]
            return defer.succeed(rows)

    wanted = [f"/d/f{i}" for i in range(2 * STAT_BATCH + 500)]
    got = answered(FSClient(Answering(), task.Clock()).stat_many(wanted))  # type: ignore[arg-type]
    assert [len(c) for c in calls] == [STAT_BATCH, STAT_BATCH, 500]
    assert [getattr(x, "path", None) or str(x).split(":")[0] for x in got] == wanted
    assert isinstance(got[7], NotFound)


def test_the_service_sends_stats_as_to_dict_does():
    from oneos.fs.service import _wire
    from oneos.fs.store import Stat

    for st in (Stat("/a", "file", 1, 0o644, "ann", 1.5, 2.5), Stat("/", "dir", 0, 0o1777, "root", 0.0, 0.0)):
        assert _wire(st) == st.to_dict() and list(_wire(st)) == list(st.to_dict())
