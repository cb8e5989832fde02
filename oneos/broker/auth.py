"""Who may connect to our broker, and what each identity may publish and read.

:class:`IdentityAuthPlugin` (amqtt 0.12's dataclass ``Config`` convention)
accepts an identity whose password is HMAC(network secret, name) (see
oneos/security/credentials.py), compared in constant time; anonymous
clients and wrong passwords get CONNACK "bad user name or password".
:class:`TopicACLPlugin` applies oneos/security/acl.py to every publish,
subscription and delivery.  :func:`plugins_config` builds the broker's
``plugins`` section: both, or amqtt's anonymous plugin alone when
authentication is explicitly off (``--allow-anonymous``).

The password check runs *before* amqtt looks at the client id (see
``_FixedBroker._authenticated_connect``): otherwise an unauthenticated
CONNECT with a runtime's client id would take its session over, publishing
its last will.  The same place refuses a last will on a topic its client
may not publish (a forged "dead" status).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session
from twisted.logger import Logger

from oneos.security import acl
from oneos.security.credentials import Credentials, valid

log = Logger()


def check(session: Any, secret: str) -> bool:
    """Whether *session*'s CONNECT carries a valid identity of the network of *secret*."""
    return valid(secret, getattr(session, "username", None), getattr(session, "password", None))


class IdentityAuthPlugin(BaseAuthPlugin):
    """Accept only identities of this network."""

    @dataclass
    class Config:
        secret: str = field(default="")

    async def authenticate(self, *, session: Session) -> bool:
        secret = getattr(self.context.config, "secret", "")
        return check(session, secret)  # no secret configured: refuse everyone rather than let everyone in


class TopicACLPlugin(BaseTopicPlugin):
    """Allow each identity only the topics oneos/security/acl.py gives it."""

    @dataclass
    class Config:
        enabled: bool = field(default=True)

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        if session is None or topic is None:
            return False
        name = getattr(session, "username", None)
        if action == Action.PUBLISH:
            allowed = acl.may_publish(name, topic)
        elif action == Action.SUBSCRIBE:
            allowed = acl.may_subscribe(name, topic)
        else:
            allowed = acl.may_receive(name, topic)
        if not allowed and action != Action.RECEIVE:
            log.warn(
                "refused {action} on {topic} by {name!r}",
                action=str(getattr(action, "value", action)),
                topic=topic,
                name=name,
            )
        return allowed


def plugins_config(credentials: Credentials | None) -> dict[str, Any]:
    """The amqtt ``plugins`` section: identity check and ACL, or anonymous access when *credentials* is None."""
    if credentials is None:
        return {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
    if not credentials.secret:
        from oneos.security.credentials import CredentialsError

        raise CredentialsError(
            f"the broker needs the network secret, and {credentials.username}'s credentials do "
            "not hold it: run the broker on the machine that created the network"
        )
    return {
        f"{__name__}.IdentityAuthPlugin": {"secret": credentials.secret},
        f"{__name__}.TopicACLPlugin": {"enabled": True},
    }
