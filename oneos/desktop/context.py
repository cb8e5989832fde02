"""What the desktop uses of its runtime, named in one place.

The HTTP side (:mod:`oneos.desktop.web`) and the websocket side
(:mod:`oneos.desktop.ws`) are built from one :class:`DesktopContext`, which
the runtime fills with its own objects and tests with fakes; neither side
reaches into the runtime for anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oneos.config import DEFAULT_MAX_UPLOAD_MB
from oneos.desktop.sessions import SessionStore

#: Largest upload the desktop accepts by default (bytes); larger ones are refused as they arrive
#: (the runtime passes its setting ``desktop.max_upload_mb``).
MAX_UPLOAD = DEFAULT_MAX_UPLOAD_MB * 1024 * 1024


@dataclass
class DesktopContext:
    """The runtime's parts the desktop serves users with."""

    reactor: Any
    #: this runtime's id (shown in the page, and where "run here" runs)
    runtime_id: str
    #: the runtime's home: one-time login tokens from ``oneos desktop`` are left there
    home: Path
    sessions: SessionStore
    #: the shell's ShellService: ``portal`` (the users' passwords, with the shell's delayed refusals),
    #: ``new_interpreter(user, out, err)``, ``prepare(interp)``, ``forget(interp)``, ``throttle``
    shell: Any
    #: the shell's Grid: ``for_user(user)`` gives a user's view (``fs`` acts as that user), ``rpc``, ``client``
    grid: Any
    #: the runtime's Membership: ``statuses()``, ``live()``, ``on_change(listener)``
    membership: Any
    max_upload: int = MAX_UPLOAD
    #: whether the desktop is served over TLS (cookies are then ``Secure``)
    tls: bool = False
