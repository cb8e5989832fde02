"""``oneos mosquitto DIR``: the files that make Mosquitto enforce OneOS's identities and topic rules.

Our own broker checks identities with the network secret alone; Mosquitto
needs every identity in a password file, and the topic rules (oneos/security/acl.py)
as an ACL file.  Run this on the machine that created the network (it holds
the secret); it writes, for this machine's identities and every one
``oneos invite`` issued here:

- ``oneos.passwd``: ``name:$7$...`` lines, Mosquitto 2's PBKDF2-SHA512 hash
  format (salted hashes only, mode 0640);
- ``oneos.acl``: the ACL file;
- ``oneos.conf``: a listener, ``allow_anonymous false``, ``password_file`` and
  ``acl_file`` pointing at the two, for ``include_dir`` or ``mosquitto -c``.

After a new ``oneos invite``, run it again and send Mosquitto SIGHUP to reload.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import secrets
from pathlib import Path

from oneos.config import oneos_home
from oneos.security import acl, credentials
from oneos.security.credentials import ADMIN_IDENTITY

SUMMARY = "write Mosquitto password and ACL files for this network's identities (see docs/security.md)"

#: Mosquitto 2's default for "$7$" (PBKDF2-SHA512) password hashes
ITERATIONS = 101


def mosquitto_hash(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """*password* in Mosquitto's ``$7$`` format: PBKDF2-SHA512 with a 12-byte salt."""
    salt = secrets.token_bytes(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def identities(home: Path, extra: list[str]) -> list[str]:
    """The names to write: this home's own, the admin client, what ``oneos invite`` issued, and *extra*."""
    from oneos.cli.invite import issued_names
    from oneos.config import load_config

    found = credentials.load(home)
    names = [found.username] if found is not None else []
    try:
        config = load_config(home)
        if not config.generated_id:
            names.append(config.id)
    except Exception:
        pass
    names += [ADMIN_IDENTITY, *issued_names(home), *extra]
    return list(dict.fromkeys(n for n in names if credentials.role(n)))


def write_files(directory: Path, network: credentials.Credentials, names: list[str], listen: str) -> list[Path]:
    """Write oneos.passwd, oneos.acl and oneos.conf into *directory*; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    passwd, acl_file, conf = directory / "oneos.passwd", directory / "oneos.acl", directory / "oneos.conf"
    lines = [f"{name}:{mosquitto_hash(credentials.issue(network, name).password)}" for name in names]
    _write(passwd, "\n".join(lines) + "\n", 0o640)
    _write(acl_file, acl.mosquitto_acl(names), 0o644)
    host, _, port = listen.rpartition(":")
    _write(
        conf,
        "\n".join(
            [
                "# OneOS: identities and topic rules (written by 'oneos mosquitto')",
                "per_listener_settings false",
                f"listener {port or 1883}" + (f" {host}" if host else ""),
                "allow_anonymous false",
                f"password_file {passwd}",
                f"acl_file {acl_file}",
                "",
            ]
        ),
        0o644,
    )
    return [passwd, acl_file, conf]


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    tmp.replace(path)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="oneos mosquitto",
        description=SUMMARY + ". Run it on the machine that "
        "created the network; run it again (and SIGHUP Mosquitto) after 'oneos invite'.",
    )
    parser.add_argument(
        "dir",
        type=Path,
        help="where to write oneos.passwd, oneos.acl and oneos.conf "
        "(Mosquitto must be able to read them, e.g. /etc/mosquitto/conf.d)",
    )
    parser.add_argument(
        "--listen",
        default="1883",
        help="the listener line for oneos.conf: PORT or ADDRESS:PORT (default 1883 on every address)",
    )
    parser.add_argument("--name", action="append", default=[], help="also write this identity (repeatable)")
    args = parser.parse_args(argv)
    home = oneos_home()
    network = credentials.load(home)
    if network is None or not network.issuer:
        raise credentials.CredentialsError(
            f"{credentials.path(home)} does not hold the network secret: run 'oneos mosquitto' on the machine "
            "that created the network (or start 'oneos psd'/'oneosd' here first to create one)"
        )
    names = identities(home, args.name)
    paths = write_files(args.dir, network, names, args.listen)
    print(f"wrote {', '.join(str(p) for p in paths)} for {len(names)} identities: {', '.join(names)}")
    print(
        f"start Mosquitto with: mosquitto -c {paths[2]}   (or include it from mosquitto.conf); after "
        "another 'oneos invite', run this again and send Mosquitto SIGHUP"
    )
    return 0
