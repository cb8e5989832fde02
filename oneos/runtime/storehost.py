"""The network's store on this runtime: agree on it at start, serve it when it is our turn.

At start (before this runtime announces itself) it reads the network's
store record, decides with :func:`oneos.runtime.netstore.decide` (refusing
a conflicting setting), and announces the store if the network had none.
Afterwards it follows the membership: when :func:`~oneos.runtime.netstore.fs_server`
names this runtime it takes the ``fs`` role (the file-system service under
it), and gives it up when another runtime should serve.

Its record also lets this runtime's RPC client say, at once, why nobody
serves the tree (:func:`oneos.runtime.netstore.route_check`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from oneos.pubsub import messages, topics
from oneos.pubsub.client import Message, PubSubClient
from oneos.runtime.kernel import RoleHost
from oneos.runtime.netstore import StoreDecision, StoreRecord, decide, fs_server, recall, remember

log = Logger()


class StoreHost(service.Service):
    """Agrees on the network's store and drives the ``fs`` role."""

    name = "store"  # type: ignore[assignment]  # Twisted: Service.name = None, so mypy infers type None

    def __init__(
        self,
        client: PubSubClient,
        membership: Any,
        role: RoleHost,
        reactor: Any,
        *,
        me: str,
        configured: str,
        local_store: str,
        kernel: bool,
        machine: str,
        home: Path,
    ) -> None:
        self.client = client
        self.membership = membership
        self.role = role
        self.reactor = reactor
        self.me = me
        self.configured = configured
        self.local_store = local_store
        self.kernel = kernel
        self.machine = machine
        self.home = Path(home)
        self.record: StoreRecord | None = None
        self.eligible = False
        self._latest: StoreRecord | None = None
        self._busy: defer.Deferred | None = None

    # -- start: agree on the store ------------------------------------------------
    @defer.inlineCallbacks
    def join(self) -> Any:
        """Learn the network's store (raising StoreConflict on a conflicting setting); announce it if new."""
        yield self.client.subscribe(topics.NETWORK_STORE, self._on_record)
        yield self.client.barrier()
        decision = self._decide(self._latest, recall(self.home))
        if decision.publish and decision.record is not None:
            yield self._announce(decision.record)
            yield self.client.barrier()
            # Two runtimes may have announced at once: the broker kept the last; both follow it.
            if self._latest is not None and self._latest != decision.record:
                decision = self._decide(self._latest, None)
        self._adopt(decision)
        self.client.add_listener(on_connect=self._on_reconnect)

    def _decide(self, retained: StoreRecord | None, remembered: StoreRecord | None) -> StoreDecision:
        return decide(
            self.configured,
            retained,
            remembered,
            me=self.me,
            machine=self.machine,
            kernel=self.kernel,
            local_store=self.local_store,
            now=self.reactor.seconds(),
        )

    def _adopt(self, decision: StoreDecision) -> None:
        self.record, self.eligible = decision.record, decision.eligible
        if self.record is None:
            log.warn("this network has no file store yet; file operations fail until a kernel runtime joins")
            return
        remember(self.home, self.record)
        log.info(
            "file tree: {store}{me}",
            store=self.record.describe(),
            me=" (this runtime can serve it)" if self.eligible else "",
        )

    def _announce(self, record: StoreRecord) -> defer.Deferred:
        return self.client.publish(topics.NETWORK_STORE, record.encode(), qos=1, retain=True)

    def _on_reconnect(self) -> None:
        # A restarted broker forgot its retained messages: say again which store the network uses,
        # so a newcomer does not start a second tree.
        if self.record is not None and self.running:
            self._announce(self.record).addErrback(lambda f: None)

    def _on_record(self, message: Message) -> None:
        if not message.payload:
            return
        try:
            record = StoreRecord.decode(message.payload)
        except messages.MalformedMessage as e:
            log.warn("dropped malformed store record: {error}", error=str(e))
            return
        self._latest = record
        if self.record is None and self.running:
            try:
                decision = self._decide(record, None)
            except Exception as e:  # a conflict with a store announced after we started: keep going without one
                log.error("{error}", error=str(e))
                return
            self._adopt(decision)
            self.membership.publish()
        elif self.record is not None and not self.record.same_store(record):
            # The same store announced by another runtime (many kernel runtimes started at once with one
            # store setting each announce it) is no news: only a different tree is worth a warning.
            log.warn(
                "another file store was announced ({other}); this runtime keeps {mine}",
                other=record.describe(),
                mine=self.record.describe(),
            )

    # -- afterwards: serve the tree when it is our turn ---------------------------------
    def startService(self) -> None:
        super().startService()
        self.membership.on_change(self.evaluate)
        self.evaluate()

    def stopService(self) -> Any:
        super().stopService()
        return self.role.step_down()

    def server(self) -> str | None:
        """The runtime serving the tree now, by the membership view."""
        return fs_server(self.membership.live())

    def evaluate(self) -> None:
        if not self.running or self._busy is not None:
            return
        mine = self.server() == self.me and self.record is not None
        if mine and not self.role.holding:
            self._busy = self.role.take_over()
        elif not mine and self.role.holding:
            self._busy = self.role.step_down()
        else:
            return

        def done(_: Any) -> None:
            self._busy = None
            self.membership.publish()  # fs_serving changed
            self.evaluate()  # the view may have moved on meanwhile

        self._busy.addBoth(done)

    def status_fields(self) -> dict[str, Any]:
        return {"fs_eligible": self.eligible, "fs_serving": self.role.holding}
