"""``twistd oneosd``: a OneOS runtime's options and service maker.

``twisted/plugins/oneosd.py`` only names this module (a
:class:`twisted.application.service.ServiceMaker`); twistd imports it when
the ``oneosd`` subcommand is used.  :class:`Options` parses the flags and, in
``postOptions``, loads and validates the configuration they override and
reads the home's ``credentials.json``, so a bad flag, ``config.json`` or
credentials file is a usage error before anything is built.
:func:`makeService` only builds the service tree from that configuration
(``oneos.runtime.app.build_runtime``); the services do their work when
twistd starts them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.python import usage

from oneos.config import Config, load_config, remembered_id
from oneos.errors import OneOSError, describe
from oneos.reactor import install_asyncio_reactor
from oneos.runtime.app import installed_credentials, with_installed_identity
from oneos.security.credentials import Credentials


class Flags(usage.Options):
    """The runtime's flags, checked against each other only: no file is read.

    ``oneosd``'s first-run interview takes its preset answers from these
    (``oneos.cli.oneosd.flag_settings``); twistd uses :class:`Options`.
    """

    synopsis = "[options] [RUNTIME_ID]"
    longdesc = (
        "Run a OneOS runtime. Settings come from $ONEOS_HOME/config.json "
        "(default ~/.oneos; write it with 'oneos configure'); flags override it. "
        "With no config file this is the one-machine embedded default: an "
        "in-process broker on 127.0.0.1:1883 unless one answers there, the "
        "SQLite store under $ONEOS_HOME, and a kernel runtime."
    )
    optFlags = [
        ["kernel", None, "host kernel services if elected (overrides config)"],
        ["no-kernel", None, "never host kernel services (overrides config)"],
    ]
    optParameters = [
        ["home", None, None, "OneOS home directory (default $ONEOS_HOME or ~/.oneos)"],
        ["id", None, None, "runtime id (default: config, else the one kept in $ONEOS_HOME/runtime_id)"],
        ["pubsub", None, None, "broker URL, e.g. mqtt://10.0.0.5:1883"],
        ["broker", None, None, "auto (host one on loopback if none answers), embedded, or external"],
        ["store", None, None, "file store URL: sqlite:///PATH or mongodb://HOST:PORT/DB"],
        ["memory", None, None, "memory limit for agents on this runtime, in MB"],
        ["tags", None, None, "comma-separated tags the scheduler can match"],
        ["address", None, None, "address other runtimes reach this one on (default: detected)"],
        ["keepalive", None, None, "MQTT keepalive in seconds; a silent runtime is dead after 1.5x this"],
        ["stats-interval", None, None, "seconds between status samples (sent on change, every 6th anyway)"],
        ["run-as", None, None, "OS account programs run as (default auto: nobody when run as root)"],
        ["disconnect-grace", None, None, "seconds a runtime may be unreachable before its programs restart elsewhere"],
        ["ssh", None, None, "SSH front door endpoint, e.g. tcp:2222:interface=10.0.0.5 ('' = off; default auto)"],
        ["telnet", None, None, "telnet front door endpoint (default off)"],
        ["pipe", None, None, "stream listener endpoint (default auto: loopback on a one-machine network)"],
        ["desktop", None, None, "web desktop endpoint, e.g. tcp:3000:interface=10.0.0.5 ('' = off; default auto)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        #: ``--device`` specs, in the order given
        self.devices: list[str] = []

    def opt_device(self, spec: str) -> None:
        """an I/O device to serve, NAME:in|out:DRIVER[:KEY=VALUE,...], e.g. rnd:in:random (repeatable; docs/devices.md)"""
        from oneos.config import parse_device_spec
        from oneos.errors import ConfigError

        try:
            parse_device_spec(spec, len(self.devices))  # a bad spec is named by its flag here
        except ConfigError as e:
            raise usage.UsageError(f"--device {spec}: {e.problem}") from None
        self.devices.append(spec)

    def parseArgs(self, runtime_id: str | None = None) -> None:
        if runtime_id is not None and self["id"] is not None and runtime_id != self["id"]:
            raise usage.UsageError("give the runtime id either as --id or positionally, not both")
        self["id"] = self["id"] or runtime_id

    def postOptions(self) -> None:
        if self["kernel"] and self["no-kernel"]:
            raise usage.UsageError("--kernel and --no-kernel contradict each other")

    def home(self) -> Path | None:
        """``--home``, or None for ``$ONEOS_HOME`` / ``~/.oneos``."""
        return Path(self["home"]).expanduser() if self["home"] else None

    def overrides(self) -> dict[str, Any]:
        """The flags given, as config settings (None for 'not given'; ``devices`` only when ``--device`` was)."""
        kernel = True if self["kernel"] else False if self["no-kernel"] else None
        devices = {"devices": list(self.devices)} if self.devices else {}
        return {
            "id": self["id"],
            "pubsub": self["pubsub"],
            "broker": self["broker"],
            "store": self["store"],
            "kernel": kernel,
            "memory_mb": self["memory"],
            "tags": self["tags"],
            "address": self["address"],
            "keepalive": self["keepalive"],
            "stats_interval": self["stats-interval"],
            "disconnect_grace": self["disconnect-grace"],
            "run_as": self["run-as"],
            "listen": {k: self[k] for k in ("ssh", "telnet", "pipe", "desktop") if self[k] is not None} or None,
            **devices,
        }


class Options(Flags):
    """``twistd oneosd``'s options: the flags, then the configuration they override.

    After parsing, :attr:`config` holds the validated configuration (defaults <
    ``config.json`` < flags).  An invalid setting, in the file or a flag, is a
    :class:`usage.UsageError` whose message is the plain line naming the field.
    """

    config: Config | None = None
    #: the home's credentials.json, read here so that makeService reads nothing
    credentials: Credentials | None = None
    #: set when the configuration (not the flags' syntax) was refused: the usage text would bury the one line
    _config_refused = False

    def postOptions(self) -> None:
        super().postOptions()
        try:
            config = load_config(self.home(), self.overrides())
            self.credentials = installed_credentials(config)
            # an id from flags, config.json or the installed identity; else the one generated at the first start
            self.config = remembered_id(with_installed_identity(config, self.credentials))
        except OneOSError as e:
            self._config_refused = True
            raise usage.UsageError(describe(e)) from None

    def getUsage(self, width: int | None = None) -> str:
        # twistd prints the usage before the error line; for a bad setting the whole option list is
        # noise above the one line that names the field
        if self._config_refused:
            return "'twistd oneosd --help' lists the options; 'oneos configure' repairs config.json"
        return super().getUsage(width)


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    """The runtime's service tree (docs/architecture.md draws it) for the configuration *options* loaded.

    Installs the asyncio reactor first (the choice must be made before anything
    imports the reactor) and opens no socket.  *reactor*: for tests; twistd
    passes none, and the global reactor is used.  A OneOS error here (another
    reactor already installed) exits with one plain line.
    """
    assert options.config is not None, "makeService needs parsed Options"
    try:
        install_asyncio_reactor()
        from oneos.runtime.app import build_runtime

        return build_runtime(options.config, reactor, options.credentials)
    except OneOSError as e:
        raise SystemExit(f"oneosd: {describe(e)}") from None
