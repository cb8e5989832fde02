"""Builds the standalone broker's service (used by the ``oneospsd`` plugin)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from oneos.broker.service import CONNECT_TIMEOUT, MAX_MESSAGE, BrokerService
from oneos.security import credentials
from oneos.security.credentials import Credentials

log = Logger()


def network_credentials(home: Path | None = None) -> Credentials:
    """The credentials of the network in *home* ($ONEOS_HOME by default), created (and logged) on a first start."""
    from oneos.config import oneos_home

    home = oneos_home() if home is None else home
    creds, created = credentials.create(home, credentials.ADMIN_IDENTITY)
    where = credentials.path(home)
    if created:
        log.info(
            "created the network's credentials in {path} (username {user!r}, a random secret); "
            "'oneos invite' prints the token that joins another machine",
            path=str(where),
            user=creds.username,
        )
    else:
        log.info(
            "clients must present the network's credentials ({path}; 'oneos invite' prints a join token)",
            path=str(where),
        )
    return creds


def tls_files(use_home: bool, cert: str | None, key: str | None, home: Path | None = None) -> tuple[str, str] | None:
    """The (certfile, keyfile) of ``--tls`` (this machine's ``$ONEOS_HOME/tls/cert.pem``, ``key.pem``) or
    ``--cert``/``--key``; None when neither was asked for."""
    from oneos.config import oneos_home
    from oneos.security import tls

    if cert or key:
        if not (cert and key):
            raise tls.TLSError("--cert and --key go together")
        return cert, key
    if not use_home:
        return None
    home = oneos_home() if home is None else home
    if not tls.cert_path(home).exists():
        raise tls.NoCertificate(
            f"no TLS certificate in {tls.cert_path(home)}: run 'oneos tls init' first (or give --cert and --key)"
        )
    return str(tls.cert_path(home)), str(tls.key_path(home))


def build_broker(
    interface: str,
    port: int,
    websocket_port: int = 0,
    port_file: str | None = None,
    *,
    max_message: int | None = MAX_MESSAGE,
    connect_timeout: float | None = CONNECT_TIMEOUT,
    allow_anonymous: bool = False,
    home: Path | None = None,
    tls: tuple[str, str] | None = None,
) -> BrokerService:
    """A broker service; on a bind failure the process exits with status 1.

    Clients must present the network's credentials (``$ONEOS_HOME/credentials.json``,
    or *home*'s; created on the first start); *allow_anonymous* turns that off.

    *max_message*: largest PUBLISH payload accepted (larger ones are dropped
    and logged; None: no limit); *connect_timeout*: seconds a connection may
    take to send CONNECT (None: no limit).  *tls*: (certfile, keyfile): the
    listener speaks MQTT over TLS only (see :func:`tls_files`).
    """
    from twisted.internet import reactor

    credentials = None if allow_anonymous else network_credentials(home)
    if allow_anonymous:
        log.warn(
            "oneospsd: --allow-anonymous: ANY client that reaches this broker may connect, read and "
            "publish (insecure; only for tests and closed networks)"
        )
    iface = interface.replace(":", "\\:")  # endpoint syntax escapes IPv6 colons
    broker = BrokerService(
        f"tcp:{port}:interface={iface}",
        websocket=f"tcp:{websocket_port}:interface={iface}" if websocket_port else None,
        max_message=max_message,
        connect_timeout=connect_timeout,
        credentials=credentials,
        tls=tls,
    )
    if tls is not None:
        log.info(
            "oneospsd: TLS on (mqtts://): certificate {cert}, key {key}; plain MQTT is not served",
            cert=tls[0],
            key=tls[1],
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
