"""``oneos invite`` and ``oneos join``: let another machine into this network.

``oneos invite`` (on the machine that created the network: it holds the
secret identities are derived from) issues a new identity and prints a join
token: that identity's name and password and the broker's URL as other
machines reach it.  A runtime identity (default, ``--name``) lets the new
machine run a runtime; a client identity (``--user alice``) only lets it run
``oneos`` commands as OneOS user alice.  ``oneos join TOKEN`` (on the new
machine) installs it: ``credentials.json`` (mode 0600), ``pubsub`` and, for a
runtime identity, ``id`` in ``config.json``; then ``oneosd`` starts a runtime
that is a member.  Issued names are remembered in ``identities.json`` so
``oneos mosquitto`` can write a password file for all of them.
docs/security.md has the model.

The token carries that identity's password (never the network secret): pass
it like a password.
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import sys
from pathlib import Path

from oneos.config import is_loopback, load_config, oneos_home, read_config_file, save_config, with_changes
from oneos.errors import OneOSError
from oneos.security import credentials

SUMMARIES = {
    "run": "print a token that lets another machine join this network ('oneos join TOKEN' there)",
    "join": "make this machine a member of a network: install the token 'oneos invite' printed",
}
SUMMARY = SUMMARIES["run"]


def _reachable_host() -> str:
    """This machine's name or address as other machines probably reach it."""
    from oneos.cli.shell import read_runtime_file

    home = oneos_home()
    try:
        address = load_config(home).address
    except OneOSError:
        address = ""
    if address:
        return address
    stream = str(read_runtime_file(home).get("stream") or "")
    host = stream.rpartition(":")[0].strip("[]")
    if host and not is_loopback(host) and host not in ("0.0.0.0", "::"):
        return host
    try:  # the address of the interface facing the default route (no packet is sent)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            ip = s.getsockname()[0]
            if not ip.startswith("127."):
                return ip
    except OSError:
        pass
    return socket.getfqdn()


def broker_for_others(url: str) -> tuple[str, bool]:
    """*url* as other machines reach it: a loopback host is replaced by this machine's address. (url, guessed)."""
    from oneos.pubsub.address import parse_broker_url

    url = credentials.strip_userinfo(url)
    address = parse_broker_url(url, "--broker")
    if not is_loopback(address.host):
        return address.url, False
    host = _reachable_host()
    host = f"[{host}]" if ":" in host else host
    scheme = "mqtts" if getattr(address, "tls", False) else "mqtt"
    return f"{scheme}://{host}:{address.port}", True


#: names issued by ``oneos invite`` on this machine (``oneos mosquitto`` writes passwords for them)
IDENTITIES_FILE = "identities.json"


def issued_names(home: Path) -> list[str]:
    """Identity names issued from this home (the oldest first); a damaged file reads as none."""
    try:
        names = json.loads((Path(home) / IDENTITIES_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [n for n in names if isinstance(n, str) and credentials.role(n)] if isinstance(names, list) else []


def remember_issued(home: Path, name: str) -> None:
    names = issued_names(home)
    if name not in names:
        names.append(name)
        target = Path(home) / IDENTITIES_FILE
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(names, indent=1) + "\n")
        tmp.replace(target)


def _tls_bundle(home: Path, addresses: list[str], runtime: bool) -> dict | None:
    """The TLS part of a token: none without a network CA here; the CA alone for a client; else a certificate."""
    from oneos.security import tls

    if not tls.ca_path(home).exists():
        if addresses:
            raise credentials.CredentialsError(
                "--address is for a network with TLS, and this machine has no network CA ('oneos tls init' makes one)"
            )
        return None
    if not runtime:
        return tls.bundle(home, [])
    if not addresses:
        raise credentials.CredentialsError(
            "this network uses TLS: name the new runtime's address as its peers "
            "dial it, for its certificate (--address 10.0.0.12; repeatable)"
        )
    return tls.bundle(home, addresses)


def run(argv: list[str]) -> int:
    from oneos.cli.common import default_pubsub_url

    parser = argparse.ArgumentParser(
        prog="oneos invite",
        description=SUMMARIES["run"] + ". Run it on the machine "
        "that created the network (it holds the secret identities come from). The "
        "token holds the new identity's password: hand it over like a password.",
    )
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--name", help="the new runtime's id, which is its identity (default: rt- and random letters)")
    who.add_argument(
        "--user",
        help="issue a client identity instead: the new machine runs only 'oneos' commands, "
        "always as this OneOS user (no runtime)",
    )
    parser.add_argument(
        "--broker",
        help="the broker URL as the new machine reaches it (default: this machine's "
        "broker, a loopback address replaced by this machine's address)",
    )
    parser.add_argument(
        "--address",
        action="append",
        default=[],
        metavar="NAME|IP",
        help="on a network with TLS ('oneos tls init' here): the new runtime's address or host name as "
        "its peers dial it, for its certificate (repeatable)",
    )
    args = parser.parse_args(argv)
    home = oneos_home()
    creds = credentials.load(home)
    if creds is None:
        raise credentials.CredentialsError(
            f"no network credentials in {credentials.path(home)}: start the broker "
            "('oneos psd') or a runtime ('oneosd') here first (the first start creates them), or "
            "run 'oneos invite' on the machine that created the network"
        )
    if args.user:
        name = f"{args.user}@{secrets.token_hex(3)}"
    else:
        name = args.name or f"rt-{secrets.token_hex(3)}"
    if args.broker:
        from oneos.pubsub.address import parse_broker_url

        url, guessed = parse_broker_url(credentials.strip_userinfo(args.broker), "--broker").url, False
    else:
        url, guessed = broker_for_others(default_pubsub_url())
    issued = credentials.issue(creds, name, url)
    bundle = _tls_bundle(home, args.address, runtime=credentials.role(name) == "runtime")
    remember_issued(home, name)
    print(credentials.token(issued, url, tls=bundle))
    kind = "runtime" if credentials.role(name) == "runtime" else f"client (OneOS user {args.user})"
    note = f"oneos invite: a {kind} identity {name!r}; the token names the broker {url}"
    if guessed:
        note += (
            " (this machine's address in place of loopback; the broker must listen there, e.g. "
            "'oneos psd' or 'twistd -n oneospsd --interface 0.0.0.0'; --broker URL names another)"
        )
    after = "then oneosd" if credentials.role(name) == "runtime" else "then oneos commands act as " + str(args.user)
    print(note + f". On the new machine: oneos join TOKEN, {after}.", file=sys.stderr)
    return 0


def join(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="oneos join",
        description=SUMMARIES["join"] + ": writes the network's "
        "credentials ($ONEOS_HOME/credentials.json, mode 0600) and its broker "
        "(pubsub in config.json); then start the runtime with 'oneosd'.",
    )
    parser.add_argument("token", help="the token 'oneos invite' printed on a machine of the network")
    parser.add_argument(
        "--force", action="store_true", help="replace credentials of another network already in $ONEOS_HOME"
    )
    args = parser.parse_args(argv)
    creds, bundle = credentials.read_token(args.token)
    home = oneos_home()
    existing = credentials.load(home)
    if (
        existing is not None
        and (existing.username, existing.password) != (creds.username, creds.password)
        and not args.force
    ):
        raise credentials.CredentialsError(
            f"{credentials.path(home)} already holds other credentials "
            f"({existing.username!r}; a runtime or broker started here created them, or an earlier "
            "join); 'oneos join --force TOKEN' replaces them (this machine then leaves that network)"
        )
    config = load_config(home)
    embedded_before = read_config_file(home) is None
    runtime = credentials.role(creds.username) == "runtime"
    changes: dict = {"pubsub": creds.broker}
    if runtime:
        changes["id"] = creds.username  # the runtime's id is its identity (the broker lets it publish only that)
    config = with_changes(config, **changes)
    names = None
    if bundle is not None:
        from oneos.security import tls

        names = tls.install(home, bundle, force=args.force)
    credentials.save(home, creds)
    path = save_config(config)
    print(f"joined the network of the broker at {creds.broker} as {creds.username}")
    print(f"  credentials  {credentials.path(home)} (mode 0600)")
    print(
        f"  config       {path}"
        + (" (created)" if embedded_before else "")
        + (f": pubsub, id {creds.username}" if runtime else ": pubsub")
    )
    if bundle is not None:
        print(
            f"  tls          {tls.tls_dir(home)}: the network's CA"
            + (f", this machine's certificate for {', '.join(names)}" if names else "")
        )
    if runtime:
        print("now start the runtime: oneosd (or twistd -n oneosd); 'oneos status' shows the network")
    else:
        print(
            f"'oneos' commands here now act as OneOS user {credentials.client_user(creds.username)} "
            "('oneos status' shows the network)"
        )
    return 0
