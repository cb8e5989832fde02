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
from oneos.security.credentials import client_user, role

log = Logger()

Handler = Callable[..., Any]

#: where callers have always found them (the table itself is in oneos.errors)
__all__ = ["RPCClient", "RPCServer", "Unanswered", "error_kind", "register_error"]


class Unanswered(Exception):
    """Raised by a server's guard: this server must not answer (another one may)."""


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
        self.active = False
        self._sub: Subscription | None = None

    def start(self) -> defer.Deferred:
        """Subscribe to the target's request topic."""
        self.active = True
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
            self._answer(reply_to, corr, ok=False, error={"kind": e.kind, "message": str(e)})
            return
        if self.guard is not None:
            try:
                self.guard(method, meta)
            except Unanswered as e:
                log.info("not answering {method} on {target}: {why}", method=method, target=self.target, why=str(e))
                return
            except Exception as e:
                self._answer(reply_to, corr, ok=False, error={"kind": error_kind(e), "message": str(e)})
                return
        handler = self.handlers.get(method)
        if handler is None:
            d = defer.fail(RPCError(f"{self.target!r} has no method {method!r}", kind="NoSuchMethod"))
        else:
            d = defer.maybeDeferred(handler, **args)
            wait = meta.get("timeout")
            if isinstance(wait, (int, float)) and not d.called:
                # The caller stops waiting after its timeout: work still running then (a runaway glob,
                # a listing) is cancelled here rather than left to eat the server.
                timer = self.client.reactor.callLater(float(wait) + 1.0, d.cancel)
                d.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])

        def ok(result: Any) -> None:
            self._answer(reply_to, corr, ok=True, result=result)

        def failed(failure: Any) -> None:
            error = failure.value
            if isinstance(error, defer.CancelledError):
                log.info(
                    "{method} on {target} cancelled: its caller's deadline passed", method=method, target=self.target
                )
                return
            if not isinstance(error, (OneOSError, TypeError)):
                log.failure("RPC {method} on {target} failed", failure, method=method, target=self.target)
            kind = error_kind(error)
            text = str(error) if isinstance(error, OneOSError) else f"{type(error).__name__}: {error}"
            self._answer(reply_to, corr, ok=False, error={"kind": kind, "message": text})

        d.addCallbacks(ok, failed)

    def _authorise(self, caller: str, method: str, args: dict[str, Any], meta: dict[str, Any]) -> None:
        """Check *caller* may make this request and pin the OneOS user it acts as (module docstring)."""
        if self.client.address.username is None:
            return  # no identities on this network: every caller is trusted
        kind = role(caller)
        if kind == "runtime":
            return
        if kind is None:
            raise NotPermitted(f"{caller!r} is not an identity of this network")
        if method not in self.clients:
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

    def call(
        self, target: str, method: str, timeout: float | None = None, meta: dict[str, Any] | None = None, **args: Any
    ) -> defer.Deferred:
        """Call *method* on *target*; fires with its result or a typed error.

        *meta* travels beside the arguments (the caller's fencing epoch), for
        the server's guard rather than the handler.
        """
        timeout = self.default_timeout if timeout is None else timeout
        if self.precheck is not None:
            try:
                self.precheck(target)
            except Exception as e:
                return defer.fail(e)
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
        if body.get("ok") is True:
            d.callback(body.get("result"))
            return
        given = body.get("error")
        error: dict[str, Any] = given if isinstance(given, dict) else {}
        kind = str(error.get("kind", "RPCError"))
        text = str(error.get("message", "remote call failed"))
        d.errback(rebuild_error(kind, text))

    def cancel_all(self) -> None:
        """Fail every pending call (the caller is shutting down)."""
        pending, self._pending = self._pending, {}
        for d, timer in pending.values():
            if timer.active():
                timer.cancel()
            d.errback(RPCError("caller shut down", kind="Cancelled"))
