"""Where the broker is: broker URLs (``mqtt://`` and ``mqtts://``) taken apart.

Pure, no I/O.  The configuration, the CLI, the credentials and the client
all parse the ``pubsub`` setting here, without loading the MQTT client.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from oneos.errors import ConfigError

#: MQTT's ports: plain TCP, and TLS (``mqtts://``)
MQTT_PORT, MQTTS_PORT = 1883, 8883


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is, parsed from a ``mqtt[s]://[user[:pass]@]host[:port]`` URL."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    #: connect with TLS, checking the broker's certificate (an ``mqtts://`` URL)
    tls: bool = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def parse_broker_url(url: str, field: str = "pubsub") -> BrokerAddress:
    """Parse a broker URL; raise :class:`ConfigError` naming *field* when bad."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp", "mqtts"):
        raise ConfigError(field, f"{url!r} is not an mqtt:// or mqtts:// URL (like mqtt://127.0.0.1:1883)")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (MQTTS_PORT if tls else MQTT_PORT)
    except ValueError:
        raise ConfigError(field, f"{url!r} has an invalid port") from None
    if not parts.hostname:
        raise ConfigError(field, f"{url!r} has no host")
    # userinfo is percent-encoded in a URL (RFC 3986): a client identity such as alice@laptop is alice%40laptop
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return BrokerAddress(parts.hostname, port, user, password, tls)


__all__ = ["MQTTS_PORT", "MQTT_PORT", "BrokerAddress", "parse_broker_url"]
