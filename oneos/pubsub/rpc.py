"""Request/response over publish/subscribe.

A request goes to ``rpc(target, caller)`` carrying a correlation id and the
caller's reply topic ``reply(caller, client)``; the server answers there.
*caller* is the bus identity the request came from: the broker lets an
identity publish requests only under its own name and read only its own
replies (oneos/security/acl.py), so when this server itself had to log in
(the network has identities) it trusts the topic to say who asks:

- a runtime identity may call every method, and names the OneOS user it acts
  for (it is the front door that authenticated that user);
- a client identity ``USER@TAG`` may call only the methods the server opens
  to clients, always as USER: a ``user`` argument is replaced by USER and a
  ``system`` argument (the kernel's own area) is dropped.

Without identities (a broker that lets anyone in) every caller is trusted,
as on a closed test network.  The caller gets a Deferred that fires
with the result, fails with :class:`RPCError` rebuilt from the remote error
(its ``kind`` kept so typed errors survive the trip: the kinds are
registered in :mod:`oneos.errors`, which this module re-exports
``register_error`` and ``error_kind`` from), or fails with
:class:`RPCTimeout` naming who did not answer.  Several servers may serve one
target during a leader hand-over: the first answer wins, later ones are
ignored.

A target may also be served over a direct TCP channel (one hop instead of
two through the broker; :mod:`oneos.pubsub.direct`): the server's
:class:`~oneos.pubsub.direct.DirectServer` hands out tickets through the
built-in method ``rpc_ticket``, and every request on a channel goes through
:meth:`RPCServer.handle`, as the bus's do, as the identity the ticket was
issued to.  A client turns it on per target with
:meth:`RPCClient.enable_direct`; calls then take the channel when it is
open and the bus otherwise.

A caller in the same process as a started server of the target (the
scheduler commanding its own runtime) may skip the broker altogether with
:meth:`RPCClient.call_here`: the same JSON bodies through the same
:meth:`RPCServer.handle`, answered in a later reactor turn.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable, Collection
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from oneos.errors import NotPermitted, OneOSError, RPCError, RPCTimeout, error_kind, rebuild_error, register_error
from oneos.pubsub import messages, topics
from oneos.pubsub.client import Message, PubSubClient, Subscription
from oneos.pubsub.direct import OPEN_AFTER, TICKET_METHOD, Connector, Deadlines, DirectRoute, Unanswered
from oneos.pubsub.direct import TICKET_TIMEOUT as DIRECT_TICKET_TIMEOUT
from oneos.security.credentials import client_user, role

log = Logger()

Handler = Callable[..., Any]

#: where callers have always found them (the table itself is in oneos.errors)
__all__ = ["RPCClient", "RPCServer", "Unanswered", "error_kind", "register_error"]


#: id(pubsub client) -> target -> the started server of that target on that client, for RPCClient.call_here
_HERE: dict[int, dict[str, RPCServer]] = {}


def _served_here(client: Any, target: str) -> RPCServer | None:
    """The active server for *target* on *client* (this process, this bus identity), if there is one."""
    server = _HERE.get(id(client), {}).get(target)
    return server if server is not None and server.active and server.client is client else None


class RPCServer:
    """Answers requests for one target with the handlers given."""

    def __init__(
        self,
        client: PubSubClient,
        target: str,
        handlers: dict[str, Handler],
        guard: Callable[[str, dict[str, Any]], None] | None = None,
        *,
        clients: Collection[str] = (),
    ) -> None:
        self.client = client
        self.target = target
        self.handlers = dict(handlers)
        #: methods a client identity (USER@TAG) may call; every other one is for runtimes only
        self.clients = frozenset(clients)
        unknown = self.clients - set(self.handlers)
        if unknown:
            raise ValueError(f"methods open to clients but not served: {sorted(unknown)}")
        #: methods whose handler takes a ``user`` argument (the verified caller's user is passed there)
        self._takes_user = {name for name, h in self.handlers.items() if _accepts(h, "user")}
        #: called with (method, meta) before a handler: raises to refuse (typed error sent back),
        #: or raises :class:`Unanswered` to drop the request without a word
        self.guard = guard
        #: work still running when its caller stops waiting is cancelled (one timer for all: see handle)
        self._deadlines = Deadlines(getattr(client, "reactor", None), _cancel)
        #: the direct channel beside the bus (oneos.pubsub.direct.DirectServer sets itself here);
        #: it answers ``rpc_ticket``.  None: the bus only
        self.direct: Any = None
        self.active = False
        self._sub: Subscription | None = None

    def start(self) -> defer.Deferred:
        """Subscribe to the target's request topic."""
        self.active = True
        _HERE.setdefault(id(self.client), {})[self.target] = self
        d = self.client.subscribe(topics.rpc_requests(self.target), self._on_request)

        def keep(sub: Subscription) -> None:
            if self.active:
                self._sub = sub
            else:  # stopped before the broker granted it: do not leave it behind
                sub.cancel()

        return d.addCallback(keep)

    def stop(self) -> defer.Deferred:
        """Stop answering (at once, even if the subscription is still being granted)."""
        self.active = False
        here = _HERE.get(id(self.client), {})
        if here.get(self.target) is self:
            del here[self.target]
            if not here:
                del _HERE[id(self.client)]
        sub, self._sub = self._sub, None
        return sub.cancel() if sub is not None else defer.succeed(None)

    def _on_request(self, message: Message) -> None:
        if not self.active:
            return  # a stopped server never answers (another runtime serves the target now)
        if message.retain:
            return  # a stale retained request is never a live caller
        try:
            body = messages.decode(message.payload, "rpc.request")
            corr = messages.require(body, "id", str)
            method = messages.require(body, "method", str)
            reply_to = messages.require(body, "reply_to", str)
            args = body.get("args") or {}
            if not isinstance(args, dict):
                raise messages.MalformedMessage("args must be an object")
        except messages.MalformedMessage as e:
            log.warn("dropped malformed request on {topic}: {error}", topic=message.topic, error=str(e))
            return
        caller = topics.caller_of(message.topic)
        if not reply_to.startswith(topics.reply(caller, "")):
            log.warn(
                "dropped request from {caller} with a reply topic not its own: {topic}", caller=caller, topic=reply_to
            )
            return
        given = body.get("meta")
        meta: dict[str, Any] = given if isinstance(given, dict) else {}

        def answer(fields: dict[str, Any] | None) -> None:
            if fields is not None:
                self._answer(reply_to, corr, **fields)

        self.handle(caller, method, args, meta).addCallback(answer)

    def handle(self, caller: str, method: str, args: dict[str, Any], meta: dict[str, Any]) -> defer.Deferred:
        """Run one request of *caller* (an identity the broker, or a direct channel's ticket, vouches for).

        Fires with the reply's fields (``ok`` and ``result`` or ``error``),
        or None when this server must not answer (stopped, its guard said
        :class:`Unanswered`, the work was cancelled at the caller's deadline):
        the bus then stays silent and a direct channel says ``Unanswered``.
        Never fails.
        """
        if not self.active:
            return defer.succeed(None)
        try:
            self._authorise(caller, method, args, meta)
        except NotPermitted as e:
            log.warn(
                "refused {method} on {target} to {caller}: {why}",
                method=method,
                target=self.target,
                caller=caller,
                why=str(e),
            )
            return defer.succeed({"ok": False, "error": {"kind": e.kind, "message": str(e)}})
        if self.guard is not None:
            try:
                self.guard(method, meta)
            except Unanswered as e:
                log.info("not answering {method} on {target}: {why}", method=method, target=self.target, why=str(e))
                return defer.succeed(None)
            except Exception as e:
                return defer.succeed({"ok": False, "error": {"kind": error_kind(e), "message": str(e)}})
        handler = self.handlers.get(method)
        if method == TICKET_METHOD and self.direct is not None:
            d = defer.maybeDeferred(self.direct.ticket, caller)
        elif handler is None:
            d = defer.fail(RPCError(f"{self.target!r} has no method {method!r}", kind="NoSuchMethod"))
        else:
            d = defer.maybeDeferred(handler, **args)
            wait = meta.get("timeout")
            if isinstance(wait, (int, float)) and not isinstance(wait, bool) and not d.called:
                # The caller stops waiting after its timeout: work still running then (a runaway glob,
                # a listing) is cancelled here rather than left to eat the server.
                work = d
                self._deadlines.add(work, self.client.reactor.seconds() + float(wait) + 1.0)

                def done(result: Any) -> Any:
                    self._deadlines.discard(work)
                    return result

                d.addBoth(done)

        def ok(result: Any) -> dict[str, Any]:
            return {"ok": True, "result": result}

        def failed(failure: Any) -> dict[str, Any] | None:
            error = failure.value
            if isinstance(error, defer.CancelledError):
                log.info(
                    "{method} on {target} cancelled: its caller's deadline passed", method=method, target=self.target
                )
                return None
            if not isinstance(error, (OneOSError, TypeError)):
                log.failure("RPC {method} on {target} failed", failure, method=method, target=self.target)
            kind = error_kind(error)
            text = str(error) if isinstance(error, OneOSError) else f"{type(error).__name__}: {error}"
            return {"ok": False, "error": {"kind": kind, "message": text}}

        return d.addCallbacks(ok, failed)

    def _authorise(self, caller: str, method: str, args: dict[str, Any], meta: dict[str, Any]) -> None:
        """Check *caller* may make this request and pin the OneOS user it acts as (module docstring)."""
        if self.client.address.username is None:
            return  # no identities on this network: every caller is trusted
        kind = role(caller)
        if kind == "runtime":
            return
        if kind is None:
            raise NotPermitted(f"{caller!r} is not an identity of this network")
        if method not in self.clients and not (method == TICKET_METHOD and self.direct is not None):
            raise NotPermitted(f"{method} on {self.target} is for runtimes, not clients ({caller})")
        user = client_user(caller)
        args.pop("system", None)
        args.pop("user", None)
        if method in self._takes_user:
            args["user"] = user
        meta["user"] = user

    def _answer(self, reply_to: str, corr: str, **fields: Any) -> None:
        try:
            payload = messages.encode("rpc.reply", id=corr, **fields)
        except (TypeError, ValueError) as e:
            payload = messages.encode(
                "rpc.reply", id=corr, ok=False, error={"kind": "RPCError", "message": f"unserialisable result: {e}"}
            )
        self.client.publish(reply_to, payload, qos=1).addErrback(
            lambda f: log.warn("could not send RPC reply: {error}", error=f.getErrorMessage())
        )


def _cancel(work: defer.Deferred) -> None:
    work.cancel()


def _accepts(handler: Handler, name: str) -> bool:
    """Whether *handler* takes a keyword argument *name*."""
    try:
        params = inspect.signature(handler).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class RPCClient:
    """Makes calls and matches replies to them by correlation id."""

    def __init__(
        self,
        client: PubSubClient,
        reactor: Any,
        default_timeout: float = 5.0,
        precheck: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.reactor = reactor
        self.default_timeout = default_timeout
        #: raises at once when *target* is known to have nobody serving it (inside a runtime,
        #: from the membership), so a caller gets the reason instead of waiting for a timeout
        self.precheck = precheck
        self._pending: dict[str, tuple[defer.Deferred, IDelayedCall]] = {}
        self._ready: defer.Deferred | None = None
        #: target -> its direct channel (enable_direct)
        self._routes: dict[str, DirectRoute] = {}
        self._closed = False

    @property
    def reply_topic(self) -> str:
        """Where answers come (from the client's identity, which the runtime may set after building this)."""
        return topics.reply(self.client.identity, self.client.client_id)

    def _ensure_subscribed(self) -> defer.Deferred:
        if self._ready is None:
            self._ready = self.client.subscribe(self.reply_topic, self._on_reply)
        d: defer.Deferred = defer.Deferred()

        def ready(result: Any) -> Any:
            d.callback(None)
            return result

        self._ready.addBoth(ready)
        return d

    def enable_direct(
        self,
        target: str,
        *,
        retry_safe: Collection[str] = (),
        connect: Connector | None = None,
        open_after: int = OPEN_AFTER,
    ) -> DirectRoute | None:
        """Send calls to *target* over a direct channel whenever its server offers one (oneos.pubsub.direct).

        *retry_safe*: methods that change nothing, sent again over the bus
        when a channel breaks before answering them.  Calling it again for a
        target changes nothing.  Returns the target's route (None once closed).
        """
        if self._closed:
            return None
        route = self._routes.get(target)
        if route is None:
            route = self._routes[target] = DirectRoute(
                self.reactor,
                target,
                lambda: self._send(target, TICKET_METHOD, min(self.default_timeout, DIRECT_TICKET_TIMEOUT), None, {}),
                lambda method, args, meta, timeout: self._send(target, method, timeout, meta, args),
                retry_safe=retry_safe,
                connect=connect,
                open_after=open_after,
            )
        return route

    def route(self, target: str) -> DirectRoute | None:
        """*target*'s direct route, if enabled (its state, server and counts: for status and tests)."""
        return self._routes.get(target)

    def call(
        self, target: str, method: str, timeout: float | None = None, meta: dict[str, Any] | None = None, **args: Any
    ) -> defer.Deferred:
        """Call *method* on *target*; fires with its result or a typed error.

        *meta* travels beside the arguments (the caller's fencing epoch), for
        the server's guard rather than the handler.  The call takes the
        target's direct channel when one is open, else the bus.
        """
        timeout = self.default_timeout if timeout is None else timeout
        if self.precheck is not None:
            try:
                self.precheck(target)
            except Exception as e:
                return defer.fail(e)
        route = self._routes.get(target)
        if route is not None and route.ready:
            direct = route.call(method, args, meta or {}, timeout)
            if direct is not None:
                return direct
        result = self._send(target, method, timeout, meta, args)
        if route is not None:
            route.kick()  # the call went first; a channel for the next ones is asked for now, if it is time
        return result

    def _send(
        self, target: str, method: str, timeout: float, meta: dict[str, Any] | None, args: dict[str, Any]
    ) -> defer.Deferred:
        """One call over the bus."""
        corr = uuid.uuid4().hex
        result: defer.Deferred = defer.Deferred()

        def expire() -> None:
            entry = self._pending.pop(corr, None)
            if entry is not None:
                entry[0].errback(RPCTimeout(target, method, timeout))

        timer = self.reactor.callLater(timeout, expire)
        self._pending[corr] = (result, timer)

        def send(_: Any) -> None:
            if corr not in self._pending:
                return
            extra = {"meta": {**(meta or {}), "timeout": timeout}}
            payload = messages.encode(
                "rpc.request", id=corr, method=method, args=args, reply_to=self.reply_topic, **extra
            )
            # A request whose caller has given up is never delivered late (after a cut heals).
            self.client.publish(
                topics.rpc(target, self.client.identity), payload, qos=1, expires=self.reactor.seconds() + timeout
            ).addErrback(lambda f: None)

        self._ensure_subscribed().addCallback(send)
        return result

    def _on_reply(self, message: Message) -> None:
        try:
            body = messages.decode(message.payload, "rpc.reply")
            corr = messages.require(body, "id", str)
        except messages.MalformedMessage as e:
            log.warn("dropped malformed reply: {error}", error=str(e))
            return
        entry = self._pending.pop(corr, None)
        if entry is None:
            return  # late, duplicate, or after a timeout
        d, timer = entry
        if timer.active():
            timer.cancel()
        self._settle(d, body)

    @staticmethod
    def _settle(d: defer.Deferred, body: dict[str, Any]) -> None:
        """Fire *d* with a reply's result, or its error rebuilt as the typed error of its kind."""
        if body.get("ok") is True:
            d.callback(body.get("result"))
            return
        given = body.get("error")
        error: dict[str, Any] = given if isinstance(given, dict) else {}
        kind = str(error.get("kind", "RPCError"))
        text = str(error.get("message", "remote call failed"))
        d.errback(rebuild_error(kind, text))

    def call_here(
        self, target: str, method: str, timeout: float | None = None, meta: dict[str, Any] | None = None, **args: Any
    ) -> defer.Deferred:
        """As :meth:`call`, answered by this process's own server for *target* when it has an active one.

        The broker's two hops are skipped, nothing else: the request and the
        answer still pass through JSON (the handler and the caller get their
        own copies, as over the bus), and through :meth:`RPCServer.handle`
        as this client's identity (its rights, the server's guard and the
        deadline); the answer comes in a later reactor turn.  A server that
        stays silent (its guard says :class:`Unanswered`) passes the call to
        the bus, where another server of the target may answer.  The
        scheduler calls its own runtime this way (a third of its spawns on
        three runtimes).
        """
        server = _served_here(self.client, target)
        if server is None:
            return self.call(target, method, timeout=timeout, meta=meta, **args)
        timeout = self.default_timeout if timeout is None else timeout
        if self.precheck is not None:
            try:
                self.precheck(target)
            except Exception as e:
                return defer.fail(e)
        result: defer.Deferred = defer.Deferred()
        deadline = self.reactor.seconds() + timeout

        def expire() -> None:
            if not result.called:
                result.errback(RPCTimeout(target, method, timeout))

        timer = self.reactor.callLater(timeout, expire)

        def answered(fields: dict[str, Any] | None) -> None:
            if result.called:
                return  # timed out meanwhile
            if timer.active():
                timer.cancel()
            if fields is None:
                left = max(0.0, deadline - self.reactor.seconds())
                self._send(target, method, left, meta, args).chainDeferred(result)
                return
            try:
                body = messages.decode(messages.encode("rpc.reply", id="", **fields), "rpc.reply")
            except (TypeError, ValueError) as e:
                body = {"ok": False, "error": {"kind": "RPCError", "message": f"unserialisable result: {e}"}}
            self._settle(result, body)

        def run() -> None:
            try:
                request = messages.decode(
                    messages.encode(
                        "rpc.request",
                        id="",
                        method=method,
                        args=args,
                        reply_to="",
                        meta={**(meta or {}), "timeout": timeout},
                    ),
                    "rpc.request",
                )
            except (TypeError, ValueError) as e:
                if timer.active():
                    timer.cancel()
                if not result.called:
                    result.errback(RPCError(f"cannot send {method} to {target}: {e}"))
                return
            server.handle(self.client.identity, method, request["args"], request["meta"]).addCallback(answered)

        self.reactor.callLater(0, run)
        return result

    def cancel_all(self) -> None:
        """Fail every pending call and close the direct channels for good (the caller is shutting down)."""
        self.close()

    def close(self) -> defer.Deferred:
        """Fail every pending call, close the direct channels for good; fires once their connections are gone.

        Calls made afterwards go over the bus.
        """
        self._closed = True
        routes, self._routes = list(self._routes.values()), {}
        closing = [route.close() for route in routes]
        pending, self._pending = self._pending, {}
        for d, timer in pending.values():
            if timer.active():
                timer.cancel()
            d.errback(RPCError("caller shut down", kind="Cancelled"))
        return defer.DeferredList(closing).addCallback(lambda _: None)
