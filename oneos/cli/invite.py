"""``oneos invite`` and ``oneos join``: let another machine into this network.

``oneos invite`` (on a machine of the network) prints a join token: the
network's credentials and the broker's URL as other machines reach it.
``oneos join TOKEN`` (on the new machine) installs them: ``credentials.json``
(mode 0600) and ``pubsub`` in ``config.json``; then ``oneosd`` starts a
runtime that is a member.  docs/security.md has the model.

The token carries the network's secret: pass it like a password (not in a
chat channel others read).
"""

from __future__ import annotations

import argparse
import socket
import sys
from urllib.parse import urlsplit, urlunsplit

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
    from oneos.pubsub.client import parse_broker_url

    url = credentials.strip_userinfo(url)
    address = parse_broker_url(url, "--broker")
    if not is_loopback(address.host):
        return address.url, False
    host = _reachable_host()
    host = f"[{host}]" if ":" in host else host
    return f"mqtt://{host}:{address.port}", True


def run(argv: list[str]) -> int:
    from oneos.cli.common import default_pubsub_url

    parser = argparse.ArgumentParser(prog="oneos invite", description=SUMMARIES["run"] + ". The token holds the "
                                     "network's secret: hand it over like a password.")
    parser.add_argument("--broker", help="the broker URL as the new machine reaches it (default: this machine's "
                        "broker, a loopback address replaced by this machine's address)")
    args = parser.parse_args(argv)
    home = oneos_home()
    creds = credentials.load(home)
    if creds is None:
        raise credentials.CredentialsError(f"no network credentials in {credentials.path(home)}: start the broker "
                          "('oneos psd') or a runtime ('oneosd') here first (the first start creates them), or "
                          "run 'oneos invite' on a machine of the network")
    if args.broker:
        from oneos.pubsub.client import parse_broker_url

        url, guessed = parse_broker_url(credentials.strip_userinfo(args.broker), "--broker").url, False
    else:
        url, guessed = broker_for_others(default_pubsub_url())
    print(credentials.token(creds, url))
    note = f"oneos invite: the token names the broker {url}"
    if guessed:
        note += (" (this machine's address in place of loopback; the broker must listen there, e.g. "
                 "'oneos psd' or 'twistd -n oneospsd --interface 0.0.0.0'; --broker URL names another)")
    print(note + ". On the new machine: oneos join TOKEN, then oneosd.", file=sys.stderr)
    return 0


def join(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="oneos join", description=SUMMARIES["join"] + ": writes the network's "
                                     "credentials ($ONEOS_HOME/credentials.json, mode 0600) and its broker "
                                     "(pubsub in config.json); then start the runtime with 'oneosd'.")
    parser.add_argument("token", help="the token 'oneos invite' printed on a machine of the network")
    parser.add_argument("--force", action="store_true",
                        help="replace credentials of another network already in $ONEOS_HOME")
    args = parser.parse_args(argv)
    creds = credentials.parse_token(args.token)
    home = oneos_home()
    existing = credentials.load(home)
    if existing is not None and (existing.username, existing.password) != (creds.username, creds.password) \
            and not args.force:
        raise credentials.CredentialsError(f"{credentials.path(home)} already holds another network's credentials "
                          "(a runtime or broker started here created them); 'oneos join --force TOKEN' replaces "
                          "them (this machine then leaves that network)")
    config = load_config(home)
    embedded_before = read_config_file(home) is None
    config = with_changes(config, pubsub=creds.broker)
    credentials.save(home, creds)
    path = save_config(config)
    print(f"joined the network of the broker at {creds.broker}")
    print(f"  credentials  {credentials.path(home)} (mode 0600)")
    print(f"  pubsub       {path}" + (" (created)" if embedded_before else ""))
    print("now start the runtime: oneosd (or twistd -n oneosd); 'oneos status' shows the network")
    return 0
