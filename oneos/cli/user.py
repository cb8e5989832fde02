"""``oneos user add|del|list`` and ``oneos passwd``: shell users in ``$ONEOS_HOME/users.json``.

Passwords are asked twice on a terminal (never echoed) or read from
standard input with ``--password-stdin`` (for scripts); only a salted
scrypt hash is stored.  The running shell re-reads the file at each login,
so no restart is needed.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from oneos.config import oneos_home
from oneos.shell.users import UserDB, UserError, validate_user_name

SUMMARIES = {
    "run": "manage shell users: add NAME, del NAME, list",
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


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="oneos user", description=SUMMARIES["run"])
    sub = parser.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="add a user (asks the password twice)")
    add.add_argument("name")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    rm = sub.add_parser("del", help="remove a user")
    rm.add_argument("name")
    sub.add_parser("list", help="list users")
    args = parser.parse_args(argv)
    db = UserDB(oneos_home())
    if args.action == "list":
        for name in db.names():
            print(name)
        return 0
    if args.action == "del":
        db.remove(args.name)
        print(f"removed user {args.name}")
        return 0
    validate_user_name(args.name)
    if args.name in db.names():
        raise UserError(f"user {args.name!r} already exists (use 'oneos passwd {args.name}')")
    db.add(args.name, _password(args.password_stdin))
    print(f"added user {args.name}")
    return 0


def passwd(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="oneos passwd", description=SUMMARIES["passwd"])
    parser.add_argument("name", nargs="?", default=None, help="user (default: your login name)")
    parser.add_argument("--password-stdin", action="store_true", help="read the new password from standard input")
    args = parser.parse_args(argv)
    name = args.name or getpass.getuser()
    db = UserDB(oneos_home())
    if name not in db.names():
        raise UserError(f"no user {name!r} (add one with 'oneos user add {name}')")
    db.set_password(name, _password(args.password_stdin))
    print(f"password changed for {name}")
    return 0
