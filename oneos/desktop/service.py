"""The desktop's front door: the ``desktop`` service of every runtime, one twisted.web site on ``listen.desktop``.

:class:`DesktopService` is built with the runtime's tree (its constructor
opens nothing, reads nothing) and, when started, listens on its endpoint
string; the site (:func:`oneos.desktop.web.build_site`: the page from the
repository's ``web/``, the API, ``/ws``) is built when the first browser
connects, so a runtime nobody opens the desktop of never loads twisted.web
and Autobahn (:mod:`oneos.lazyfactory`).  It starts
after the shell, whose users and password checker it shares.  A port that
cannot be had is one error line in the log and the runtime goes on without
its desktop, as it does without a shell door; an ``ssl:`` endpoint serves
HTTPS and the session cookie is then ``Secure``.  On stop it ends every
session (their websockets close), stops listening and closes what is
still connected.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from oneos.config import is_loopback
from oneos.desktop.context import DesktopContext
from oneos.errors import describe
from oneos.lazyfactory import LazyFactory

if TYPE_CHECKING:
    from oneos.desktop.web import DesktopSite

log = Logger()


def desktop_url(host: str, port: int, tls: bool, advertise: str = "") -> str:
    """The URL a browser opens for a desktop listening on *host*:*port* (a wildcard: the *advertise* address)."""
    if host in ("0.0.0.0", "::", ""):
        host = advertise or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}/"


class DesktopService(service.Service):
    """The web desktop of this runtime (docs/desktop.md)."""

    name = "desktop"  # type: ignore[assignment]  # Twisted: Service.name = None, so mypy infers type None

    def __init__(self, ctx: DesktopContext, endpoint: str, *, web_dir: Path | None = None, advertise: str = "") -> None:
        self.ctx = ctx
        #: a Twisted server endpoint string ('' = off); the runtime sets it at start, once ``auto`` is resolved
        self.endpoint = endpoint
        #: where the page's files are (default: the repository's web/)
        self.web_dir = web_dir
        #: the runtime's address, shown in the URL when the desktop listens on every interface
        self.advertise = advertise
        #: the site, once a first browser connected (twisted.web and Autobahn are loaded then: oneos.lazyfactory)
        self.site: DesktopSite | None = None
        #: the port listens on loopback: the site answers loopback Host names only
        self.loopback_only = False
        self.port: Any = None
        #: the URL a browser opens ('' while off, or when the port could not be had)
        self.url = ""
        #: fires once the desktop listens (or failed to, or is off)
        self.opened: defer.Deferred = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        if not self.endpoint:
            self.opened.callback(None)
            return
        d = defer.ensureDeferred(self._listen())
        d.addErrback(lambda f: log.failure("desktop cannot start", f))
        d.addBoth(lambda _: None if self.opened.called else self.opened.callback(None))

    async def _listen(self) -> None:
        self.ctx.tls = self.endpoint.split(":", 1)[0] == "ssl"
        try:
            port = await serverFromString(self.ctx.reactor, self.endpoint).listen(
                LazyFactory(self._site, "the desktop")
            )
        except Exception as e:
            # Another program holds the port (or the endpoint is wrong): say so plainly; the runtime goes on.
            log.error("desktop cannot listen on {ep}: {e}", ep=self.endpoint, e=describe(e))
            return
        if not self.running:
            await defer.maybeDeferred(port.stopListening)
            return
        self.port = port
        host = port.getHost()
        address, number = getattr(host, "host", None), getattr(host, "port", None)
        if isinstance(address, str) and isinstance(number, int):
            self.loopback_only = is_loopback(address)
            self.url = desktop_url(address, number, self.ctx.tls, self.advertise)
            log.info("desktop at {url}", url=self.url)
        else:  # a unix socket: no URL a browser could open
            log.info("desktop serving on {ep}", ep=self.endpoint)

    def _site(self) -> DesktopSite:
        """Build the site (the page, the API, ``/ws``): on the first connection, not at start."""
        from oneos.desktop.web import build_site

        site = build_site(self.ctx, self.web_dir)
        site.loopback_only = self.loopback_only
        self.site = site
        return site

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        self.ctx.sessions.revoke_all()
        port, self.port = self.port, None
        self.url = ""
        if port is not None:
            yield defer.maybeDeferred(port.stopListening)
        if self.site is not None:
            self.site.close_connections()
