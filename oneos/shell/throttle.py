"""Slowing password guessing at the front door: per source address and overall.

Like OpenSSH's MaxStartups and PerSourcePenalties.  A delay per user name
alone (:class:`oneos.shell.users.FailureDelay`) let 50 parallel connections
try 5 passwords a second by spreading over names; here:

* at most ``per_source`` unauthenticated connections from one address and
  ``total`` overall; more are closed at once;
* each failed login from an address is answered after a delay doubling from
  ``base`` to ``cap`` with that address's consecutive failures (a success
  resets it; an address quiet for ``forget_after`` is forgotten).

Pure bookkeeping on an injected clock; the SSH server calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Seconds a connection has to log in (SSH: key exchange and authentication; telnet: user and password).
#: Here, not in oneos.shell.frontend, so the shell service reads it without loading the session code.
LOGIN_GRACE = 60.0


@dataclass
class _Source:
    pending: int = 0
    failures: int = 0
    last: float = 0.0


class LoginThrottle:
    def __init__(
        self,
        clock: Any,
        *,
        total: int = 30,
        per_source: int = 4,
        base: float = 0.5,
        cap: float = 8.0,
        forget_after: float = 600.0,
        max_sources: int = 10_000,
    ) -> None:
        self.clock = clock
        self.total = total
        self.per_source = per_source
        self.base = base
        self.cap = cap
        self.forget_after = forget_after
        self.max_sources = max_sources
        self.pending = 0
        self._sources: dict[str, _Source] = {}

    def _get(self, source: str) -> _Source:
        now = self.clock.seconds()
        entry = self._sources.get(source)
        if entry is not None and entry.pending == 0 and now - entry.last > self.forget_after:
            entry = None
        if entry is None:
            if len(self._sources) >= self.max_sources:  # bounded memory under a spray of addresses
                self._sources = {k: v for k, v in self._sources.items() if v.pending}
            entry = self._sources[source] = _Source(last=now)
        return entry

    def opened(self, source: str) -> bool:
        """A connection arrived; False when it must be closed (too many unauthenticated ones)."""
        entry = self._get(source)
        if self.pending >= self.total or entry.pending >= self.per_source:
            return False
        entry.pending += 1
        self.pending += 1
        entry.last = self.clock.seconds()
        return True

    def settled(self, source: str) -> None:
        """The connection logged in or went away: it no longer counts as unauthenticated."""
        entry = self._sources.get(source)
        if entry is not None and entry.pending > 0:
            entry.pending -= 1
            self.pending -= 1

    def failed(self, source: str) -> float:
        """A login from *source* failed: seconds to wait before saying so."""
        entry = self._get(source)
        delay: float = min(self.cap, self.base * 2**entry.failures)  # int ** int is Any to mypy
        entry.failures += 1
        entry.last = self.clock.seconds()
        return delay

    def succeeded(self, source: str) -> None:
        entry = self._sources.get(source)
        if entry is not None:
            entry.failures = 0
