"""Who may connect to our broker: the network's username and secret, nobody else.

:class:`SecretAuthPlugin` is an amqtt authentication plugin (amqtt 0.12's
dataclass ``Config`` convention) that accepts exactly one username/password
pair, compared in constant time; anonymous clients and wrong credentials get
CONNACK "bad user name or password".  :func:`plugins_config` builds the
broker's ``plugins`` section: this plugin, or amqtt's anonymous one when
authentication is explicitly off (``--allow-anonymous``).

The check runs *before* amqtt looks at the client id (see
``_FixedBroker._initialize_client_session``): otherwise an unauthenticated
CONNECT with a runtime's client id would take its session over, publishing
its last will.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any

from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

from oneos.security.credentials import Credentials


def _same(given: str | bytes | None, expected: str) -> bool:
    if given is None:
        return False
    if isinstance(given, str):
        given = given.encode("utf-8")
    return hmac.compare_digest(given, expected.encode("utf-8"))


def check(session: Any, username: str, password: str) -> bool:
    """Whether *session*'s CONNECT carries exactly *username* and *password*."""
    # evaluate both comparisons: no early exit telling which part was wrong
    user_ok = _same(getattr(session, "username", None), username)
    password_ok = _same(getattr(session, "password", None), password)
    return user_ok and password_ok


class SecretAuthPlugin(BaseAuthPlugin):
    """Accept only clients presenting the configured username and password."""

    @dataclass
    class Config:
        username: str = field(default="")
        password: str = field(default="")

    async def authenticate(self, *, session: Session) -> bool:
        config = self.context.config
        username, password = getattr(config, "username", ""), getattr(config, "password", "")
        if not username or not password:
            return False  # misconfigured: refuse everyone rather than let everyone in
        return check(session, username, password)


def plugins_config(credentials: Credentials | None) -> dict[str, Any]:
    """The amqtt ``plugins`` section: our secret check, or anonymous access when *credentials* is None."""
    if credentials is None:
        return {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
    return {f"{__name__}.SecretAuthPlugin": {"username": credentials.username, "password": credentials.password}}
