"""Users, keys and the host key kept in the tree, and the kernel-only area guarding them.

An in-memory file-system client stands in for the network (these are the
rules, not the transport); the fs service's guard is tested directly.
"""

from __future__ import annotations

import json

import pytest
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.task import Clock

from oneos.fs.errors import AlreadyExists, NotFound, PermissionDenied
from oneos.fs.service import SYSTEM_DIR, guard, visible
from oneos.fs.store import Stat
from oneos.shell.hostkey import network_host_key
from oneos.shell.users import (
    HOST_KEY_PATH,
    KEYS_PATH,
    USERS_PATH,
    FailureDelay,
    PasswordChecker,
    TreeUsers,
    hash_password,
    migrate_home,
)


class TreeFS:
    """Just what the kernel-state code asks of an FSClient, in memory."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def read_small(self, path: str) -> defer.Deferred:
        if path not in self.files:
            return defer.fail(NotFound(path))
        return defer.succeed(self.files[path])

    def write_small(self, path: str, data: bytes, exclusive: bool = False) -> defer.Deferred:
        if exclusive and path in self.files:
            return defer.fail(AlreadyExists(path))
        self.files[path] = bytes(data)
        return defer.succeed(
            Stat(path=path, kind="file", size=len(data), mode=0o600, owner="root", mtime=0.0, ctime=0.0)
        )

    def mkdir(self, path: str, parents: bool = False, exist_ok: bool = False) -> defer.Deferred:
        return defer.succeed(None)


def now(d: defer.Deferred):
    out: list = []
    d.addBoth(out.append)
    assert out, "expected the Deferred to have fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def sync(fn, *args):
    return defer.maybeDeferred(fn, *args)


def test_users_live_in_the_tree_and_passwords_are_checked_there():
    fs = TreeFS()
    users = TreeUsers(fs, blocking=sync)
    now(users.add("bob", "right-pw"))
    assert "right-pw" not in fs.files[USERS_PATH].decode()
    assert now(users.names()) == ["bob"]
    assert now(users.check("bob", "right-pw")) and not now(users.check("bob", "wrong"))
    assert not now(users.check("nobody", "right-pw"))
    now(users.set_password("bob", "new-pw"))
    assert now(users.check("bob", "new-pw"))
    now(users.remove("bob"))
    assert now(users.names()) == []


def test_password_checker_refuses_slowly_and_the_same_way():
    fs = TreeFS()
    users = TreeUsers(fs, blocking=sync)
    now(users.add("bob", "right"))
    clock = Clock()
    checker = PasswordChecker(users, FailureDelay(clock, base=1.0))
    assert now(checker.requestAvatarId(UsernamePassword(b"bob", b"right"))) == b"bob"
    for name in (b"bob", b"nobody"):
        bad: list = []
        checker.requestAvatarId(UsernamePassword(name, b"wrong")).addBoth(bad.append)
        assert bad == []  # not yet: refusals wait
        clock.advance(1.0)
        assert bad[0].check(UnauthorizedLogin) and str(bad[0].value) == "login refused"


def test_old_home_files_move_into_the_tree_once(tmp_path):
    fs = TreeFS()
    now(TreeUsers(fs, blocking=sync).add("kept", "pw-tree"))
    (tmp_path / "users.json").write_text(
        json.dumps(
            {
                "v": 1,
                "users": {
                    "kept": {"password": hash_password("pw-home", n=2**10)},
                    "carol": {"password": hash_password("pw-carol", n=2**10)},
                },
            }
        )
    )
    (tmp_path / "authorized_keys").write_text("carol ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDummy carol@x\n")
    done = now(migrate_home(fs, tmp_path))
    assert len(done) == 2
    users = TreeUsers(fs, blocking=sync)
    assert now(users.names()) == ["carol", "kept"]
    assert now(users.check("kept", "pw-tree")), "the tree wins on a clash"
    assert now(users.check("carol", "pw-carol"))
    assert b"carol ssh-ed25519" in fs.files[KEYS_PATH]
    assert not (tmp_path / "users.json").exists() and (tmp_path / "users.json.migrated").exists()
    assert now(migrate_home(fs, tmp_path)) == []  # nothing left to move


def test_one_host_key_for_every_front_door(tmp_path):
    fs = TreeFS()
    first = now(network_host_key(fs, tmp_path / "a"))
    second = now(network_host_key(fs, tmp_path / "b"))
    assert first.fingerprint() == second.fingerprint()
    assert (tmp_path / "b" / "ssh_host_key.pub").read_bytes().startswith(b"ssh-ed25519 ")
    assert HOST_KEY_PATH in fs.files


def test_an_old_runtimes_host_key_becomes_the_networks(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from twisted.conch.ssh import keys

    old = keys.Key(ed25519.Ed25519PrivateKey.generate())
    (tmp_path / "ssh_host_key").write_bytes(old.toString("OPENSSH"))
    assert now(network_host_key(TreeFS(), tmp_path)).fingerprint() == old.fingerprint()


@pytest.mark.parametrize("path", [f"{SYSTEM_DIR}/users.json", f"{SYSTEM_DIR}/x/../users.json", SYSTEM_DIR + "/"])
def test_users_cannot_reach_into_the_kernels_area(path):
    with pytest.raises(PermissionDenied):
        guard(False, path)
    guard(True, path)  # the kernel's own client may


def test_the_kernels_area_cannot_be_removed_through_its_parents():
    for parent in ("/etc", "/"):
        with pytest.raises(PermissionDenied):
            guard(False, parent, holding=True)
        guard(False, parent)  # listing /etc is fine
    guard(False, SYSTEM_DIR, itself=True)  # stat of the directory itself is fine
    assert visible(False, ["/etc/hosts", f"{SYSTEM_DIR}/users.json", SYSTEM_DIR]) == ["/etc/hosts"]


def test_logins_use_the_last_copy_while_the_tree_is_unreachable():
    from oneos.fs.errors import FileSystemUnavailable

    fs = TreeFS()
    users = TreeUsers(fs, blocking=sync)
    now(users.add("bob", "right"))
    assert now(users.check("bob", "right"))
    fs.read_small = lambda path: defer.fail(FileSystemUnavailable("file system unavailable: failover"))
    assert now(users.check("bob", "right")), "a failover must not lock everybody out"
    fresh = TreeUsers(fs, blocking=sync)
    with pytest.raises(FileSystemUnavailable):
        now(fresh.check("bob", "right"))  # nothing read before: no copy to fall back on


def test_a_stopped_rpc_server_never_answers_even_before_its_subscription_was_granted():
    from oneos.pubsub.rpc import RPCServer

    class Client:
        def __init__(self):
            self.pending = defer.Deferred()
            self.callback = None
            self.published = []

        def subscribe(self, topic, callback):
            self.callback = callback
            return self.pending

        def publish(self, *a, **kw):
            self.published.append(a)
            return defer.succeed(None)

    client = Client()
    server = RPCServer(client, "fs", {"stat": lambda path: {}})
    server.start()
    server.stop()  # role dropped within milliseconds of being taken

    class Sub:
        cancelled = False

        def cancel(self):
            Sub.cancelled = True
            return defer.succeed(None)

    client.pending.callback(Sub())
    from oneos.pubsub import messages
    from oneos.pubsub.client import Message

    client.callback(
        Message(
            "oneos/v1/rpc/fs/x",
            messages.encode("rpc.request", id="1", method="stat", args={"path": "/"}, reply_to="oneos/v1/reply/x/c"),
            False,
            1,
        )
    )
    assert client.published == [] and Sub.cancelled
