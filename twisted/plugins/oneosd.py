"""twistd plugin ``oneosd``: a OneOS runtime.

Parses options, loads the configuration and builds the service tree; no I/O
happens here (the services do their work when twistd starts them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
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
        ["id", None, None, "runtime id (default from config; random when blank)"],
        ["pubsub", None, None, "broker URL, e.g. mqtt://10.0.0.5:1883"],
        ["broker", None, None, "auto (host one on loopback if none answers), embedded, or external"],
        ["store", None, None, "file store URL: sqlite:///PATH or mongodb://HOST:PORT/DB"],
        ["memory", None, None, "memory limit for agents on this runtime, in MB"],
        ["tags", None, None, "comma-separated tags the scheduler can match"],
        ["address", None, None, "address other runtimes reach this one on (default: detected)"],
        ["keepalive", None, None, "MQTT keepalive in seconds; a silent runtime is dead after 1.5x this"],
        ["stats-interval", None, None, "seconds between status/statistics updates"],
        ["run-as", None, None, "OS account programs run as (default auto: nobody when run as root)"],
        ["disconnect-grace", None, None, "seconds a runtime may be unreachable before its programs restart elsewhere"],
        ["ssh", None, None, "SSH front door endpoint, e.g. tcp:2222:interface=10.0.0.5 ('' = off; default auto)"],
        ["telnet", None, None, "telnet front door endpoint (default off)"],
        ["pipe", None, None, "stream listener endpoint (default auto: loopback on a one-machine network)"],
    ]

    def parseArgs(self, runtime_id: str | None = None) -> None:
        if runtime_id is not None and self["id"] is not None and runtime_id != self["id"]:
            raise usage.UsageError("give the runtime id either as --id or positionally, not both")
        self["id"] = self["id"] or runtime_id

    def postOptions(self) -> None:
        if self["kernel"] and self["no-kernel"]:
            raise usage.UsageError("--kernel and --no-kernel contradict each other")

    def overrides(self) -> dict[str, Any]:
        """The flags given, as config settings (None for 'not given')."""
        kernel = True if self["kernel"] else False if self["no-kernel"] else None
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
            "listen": {k: self[k] for k in ("ssh", "telnet", "pipe") if self[k] is not None} or None,
        }


@implementer(IServiceMaker, IPlugin)
class RuntimeMaker:
    tapname = "oneosd"
    description = "OneOS runtime: joins the pubsub network, takes part in the kernel election, runs agents"
    options = Options

    def makeService(self, options: Options) -> Any:
        # The asyncio reactor must be chosen before anything imports the reactor.
        from oneos.errors import OneOSError, describe
        from oneos.reactor import install_asyncio_reactor

        try:
            install_asyncio_reactor()
            from oneos.config import load_config
            from oneos.runtime.app import build_runtime

            home = Path(options["home"]).expanduser() if options["home"] else None
            return build_runtime(load_config(home, options.overrides()))
        except OneOSError as e:
            raise SystemExit(f"oneosd: {describe(e)}") from None


oneosd = RuntimeMaker()
