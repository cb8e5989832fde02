"""Builds the standalone broker's service (used by the ``oneospsd`` plugin)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from oneos.broker.service import CONNECT_TIMEOUT, MAX_MESSAGE, BrokerService

log = Logger()


def build_broker(interface: str, port: int, websocket_port: int = 0, port_file: str | None = None, *,
                 max_message: int | None = MAX_MESSAGE, connect_timeout: float | None = CONNECT_TIMEOUT) -> BrokerService:
    """A broker service; on a bind failure the process exits with status 1.

    *max_message*: largest PUBLISH payload accepted (larger ones are dropped
    and logged; None: no limit); *connect_timeout*: seconds a connection may
    take to send CONNECT (None: no limit).
    """
    from twisted.internet import reactor

    iface = interface.replace(":", "\\:")  # endpoint syntax escapes IPv6 colons
    broker = BrokerService(
        f"tcp:{port}:interface={iface}",
        websocket=f"tcp:{websocket_port}:interface={iface}" if websocket_port else None,
        max_message=max_message,
        connect_timeout=connect_timeout,
    )

    def listening(address: tuple[str, int]) -> None:
        if port_file:
            tmp = Path(port_file + ".tmp")
            tmp.write_text(str(address[1]))
            os.replace(tmp, port_file)

    def failed(failure: Any) -> None:
        # the service already logged why; only say that we give up
        log.critical("oneospsd: exiting because the broker cannot listen")
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        reactor.stop()

    def forget_port_file() -> None:
        if port_file:
            Path(port_file).unlink(missing_ok=True)

    reactor.callWhenRunning(lambda: broker.whenListening().addCallbacks(listening, failed))
    reactor.addSystemEventTrigger("after", "shutdown", forget_port_file)
    return broker
