"""``oneos tls init|issue|install``: the network's certificate authority and machine certificates.

``oneos tls init`` (on the network's first machine) creates the CA in
``$ONEOS_HOME/tls/`` if there is none (never replacing one) and this
machine's certificate, valid for its names and addresses.  ``oneos tls
issue --name HOST --out FILE`` (there too) writes a bundle for another
machine (the CA certificate, and a certificate and key for that machine);
``oneos tls install FILE`` on that machine puts it in place.  Then runtimes
serve streams with TLS, ``twistd -n oneospsd --tls`` serves mqtts://, and
clients check both against the CA.  docs/security.md, "Encryption".
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from oneos.config import is_loopback, load_config, oneos_home
from oneos.errors import OneOSError
from oneos.security import tls

SUMMARY = "TLS for the network: init (CA and this machine's certificate), issue (for another machine), install"


def _valid(name: str) -> bool:
    try:
        tls.parse_name(name)
        return True
    except tls.BadName:
        return False


def _route_address(host: str = "192.0.2.1") -> str:
    """The local address facing *host* (a UDP connect sends no packet); '' when there is none."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            address = s.getsockname()[0]
    except OSError:
        return ""
    return "" if is_loopback(address) else address


def machine_names(home: Path, given: list[str]) -> list[str]:
    """The names this machine's certificate should carry: *given*, the configured address, the host name,
    the address facing the broker (or the default route) and loopback."""
    names = list(given)
    try:
        config = load_config(home)
    except OneOSError:
        config = None
    if config is not None and config.address:
        names.append(config.address)
    for name in (socket.gethostname(), socket.getfqdn()):
        if name and _valid(name):
            names.append(name)
    if config is not None:
        from oneos.pubsub.address import parse_broker_url

        broker = parse_broker_url(config.pubsub).host
        if not is_loopback(broker):
            names.append(_route_address(broker))
    names.append(_route_address())
    return tls.with_loopback([n for n in dict.fromkeys(names) if n])


def _init(args: argparse.Namespace) -> int:
    home = oneos_home()
    for name in args.name:
        tls.parse_name(name)  # a typo is an error before anything is written
    created = tls.create_ca(home)
    if created:
        print(
            f"created the network's CA in {tls.tls_dir(home)}: {tls.CA_CERT} (every machine trusts it), "
            f"{tls.CA_KEY} (mode 0600: it stays on this machine)"
        )
    else:
        print(f"the network's CA is already in {tls.ca_path(home)} (kept)")
    names = machine_names(home, args.name)
    if (
        not tls.ca_key_path(home).exists()
        and tls.has_certificate(home)
        and not tls.needs_new_certificate(home, args.name or ["localhost"])
    ):
        # a machine that joined: its certificate came from the CA's machine, which alone can issue another
        have, expires = tls.certificate_status(home) or ([], None)
        print(
            f"this machine's certificate {tls.cert_path(home)} (from the CA's machine) is valid for "
            f"{', '.join(have)} until {expires:%Y-%m-%d} (kept)"
        )
        return 0
    if not tls.needs_new_certificate(home, names):
        have, expires = tls.certificate_status(home) or ([], None)
        print(
            f"this machine's certificate {tls.cert_path(home)} already covers {', '.join(names)} "
            f"(valid until {expires:%Y-%m-%d}; kept)"
        )
    else:
        status = tls.certificate_status(home)
        if status is not None:  # keep the names it had: peers may dial them
            names = list(dict.fromkeys([*names, *status[0]]))
        try:
            cert, key = tls.issue_own(home, names)
        except tls.NoCAKey:
            raise tls.NoCAKey(
                f"this machine's certificate lacks some of {', '.join(names)} (or ends soon), and "
                "this machine does not hold the CA's key: on the machine that ran 'oneos tls init' "
                f"first, run 'oneos tls issue --name ... --out FILE', then 'oneos tls install FILE' "
                "here"
            ) from None
        print(f"issued this machine's certificate {cert} ({key}, mode 0600) for: {', '.join(names)}")
    print(
        "runtimes started from this home now serve streams with TLS; for the broker: "
        "'twistd -n oneospsd --tls' (mqtts://, port 8883) and pubsub mqtts://HOST:8883 in config.json; "
        "for another machine: oneos tls issue --name ITS-ADDRESS --out FILE, then 'oneos tls install FILE' there"
    )
    return 0


def _issue(args: argparse.Namespace) -> int:
    home = oneos_home()
    out = Path(args.out)
    if out.exists() and not args.force:
        raise tls.TLSError(f"{out} exists; --force replaces it")
    data = tls.bundle(home, args.name)
    tls.save_bundle(out, data)
    names = tls.certificate_names(data["cert"].encode())
    print(
        f"wrote {out} (mode 0600; it holds a private key: hand it over like a password): the network's CA "
        f"certificate and a certificate for {', '.join(names)}"
    )
    print(f"on that machine: oneos tls install {out.name}")
    return 0


def _install(args: argparse.Namespace) -> int:
    home = oneos_home()
    names = tls.install(home, tls.load_bundle(args.file), force=args.force)
    print(
        f"installed the network's CA certificate {tls.ca_path(home)} and this machine's certificate "
        f"{tls.cert_path(home)} ({tls.key_path(home)}, mode 0600) for: {', '.join(names)}"
    )
    print("runtimes started from this home now serve streams with TLS and check peers against that CA")
    return 0


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="oneos tls", description=SUMMARY + ". Files live in $ONEOS_HOME/tls/.")
    sub = parser.add_subparsers(dest="action", required=True)
    init = sub.add_parser(
        "init", help="create the network's CA (if none; never replaced) and this machine's certificate"
    )
    init.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="NAME|ADDRESS",
        help="a host name or IP address peers reach this machine by (repeatable; the configured "
        "address, the host name, the detected addresses and loopback are added)",
    )
    issue = sub.add_parser("issue", help="write a CA certificate + certificate + key bundle for another machine")
    issue.add_argument(
        "--name",
        action="append",
        required=True,
        metavar="NAME|ADDRESS",
        help="a host name or IP address peers reach that machine by (repeatable; loopback is added)",
    )
    issue.add_argument("--out", required=True, help="the bundle file to write (JSON, mode 0600)")
    issue.add_argument("--force", action="store_true", help="replace --out if it exists")
    install = sub.add_parser("install", help="install a bundle 'oneos tls issue' wrote")
    install.add_argument("file")
    install.add_argument("--force", action="store_true", help="replace another network's CA certificate")
    args = parser.parse_args(argv)
    action = {"init": _init, "issue": _issue, "install": _install}[args.action]
    try:
        return action(args)
    except OSError as e:
        print(f"oneos tls {args.action}: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
