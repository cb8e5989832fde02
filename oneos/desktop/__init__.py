"""The web desktop: every runtime serves it (twisted.web + Autobahn), behind the shell's users.

docs/desktop.md describes what a user sees, the HTTP routes and the
websocket protocol; the modules are:

* :mod:`~oneos.desktop.sessions` -- login sessions and one-time tokens (pure);
* :mod:`~oneos.desktop.context` -- what the desktop uses of its runtime;
* :mod:`~oneos.desktop.web` -- the HTTP side: static files, login, logout,
  upload, download, the security headers;
* :mod:`~oneos.desktop.protocol` -- the websocket messages (pure parsing);
* :mod:`~oneos.desktop.ws` -- the websocket: channels and operations onto RPC;
* :mod:`~oneos.desktop.terminal` -- the shell in the browser's terminal;
* :mod:`~oneos.desktop.service` -- the front door that listens.
"""
