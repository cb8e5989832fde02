"""The network's SSH host key: one key, kept in the tree, so every front door shows the same one.

Kept apart from :mod:`oneos.shell.ssh` because a front door reads it at
start (the ``oneos`` command pins the public half written beside the
runtime's home), while the SSH session code is only loaded when a first
connection comes (:mod:`oneos.lazyfactory`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.conch.ssh import keys
from twisted.internet import defer
from twisted.logger import Logger

from oneos.fs.errors import AlreadyExists, NotFound
from oneos.shell.users import HOST_KEY_PATH

log = Logger()

#: the file in ``$ONEOS_HOME`` where an older runtime kept its own key (``.pub``: the network's public half)
HOST_KEY_FILE = "ssh_host_key"


def _new_host_key() -> keys.Key:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return keys.Key(ed25519.Ed25519PrivateKey.generate())


@defer.inlineCallbacks
def network_host_key(fs: Any, home: Path) -> Any:
    """The network's SSH host key, read from the tree (put there by the first front door to start).

    The first front door to start puts one there (the key an older runtime
    kept in ``$ONEOS_HOME/ssh_host_key`` if there is one, else a new ed25519
    key); the write is exclusive, so of two doors starting at once both end
    with the winner's key.  The public half is also written to
    ``$ONEOS_HOME/ssh_host_key.pub``, where ``oneos`` on this machine pins it.
    """
    try:
        data = yield fs.read_small(HOST_KEY_PATH)
    except NotFound:
        local = Path(home) / HOST_KEY_FILE
        migrated = local.exists()
        key = keys.Key.fromFile(str(local)) if migrated else _new_host_key()
        yield fs.mkdir("/etc/oneos", parents=True, exist_ok=True)
        try:
            yield fs.write_small(HOST_KEY_PATH, key.toString("OPENSSH"), exclusive=True)
            log.info(
                "the network's SSH host key is now {fp} ({how})",
                fp=key.fingerprint(),
                how=f"moved from {local}" if migrated else "new",
            )
        except AlreadyExists:
            pass  # another front door was first: use its key
        data = yield fs.read_small(HOST_KEY_PATH)
    key = keys.Key.fromString(data)
    pub = Path(home) / (HOST_KEY_FILE + ".pub")
    text = key.public().toString("OPENSSH") + b"\n"
    if not pub.exists() or pub.read_bytes() != text:
        pub.parent.mkdir(parents=True, exist_ok=True)
        pub.write_bytes(text)
    return key
