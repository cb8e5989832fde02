"""``twistd oneospsd``: the OneOS publish/subscribe broker's options and service maker.

``twisted/plugins/oneospsd.py`` only names this module (a
:class:`twisted.application.service.ServiceMaker`); twistd imports it when
the ``oneospsd`` subcommand is used.  :class:`Options` parses and checks the
flags; :func:`makeService` builds the broker service
(``oneos.broker.app.build_broker``), which binds when twistd starts it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.python import usage

from oneos.errors import OneOSError, describe
from oneos.reactor import install_asyncio_reactor

if TYPE_CHECKING:
    from oneos.broker.service import BrokerService


class Options(usage.Options):
    longdesc = (
        "Run the MQTT 3.1.1 broker (amqtt) that OneOS runtimes meet on. Clients must "
        "present the network's credentials ($ONEOS_HOME/credentials.json, created on the "
        "first start; 'oneos invite' prints a join token for other machines). Retained "
        "messages and last wills are kept in memory only. It listens "
        "on all interfaces by default because other machines must reach it; any "
        "standard MQTT broker (Mosquitto, EMQX) can be used instead."
    )
    optFlags = [
        ["allow-anonymous", None, "let any client connect without credentials (insecure: tests, closed networks)"],
        [
            "tls",
            None,
            "serve MQTT over TLS (mqtts://) with this machine's certificate, $ONEOS_HOME/tls/cert.pem "
            "and key.pem ('oneos tls init' creates them)",
        ],
    ]
    optParameters = [
        ["port", "p", None, "TCP port to listen on (default 1883, 8883 with TLS; 0 = any free port)", int],
        ["interface", "i", "0.0.0.0", "address to listen on"],
        ["websocket-port", None, 0, "also serve MQTT over websockets on this port (0 = off)", int],
        ["port-file", None, None, "write the bound TCP port to this file once listening"],
        [
            "max-message",
            None,
            1024 * 1024,
            "largest PUBLISH payload in bytes; larger ones are dropped and logged (0 = no limit)",
            int,
        ],
        [
            "connect-timeout",
            None,
            10.0,
            "seconds a new connection may take to send CONNECT before it is closed (0 = no limit)",
            float,
        ],
        ["cert", None, None, "serve MQTT over TLS with this PEM certificate (with --key)"],
        ["key", None, None, "the PEM private key of --cert"],
    ]

    def postOptions(self) -> None:
        if bool(self["cert"]) != bool(self["key"]):
            raise usage.UsageError("--cert and --key go together")
        if self["port"] is None:
            self["port"] = 8883 if (self["tls"] or self["cert"]) else 1883
        for key in ("port", "websocket-port"):
            if not 0 <= self[key] <= 65535:
                raise usage.UsageError(f"--{key} must be 0..65535")
        for key in ("max-message", "connect-timeout"):
            if self[key] < 0:
                raise usage.UsageError(f"--{key} must not be negative (0 = no limit)")


def makeService(options: Options) -> BrokerService:
    """The broker service for *options*; it binds when started.

    Installs the asyncio reactor first (amqtt needs it; the choice must be made
    before anything imports the reactor).  Unless ``--allow-anonymous``, the
    network's credentials are read from ``$ONEOS_HOME/credentials.json``, which
    is created on a first start; ``--tls`` needs ``$ONEOS_HOME/tls/cert.pem``.
    A OneOS error here (no certificate, another reactor installed) exits with
    one plain line.
    """
    try:
        install_asyncio_reactor()
        from oneos.broker.app import build_broker, tls_files

        return build_broker(
            options["interface"],
            options["port"],
            options["websocket-port"],
            options["port-file"],
            max_message=options["max-message"] or None,
            connect_timeout=options["connect-timeout"] or None,
            allow_anonymous=bool(options["allow-anonymous"]),
            tls=tls_files(bool(options["tls"]), options["cert"], options["key"]),
        )
    except OneOSError as e:
        raise SystemExit(f"oneospsd: {describe(e)}") from None
