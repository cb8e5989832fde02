"""Owners and modes: the pure rules (oneos.fs.permissions), the file-system service enforcing them,
and the shell's chmod, chown and ls -l over that service.

The service tests call FileSystemService's RPC handlers directly on a SQLite
store in a temporary directory (with a real transfer server for streamed
reads and writes), as the RPC layer would with the caller's verified user.
"""

from __future__ import annotations

import os

import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from oneos.fs import errors as E
from oneos.fs import paths
from oneos.fs.client import BytesSink, BytesSource
from oneos.fs.permissions import (
    ADMIN,
    EXECUTE,
    READ,
    SEARCH,
    WRITE,
    may_chmod,
    may_chown,
    mode_string,
    parse_mode,
    permitted,
    privileged,
)
from oneos.fs.service import FileSystemService
from oneos.fs.store import Stat
from oneos.shell.interpreter import Interpreter
from oneos.shell.session import Grid, Session
from oneos.testing.shell import Out
from oneos.transfer import TransferServer, receive, send

# -- the rules ------------------------------------------------------------------------------


def test_kernel_and_admin_bypass_every_check():
    assert privileged(None) and privileged(ADMIN) and privileged("root")
    assert not privileged("alice") and not privileged("")
    for user in (None, "root"):
        assert permitted(user, "bob", 0o000, READ | WRITE | EXECUTE)
        assert may_chmod(user, "bob") and may_chown(user)


@pytest.mark.parametrize(
    "mode, owner_may, other_may",
    [
        (0o700, READ | WRITE | EXECUTE, 0),
        (0o644, READ | WRITE, READ),
        (0o755, READ | WRITE | EXECUTE, READ | EXECUTE),
        (0o711, READ | WRITE | EXECUTE, EXECUTE),
        (0o1777, READ | WRITE | EXECUTE, READ | WRITE | EXECUTE),
        (0o007, 0, READ | WRITE | EXECUTE),  # the owner gets the owner bits only, even when others get more
        (0o070, 0, 0),  # no groups: the group bits grant nobody anything
        (0o000, 0, 0),
    ],
)
def test_owner_and_other_bits(mode, owner_may, other_may):
    for want in (READ, WRITE, EXECUTE):
        assert permitted("bob", "bob", mode, want) == bool(owner_may & want), (oct(mode), want)
        assert permitted("alice", "bob", mode, want) == bool(other_may & want), (oct(mode), want)


def test_several_rights_at_once_need_all_of_them():
    assert permitted("alice", "bob", 0o757, WRITE | SEARCH)
    assert not permitted("alice", "bob", 0o755, WRITE | SEARCH)
    assert not permitted("alice", "bob", 0o753, READ | WRITE)


def test_only_the_owner_may_chmod_and_only_the_admin_chown():
    assert may_chmod("bob", "bob")
    assert not may_chmod("alice", "bob")
    assert not may_chown("bob") and not may_chown("alice")


@pytest.mark.parametrize(
    "kind, mode, text",
    [
        ("dir", 0o755, "drwxr-xr-x"),
        ("dir", 0o700, "drwx------"),
        ("file", 0o644, "-rw-r--r--"),
        ("file", 0o000, "----------"),
        ("dir", 0o1777, "drwxrwxrwt"),
        ("dir", 0o1770, "drwxrwx--T"),
        ("file", 0o4755, "-rwsr-xr-x"),
        ("file", 0o2644, "-rw-r-Sr--"),
    ],
)
def test_mode_strings(kind, mode, text):
    assert mode_string(kind, mode) == text


@pytest.mark.parametrize(
    "spec, current, is_dir, want",
    [
        ("600", 0o777, False, 0o600),
        ("0755", 0, True, 0o755),
        ("1777", 0, True, 0o1777),
        ("0", 0o644, False, 0),
        ("u+x", 0o644, False, 0o744),
        ("go-r", 0o644, False, 0o600),
        ("u+x,go-r", 0o644, False, 0o700),
        ("a=r", 0o755, False, 0o444),
        ("=rw", 0o000, False, 0o666),  # no letter before the operator: everyone (there is no umask)
        ("+x", 0o644, False, 0o755),
        ("o=", 0o757, False, 0o750),
        ("u=rwx,g=rx,o=", 0o000, True, 0o750),
        ("ug+w", 0o444, False, 0o664),
        ("a-w", 0o666, False, 0o444),
        ("u-w+x", 0o644, False, 0o544),  # several operations in one clause
        ("a+X", 0o644, False, 0o644),  # X: no x anywhere on a file, nothing to add
        ("a+X", 0o744, False, 0o755),
        ("a+X", 0o600, True, 0o711),  # always for a directory
        ("+t", 0o777, True, 0o1777),
        ("u+s", 0o755, False, 0o4755),
        ("o+s", 0o755, False, 0o755),  # s means nothing for o
        ("u+t", 0o755, False, 0o755),  # t is for o/a only
    ],
)
def test_parse_mode(spec, current, is_dir, want):
    assert parse_mode(spec, current, is_dir=is_dir) == want, oct(parse_mode(spec, current, is_dir=is_dir))


@pytest.mark.parametrize("spec", ["", "8", "77777", "u", "u+q", "z+x", "u+x,", ",u+x", "rw", "u*x", "+x y"])
def test_bad_modes_are_refused(spec):
    with pytest.raises(ValueError):
        parse_mode(spec, 0o644)


# -- the service ----------------------------------------------------------------------------


class ServiceFixture:
    """A FileSystemService on a fresh SQLite store: bob's private home, alice's next door, root the admin."""

    timeout = 60

    async def setUp(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.transfer = TransferServer(reactor)
        await self.transfer.listen()
        self.addCleanup(self.transfer.stopService)
        self.svc = FileSystemService(
            f"sqlite:///{directory}/fs.db",
            client=None,
            transfer=self.transfer,
            reactor=reactor,
            open_options={"chunk_size": 4096},
        )
        self.svc.running = True
        self.svc.server.start = lambda: defer.succeed(None)
        self.svc.server.stop = lambda: defer.succeed(None)
        self.svc._open()
        for _ in range(200):
            if self.svc.store is not None:
                break
            await task.deferLater(reactor, 0.02)
        self.addCleanup(self.svc.stopService)
        for user in ("alice", "bob"):  # as the shell makes homes: the kernel's call, the user's, 0700
            await self.svc.mkdir(f"/home/{user}", owner=user, perm=0o700)
        await self.write("/home/bob/secret", b"bob's secret\n", user="bob")

    # -- helpers: content through the real streams, as FSClient does
    async def write(self, path, data, user=None, owner=None, mode="truncate"):
        where = await self.svc.write_open(path, mode=mode, owner=owner, user=user)
        return Stat.from_dict(await send(reactor, where["host"], where["port"], where["token"], BytesSource(data)))

    async def read(self, path, user=None):
        where = await self.svc.read_open(path, user=user)
        sink = BytesSink()
        await receive(reactor, where["host"], where["port"], where["token"], sink)
        return bytes(sink.data)

    async def stat(self, path, user=None):
        return Stat.from_dict(await self.svc.stat(path, user=user))

    async def refused(self, error, d):
        try:
            await d
        except error as e:
            return e
        self.fail(f"expected {error.__name__}")


class PermissionService(ServiceFixture, unittest.TestCase):
    """The handlers called as users."""

    async def test_homes_are_private_and_the_tree_is_roots(self):
        for path, owner, mode in (
            ("/", "root", 0o755),
            ("/home", "root", 0o755),
            ("/tmp", "root", 0o1777),
            ("/home/bob", "bob", 0o700),
            ("/home/bob/secret", "bob", 0o644),
        ):
            st = await self.stat(path)
            self.assertEqual((st.owner, st.mode), (owner, mode), path)

    async def test_alice_cannot_read_or_delete_bobs_file_in_his_private_home(self):
        e = await self.refused(E.PermissionDenied, self.read("/home/bob/secret", user="alice"))
        self.assertEqual(str(e), "/home/bob/secret: permission denied")
        self.assertEqual(e.code, "EACCES")
        await self.refused(E.PermissionDenied, self.svc.read_small("/home/bob/secret", user="alice"))
        await self.refused(E.PermissionDenied, self.svc.stat("/home/bob/secret", user="alice"))
        await self.refused(E.PermissionDenied, self.svc.listdir("/home/bob", user="alice"))
        await self.refused(E.PermissionDenied, self.svc.remove("/home/bob/secret", user="alice"))
        await self.refused(E.PermissionDenied, self.svc.remove("/home/bob", recursive=True, user="alice"))
        await self.refused(E.PermissionDenied, self.svc.rename("/home/bob/secret", "/tmp/mine", user="alice"))
        await self.refused(E.PermissionDenied, self.svc.copy("/home/bob/secret", "/tmp/mine", user="alice"))
        await self.refused(E.PermissionDenied, self.write("/home/bob/secret", b"overwritten", user="alice"))
        await self.refused(E.PermissionDenied, self.svc.mkdir("/home/bob/d", user="alice"))
        # a missing file behind a closed door is a refusal too, not a "no such file" that would tell
        await self.refused(E.PermissionDenied, self.svc.stat("/home/bob/nothing", user="alice"))
        self.assertFalse(await self.svc.exists("/home/bob/secret", user="alice"))
        self.assertEqual(await self.svc.glob("/home/*/*", user="alice"), [])
        # what bob, root and the kernel still see
        self.assertEqual(await self.read("/home/bob/secret", user="bob"), b"bob's secret\n")
        self.assertEqual(await self.read("/home/bob/secret", user="root"), b"bob's secret\n")
        self.assertEqual(await self.read("/home/bob/secret"), b"bob's secret\n")
        self.assertEqual(await self.svc.glob("/home/*/*", user="bob"), ["/home/bob/secret"])
        self.assertTrue(await self.svc.exists("/home/bob/secret"))

    async def test_once_bob_opens_his_home_and_file_alice_reads_but_still_cannot_delete(self):
        await self.refused(E.PermissionDenied, self.read("/home/bob/secret", user="alice"))
        self.assertEqual((await self.svc.chmod("/home/bob", 0o755, user="bob"))["mode"], 0o755)
        self.assertEqual(
            [paths.basename(s["path"]) for s in await self.svc.listdir("/home/bob", user="alice")], ["secret"]
        )
        await self.svc.chmod("/home/bob/secret", 0o600, user="bob")
        await self.refused(E.PermissionDenied, self.read("/home/bob/secret", user="alice"))
        await self.svc.chmod("/home/bob/secret", 0o644, user="bob")
        self.assertEqual(await self.read("/home/bob/secret", user="alice"), b"bob's secret\n")
        self.assertTrue(await self.svc.exists("/home/bob/secret", user="alice"))
        # reading is not writing: the file (0644) and the directory (0755) stay closed to her
        await self.refused(E.PermissionDenied, self.svc.write_small("/home/bob/secret", "eA==", user="alice"))
        await self.refused(E.PermissionDenied, self.svc.remove("/home/bob/secret", user="alice"))
        # a directory everyone may write: anyone may remove its entries (no sticky-bit rule)
        await self.svc.chmod("/home/bob", 0o777, user="bob")
        await self.svc.remove("/home/bob/secret", user="alice")
        self.assertFalse(await self.svc.exists("/home/bob/secret"))

    async def test_search_without_read_reaches_a_known_name_but_cannot_list(self):
        await self.svc.chmod("/home/bob", 0o711, user="bob")
        await self.refused(E.PermissionDenied, self.svc.listdir("/home/bob", user="alice"))
        self.assertEqual(await self.read("/home/bob/secret", user="alice"), b"bob's secret\n")
        self.assertEqual(await self.svc.glob("/home/bob/*", user="alice"), [])

    async def test_alice_cannot_chmod_bobs_file_and_only_root_can_chown(self):
        await self.svc.chmod("/home/bob", 0o755, user="bob")
        e = await self.refused(E.OperationNotPermitted, self.svc.chmod("/home/bob/secret", 0o666, user="alice"))
        self.assertEqual(e.code, "EPERM")
        self.assertIn("/home/bob/secret: operation not permitted", str(e))
        self.assertEqual((await self.stat("/home/bob/secret")).mode, 0o644)
        for user in ("alice", "bob"):  # not even bob may give his own file away
            await self.refused(E.OperationNotPermitted, self.svc.chown("/home/bob/secret", "alice", user=user))
        self.assertEqual((await self.stat("/home/bob/secret")).owner, "bob")
        st = await self.svc.chown("/home/bob/secret", "alice", user="root")
        self.assertEqual((st["owner"], st["mode"]), ("alice", 0o644))
        # now alice owns it, so she may chmod it (and bob no longer may)
        self.assertEqual((await self.svc.chmod("/home/bob/secret", 0o600, user="alice"))["mode"], 0o600)
        await self.refused(E.OperationNotPermitted, self.svc.chmod("/home/bob/secret", 0o644, user="bob"))
        self.assertEqual((await self.svc.chmod("/home/bob/secret", 0o640, user="root"))["mode"], 0o640)
        self.assertEqual((await self.svc.chown("/home/bob/secret", "bob"))["owner"], "bob")  # the kernel too
        await self.refused(E.InvalidArgument, self.svc.chmod("/home/bob/secret", 0o10000, user="root"))
        await self.refused(E.InvalidArgument, self.svc.chown("/home/bob/secret", "", user="root"))
        await self.refused(E.NotFound, self.svc.chmod("/home/bob/nothing", 0o600, user="bob"))

    async def test_what_a_user_creates_is_the_users_whatever_owner_is_asked(self):
        st = await self.write("/tmp/a", b"x", user="alice", owner="bob")
        self.assertEqual(st.owner, "alice")
        self.assertEqual((await self.svc.mkdir("/tmp/d", owner="bob", user="alice"))["owner"], "alice")
        self.assertEqual((await self.svc.write_small("/tmp/s", "eA==", user="alice"))["owner"], "alice")
        self.assertEqual((await self.svc.copy("/tmp/a", "/tmp/c", user="bob"))["owner"], "bob")
        self.assertEqual((await self.svc.copy("/tmp/d", "/tmp/e", recursive=True, user="bob"))["owner"], "bob")
        # the admin and the kernel may create in someone's name
        self.assertEqual((await self.write("/tmp/r", b"x", user="root", owner="bob")).owner, "bob")
        self.assertEqual((await self.svc.mkdir("/tmp/k", owner="bob"))["owner"], "bob")
        self.assertEqual((await self.svc.mkdir("/tmp/k2", user="root"))["owner"], "root")
        self.assertEqual((await self.write("/tmp/k3", b"x")).owner, "root")
        # writing someone's existing file (when allowed) keeps its owner
        await self.svc.chmod("/tmp/a", 0o666, user="alice")
        self.assertEqual((await self.write("/tmp/a", b"bob was here", user="bob")).owner, "alice")

    async def test_creating_needs_write_and_search_on_the_directory(self):
        for path in ("/data/f", "/home/f", "/f"):  # root's directories (0755)
            await self.refused(E.PermissionDenied, self.write(path, b"x", user="alice"))
            await self.refused(E.PermissionDenied, self.svc.mkdir(path, user="alice"))
        await self.refused(E.PermissionDenied, self.svc.mkdir("/home/bob/x/y", parents=True, user="alice"))
        st = await self.svc.mkdir("/home/alice/x/y", parents=True, user="alice")
        self.assertEqual((st["owner"], st["mode"]), ("alice", 0o755))
        await self.svc.mkdir("/home/alice/x/y", parents=True, exist_ok=True, user="alice")
        await self.refused(E.AlreadyExists, self.svc.mkdir("/home/alice/x", user="alice"))
        await self.refused(E.AlreadyExists, self.svc.mkdir("/home", user="alice"))  # it exists: no refusal needed
        await self.refused(E.NotFound, self.svc.mkdir("/home/alice/no/such", user="alice"))
        self.assertEqual((await self.svc.mkdir("/home/alice/p", perm=0o700, user="alice"))["mode"], 0o700)
        # her own directory without w: not even she may add to it
        await self.svc.chmod("/home/alice/x", 0o555, user="alice")
        await self.refused(E.PermissionDenied, self.write("/home/alice/x/f", b"x", user="alice"))
        await self.refused(E.PermissionDenied, self.svc.rename("/home/alice/x/y", "/home/alice/y", user="alice"))
        await self.refused(E.PermissionDenied, self.svc.rename("/home/alice/p", "/home/alice/x/p", user="alice"))
        await self.svc.chmod("/home/alice/x", 0o755, user="alice")
        self.assertEqual(
            (await self.svc.rename("/home/alice/x/y", "/home/alice/y", user="alice"))["path"], "/home/alice/y"
        )
        # a file she owns without w: she may not change it, but may chmod it back
        await self.write("/home/alice/f", b"one", user="alice")
        await self.svc.chmod("/home/alice/f", 0o444, user="alice")
        await self.refused(E.PermissionDenied, self.write("/home/alice/f", b"two", user="alice", mode="append"))
        await self.svc.chmod("/home/alice/f", 0o644, user="alice")
        await self.write("/home/alice/f", b"two", user="alice", mode="append")
        self.assertEqual(await self.read("/home/alice/f", user="alice"), b"onetwo")

    async def test_a_recursive_remove_needs_the_rights_all_the_way_down(self):
        await self.svc.mkdir("/tmp/t/locked", parents=True, user="alice")
        await self.write("/tmp/t/locked/f", b"x", user="alice")
        await self.svc.mkdir("/tmp/t/empty", user="alice")
        await self.svc.chmod("/tmp/t/locked", 0o500, user="alice")
        await self.svc.chmod("/tmp/t/empty", 0o000, user="alice")  # empty: nothing to remove inside it
        e = await self.refused(E.PermissionDenied, self.svc.remove("/tmp/t", recursive=True, user="alice"))
        self.assertEqual(e.path, "/tmp/t/locked")
        self.assertTrue(await self.svc.exists("/tmp/t/locked/f"), "nothing was removed")
        await self.svc.chmod("/tmp/t/locked", 0o700, user="alice")
        await self.svc.remove("/tmp/t", recursive=True, user="alice")
        self.assertFalse(await self.svc.exists("/tmp/t"))
        # bob's tree in /tmp: the directory /tmp lets alice remove it only if she may empty it
        await self.svc.mkdir("/tmp/b", user="bob")
        await self.write("/tmp/b/f", b"x", user="bob")
        await self.refused(E.PermissionDenied, self.svc.remove("/tmp/b", recursive=True, user="alice"))
        await self.svc.remove("/tmp/b", recursive=True, user="root")

    async def test_copying_a_tree_needs_to_read_all_of_it(self):
        await self.svc.chmod("/home/bob", 0o755, user="bob")
        await self.svc.chmod("/home/bob/secret", 0o600, user="bob")
        await self.refused(E.PermissionDenied, self.svc.copy("/home/bob", "/tmp/bob", recursive=True, user="alice"))
        self.assertFalse(await self.svc.exists("/tmp/bob"))
        await self.svc.chmod("/home/bob/secret", 0o644, user="bob")
        st = await self.svc.copy("/home/bob", "/tmp/bob", recursive=True, user="alice")
        self.assertEqual((st["owner"], st["mode"]), ("alice", 0o755))
        self.assertEqual((await self.stat("/tmp/bob/secret")).owner, "alice")

    async def test_access_answers_for_work_done_on_a_users_behalf(self):
        await self.refused(E.PermissionDenied, self.svc.access("/home/bob/secret", "r", user="alice"))
        await self.refused(E.PermissionDenied, self.svc.access("/home/bob/new", "w", user="alice"))
        await self.refused(E.PermissionDenied, self.svc.access("/data/new", "w", user="alice"))
        await self.svc.access("/home/bob/secret", "rw", user="bob")
        await self.svc.access("/home/bob/new", "w", user="bob")
        await self.refused(E.PermissionDenied, self.svc.access("/home/bob/secret", "x", user="bob"))
        await self.svc.access("/home/bob", "rwx", user="bob")
        await self.svc.access("/home/bob/secret", "rwx", user="root")
        await self.svc.access("/home/bob/secret")  # the kernel
        await self.refused(E.NotFound, self.svc.access("/home/bob/nothing", "r", user="bob"))
        await self.refused(E.NotFound, self.svc.access("/home/bob/nothing", "r"))
        await self.refused(E.InvalidArgument, self.svc.access("/home/bob/secret", "q", user="bob"))
        await self.svc.chmod("/home/bob", 0o755, user="bob")
        await self.svc.access("/home/bob/secret", "r", user="alice")
        await self.refused(E.PermissionDenied, self.svc.access("/home/bob/secret", "w", user="alice"))

    async def test_the_kernels_area_keeps_its_own_rule(self):
        await self.svc.mkdir("/etc/oneos", system=True)
        await self.svc.write_small("/etc/oneos/users.json", "e30=", system=True)
        for user in (None, "root", "alice"):
            await self.refused(E.PermissionDenied, self.svc.read_small("/etc/oneos/users.json", user=user))
            await self.refused(E.PermissionDenied, self.svc.chmod("/etc/oneos/users.json", 0o666, user=user))
            await self.refused(E.PermissionDenied, self.svc.chown("/etc/oneos/users.json", "alice", user=user))
        await self.svc.chmod("/etc/oneos/users.json", 0o600, system=True)
        self.assertEqual((await self.svc.stat("/etc/oneos/users.json", system=True))["mode"], 0o600)


# -- the shell ------------------------------------------------------------------------------


class ServiceFS:
    """FSClient's face over the service's handlers (no broker): what a shell session of *user* calls."""

    def __init__(self, svc: FileSystemService, user: str | None = None) -> None:
        self.svc = svc
        self.user = user

    def as_user(self, user):
        return ServiceFS(self.svc, user)

    def stat(self, path):
        return self.svc.stat(path, user=self.user).addCallback(Stat.from_dict)

    def exists(self, path):
        return self.svc.exists(path, user=self.user)

    def listdir(self, path):
        return self.svc.listdir(path, user=self.user).addCallback(lambda rows: [Stat.from_dict(r) for r in rows])

    def list_stat(self, path, parent=False):
        from oneos.fs.client import Listing

        return self.svc.list_stat(path, parent=parent, user=self.user).addCallback(Listing.decode)

    def stat_many(self, paths):
        from oneos.fs.client import decode_stats

        return self.svc.stat_many(paths, user=self.user).addCallback(decode_stats)

    def mkdir(self, path, parents=False, exist_ok=False, *, perm=None, owner=None):
        kw = {} if perm is None else {"perm": perm}
        return self.svc.mkdir(path, parents=parents, exist_ok=exist_ok, owner=owner, user=self.user, **kw).addCallback(
            Stat.from_dict
        )

    def remove(self, path, recursive=False):
        return self.svc.remove(path, recursive=recursive, user=self.user)

    def chmod(self, path, perm):
        return self.svc.chmod(path, perm, user=self.user).addCallback(Stat.from_dict)

    def chown(self, path, owner):
        return self.svc.chown(path, owner, user=self.user).addCallback(Stat.from_dict)

    def glob(self, pattern, cwd="/"):
        return self.svc.glob(pattern, cwd, user=self.user)

    def read_into(self, path, sink, offset=0, length=None):
        import base64

        d = self.svc.read_small(path, user=self.user)
        return d.addCallback(
            lambda r: sink.write(base64.b64decode(r["data"])[offset : None if length is None else offset + length])
        )

    @defer.inlineCallbacks
    def write_from(self, path, source, mode="truncate"):
        import base64

        parts = []
        while True:
            data = yield source.next()
            if not data:
                break
            parts.append(data)
        if mode == "append" and (yield self.svc.exists(path)):
            old = yield self.svc.read_small(path, user=self.user)
            parts.insert(0, base64.b64decode(old["data"]))
        st = yield self.svc.write_small(path, base64.b64encode(b"".join(parts)).decode(), user=self.user)
        return Stat.from_dict(st)


class ShellPermissions(ServiceFixture, unittest.TestCase):
    """The built-ins of a session whose grid is the user's (as ShellService.new_interpreter makes it)."""

    def session(self, user):
        out, err = Out(), Out()
        grid = Grid(ServiceFS(self.svc), None, None, reactor).for_user(user)
        return Interpreter(Session(user, home=f"/home/{user}"), grid, out, err), out, err

    async def test_alice_cannot_cat_bobs_file_and_ls_l_shows_owners_and_modes(self):
        alice, out, err = self.session("alice")
        self.assertEqual(await alice.execute("cat /home/bob/secret"), 1)
        self.assertEqual(err.text, "cat: /home/bob/secret: permission denied\n")
        self.assertEqual(await alice.execute("echo mine > $HOME/notes; ls -l /home; ls -l"), 0, err.text)
        rows = [line.split() for line in out.text.splitlines()]
        self.assertEqual(
            [(r[0], r[1], r[-1]) for r in rows],
            [("drwx------", "alice", "alice"), ("drwx------", "bob", "bob"), ("-rw-r--r--", "alice", "notes")],
        )
        self.assertEqual(rows[2][2], "5")  # size
        out.data.clear()
        self.assertEqual(await alice.execute("ls"), 0)
        self.assertEqual(out.text, "notes\n")

    async def test_chmod_octal_and_symbolic_and_chown_for_root_only(self):
        bob, out, err = self.session("bob")
        alice, a_out, a_err = self.session("alice")
        self.assertEqual(await bob.execute("chmod 755 $HOME && chmod go-r,u+x secret"), 0, err.text)
        self.assertEqual((await self.stat("/home/bob")).mode, 0o755)
        self.assertEqual((await self.stat("/home/bob/secret")).mode, 0o700)
        self.assertEqual(await alice.execute("cat /home/bob/secret"), 1)
        self.assertEqual(await bob.execute("chmod a+r secret"), 0, err.text)
        self.assertEqual(await alice.execute("cat /home/bob/secret"), 0, a_err.text)
        self.assertEqual(a_out.text, "bob's secret\n")
        a_err.data.clear()
        self.assertEqual(await alice.execute("chmod 777 /home/bob/secret"), 1)
        self.assertEqual(
            a_err.text,
            "chmod: /home/bob/secret: operation not permitted (only its owner or root may change its mode)\n",
        )
        a_err.data.clear()
        self.assertEqual(await alice.execute("chown alice /home/bob/secret"), 1)
        self.assertIn("chown: /home/bob/secret: operation not permitted", a_err.text)
        self.assertEqual(await bob.execute("chown alice secret"), 1)
        self.assertEqual(await bob.execute("chmod u+q secret"), 1)
        self.assertIn("chmod: ", err.text)
        self.assertEqual(await bob.execute("chmod 644"), 1)
        root, r_out, r_err = self.session("root")
        self.assertEqual(await root.execute("chown alice /home/bob/secret /home/bob"), 0, r_err.text)
        self.assertEqual([(await self.stat(p)).owner for p in ("/home/bob/secret", "/home/bob")], ["alice", "alice"])
        self.assertEqual(await root.execute("chmod 1777 /home/bob; ls -l /home"), 0, r_err.text)
        self.assertIn("drwxrwxrwt alice", r_out.text)
