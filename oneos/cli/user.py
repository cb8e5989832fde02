"""``oneos user add|del|list`` and ``oneos passwd``: shell users, kept in the OneOS tree.

Users live in ``/etc/oneos/users.json`` in the network's file tree, so one
``oneos user add`` on any machine lets the user in at every runtime's front
door.  Passwords are asked twice on a terminal (never echoed) or read from
standard input with ``--password-stdin`` (for scripts); only a salted
scrypt hash is stored.  Front doors read the users at each login, so no
restart is needed.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from typing import Any

from oneos.cli.common import default_pubsub_url, network_rpc, run_with_client
from oneos.shell.users import UserError, validate_user_name

SUMMARIES = {
    "run": "manage shell users: add NAME, addkey NAME KEYFILE, del NAME, list",
    "passwd": "change a shell user's password",
}
SUMMARY = SUMMARIES["run"]


def _password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise UserError("the passwords do not match")
    if len(password) < 4:
        raise UserError("a password needs at least 4 characters")
    return password


def with_users(pubsub: str | None, action: Callable[[Any], Any]) -> Any:
    """Run ``action(TreeUsers)`` against the network's tree; fires with its result."""

    def job(reactor: Any, client: Any) -> Any:
        from oneos.fs.client import FSClient
        from oneos.shell.users import TreeUsers

        d = network_rpc(reactor, client)
        return d.addCallback(lambda rpc: action(TreeUsers(FSClient(rpc, reactor, system=True))))

    return run_with_client(pubsub or default_pubsub_url(), job)


def run(argv: list[str]) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--pubsub", help="broker URL (default: from $ONEOS_HOME/config.json)")
    parser = argparse.ArgumentParser(prog="oneos user", description=SUMMARIES["run"])
    sub = parser.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="add a user (asks the password twice)", parents=[common])
    add.add_argument("name")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    key = sub.add_parser(
        "addkey", help="let NAME log in with an SSH public key (a .pub file, '-' for stdin)", parents=[common]
    )
    key.add_argument("name")
    key.add_argument("keyfile")
    rm = sub.add_parser("del", help="remove a user", parents=[common])
    rm.add_argument("name")
    sub.add_parser("list", help="list users", parents=[common])
    args = parser.parse_args(argv)
    if args.action == "list":
        for name in with_users(args.pubsub, lambda users: users.names()):
            print(name)
        return 0
    if args.action == "addkey":
        validate_user_name(args.name)
        text = sys.stdin.read() if args.keyfile == "-" else open(args.keyfile, encoding="utf-8").read()
        lines = [
            f"{args.name} {line.strip()}" for line in text.splitlines() if line.strip() and not line.startswith("#")
        ]
        from oneos.shell.users import parse_authorized_keys

        if not lines or len(parse_authorized_keys("\n".join(lines), args.keyfile)) != len(lines):
            raise UserError(
                f"{args.keyfile}: not an SSH public key (expected lines like 'ssh-ed25519 AAAA... comment')"
            )
        added = with_users(args.pubsub, lambda users: users.add_key_lines(lines))
        print(f"{added} key(s) added for {args.name}")
        return 0
    if args.action == "del":
        with_users(args.pubsub, lambda users: users.remove(args.name))
        print(f"removed user {args.name}")
        return 0
    validate_user_name(args.name)
    password = _password(args.password_stdin)  # one connection per process: ask first, then add (refused if present)
    with_users(args.pubsub, lambda users: users.add(args.name, password))
    print(f"added user {args.name}")
    return 0


def passwd(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="oneos passwd", description=SUMMARIES["passwd"])
    parser.add_argument("name", nargs="?", default=None, help="user (default: your login name)")
    parser.add_argument("--password-stdin", action="store_true", help="read the new password from standard input")
    parser.add_argument("--pubsub", help="broker URL (default: from $ONEOS_HOME/config.json)")
    args = parser.parse_args(argv)
    name = args.name or getpass.getuser()
    password = _password(args.password_stdin)
    with_users(args.pubsub, lambda users: users.set_password(name, password))
    print(f"password changed for {name}")
    return 0
