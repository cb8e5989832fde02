"""The client of the ``kernel`` RPC target (served by the kernel leader: ``ping``, ``runtimes``).

The handlers are in :class:`oneos.runtime.kernel.KernelHost`.  This module
imports no service, so the shell and the CLI may use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from oneos.pubsub import messages, topics
from oneos.runtime.status import RuntimeStatus

TARGET = topics.KERNEL


@dataclass(frozen=True)
class KernelPing:
    """Who leads the kernel: its runtime id, its process instance and its term."""

    leader: str
    instance: str
    epoch: int

    def encode(self) -> dict[str, Any]:
        return {"leader": self.leader, "instance": self.instance, "epoch": self.epoch}

    @classmethod
    def decode(cls, body: object) -> KernelPing:
        if not isinstance(body, dict):
            raise messages.MalformedMessage(f"a kernel ping answer is an object, not {type(body).__name__}")
        epoch = body.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise messages.MalformedMessage("a kernel ping answer needs 'epoch' (an integer)")
        return cls(messages.require(body, "leader", str), messages.require(body, "instance", str), epoch)


class KernelClient:
    """Typed calls to the kernel leader."""

    def __init__(self, rpc: Any, timeout: float | None = None) -> None:
        self.rpc = rpc
        self.timeout = timeout

    def _call(self, method: str, timeout: float | None) -> defer.Deferred:
        return self.rpc.call(TARGET, method, timeout=self.timeout if timeout is None else timeout)

    def ping(self, timeout: float | None = None) -> defer.Deferred:
        """Fires with a :class:`KernelPing`."""
        return self._call("ping", timeout).addCallback(KernelPing.decode)

    def runtimes(self, timeout: float | None = None) -> defer.Deferred:
        """Every runtime the leader knows: a list of :class:`RuntimeStatus`."""
        return self._call("runtimes", timeout).addCallback(lambda rows: [RuntimeStatus.from_dict(r) for r in rows])
