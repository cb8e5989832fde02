"""A real browser for tests of the web desktop: Debian's Chromium driven by Playwright, and a proxy that cuts.

:class:`Browser` starts Playwright's sync API and one headless Chromium
(the system's ``/usr/bin/chromium``: Playwright's own browser download is
not used) for many tests; each test takes a fresh context from it (its own
cookies and storage, like a private window).  :func:`unavailable` says why
no browser can run here (no Chromium, no Playwright), so a test can skip
with the reason.

:class:`CuttingProxy` is a TCP proxy in front of a desktop: the page is
loaded through it, and :meth:`CuttingProxy.cut` closes every connection
(the page's websocket included) and refuses new ones until
:meth:`CuttingProxy.restore`.  That is a network drop as the browser sees
it, which Chromium's offline emulation is not: it leaves open websockets
alone.

No pytest here (docs/development.md); nothing waits by sleeping.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import threading
from typing import Any

#: Debian's Chromium (package ``chromium``)
CHROMIUM = "/usr/bin/chromium"

#: how Chromium is started: headless, no sandbox (tests may run as root), nothing fetched from the internet
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def unavailable(executable: str = CHROMIUM) -> str | None:
    """Why a browser cannot be started here, or None when it can."""
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install playwright; its browser download is not needed)"
    if not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
        return f"{executable} is missing (apt-get install chromium)"
    return None


class Browser:
    """Playwright (sync API) and one Chromium; :meth:`context` gives a fresh context per test.

    The sync API refuses to start inside a running asyncio loop.  The test
    process installs Twisted's asyncio reactor but does not run its loop, so
    this starts in the calling thread; every call must come from that thread.
    """

    def __init__(self, executable: str = CHROMIUM, args: list[str] | None = None) -> None:
        from playwright.sync_api import sync_playwright

        self.playwright = sync_playwright().start()
        try:
            self.browser = self.playwright.chromium.launch(
                executable_path=executable, args=list(CHROMIUM_ARGS if args is None else args)
            )
        except BaseException:
            self.playwright.stop()
            raise

    def context(self, width: int = 1280, height: int = 800, **options: Any) -> Any:
        """A new, empty browser context (no cookies, no storage) with a *width* x *height* viewport."""
        return self.browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1, **options)

    def close(self) -> None:
        try:
            self.browser.close()
        finally:
            self.playwright.stop()


class CuttingProxy:
    """Forwards TCP connections from ``127.0.0.1:port`` to *upstream*; can cut them all and refuse new ones."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._refusing = False
        self._closed = False
        #: connections accepted so far (forwarded or refused)
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept, name=f"proxy:{self.port}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # the listener was closed
            with self._lock:
                self.accepted += 1
                refuse = self._refusing or self._closed
            if refuse:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            pair = (client, upstream)
            with self._lock:
                if self._refusing or self._closed:
                    _close(client)
                    _close(upstream)
                    continue
                self._pairs.add(pair)
            for src, dst in (pair, pair[::-1]):
                threading.Thread(target=self._pump, args=(src, dst, pair), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, pair: tuple[socket.socket, socket.socket]) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(pair)

    def _drop(self, pair: tuple[socket.socket, socket.socket]) -> None:
        with self._lock:
            self._pairs.discard(pair)
        for s in pair:
            _close(s)

    @property
    def connections(self) -> int:
        """Connections being forwarded now."""
        with self._lock:
            return len(self._pairs)

    def cut(self) -> None:
        """Close every forwarded connection and refuse new ones until :meth:`restore`."""
        with self._lock:
            self._refusing = True
            pairs = list(self._pairs)
        for pair in pairs:
            self._drop(pair)

    def restore(self) -> None:
        """Forward new connections again."""
        with self._lock:
            self._refusing = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        except OSError:
            pass
        self.listener.close()
        self.cut()
        self._thread.join(timeout=10)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
