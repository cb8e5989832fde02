"""``oneos shell`` (and ``oneos -c LINE``): a terminal on the OneOS shell service.

We drive the OpenSSH client rather than re-implementing a terminal: it
already does raw mode, window resizes, agent keys and known-hosts pinning
well, and the shell service is a plain SSH server.  It connects to this
machine's own runtime (every runtime serves the shell): the address that
runtime wrote in ``$ONEOS_HOME/runtime.json``, else ``listen.ssh`` from the
settings (or ``--host``/``--port``), so a leader change never breaks it.
The network's public host key, which the runtime writes to this
``$ONEOS_HOME``, is pinned through a private known-hosts file, so no
"authenticity can't be established" question is asked and a different key
is refused.

Exit status: the remote line's status with ``-c``; 255 when the connection
or login fails (OpenSSH's convention).
"""

from __future__ import annotations

import argparse
import getpass
import os
import shutil
import subprocess
import sys
from pathlib import Path

from oneos.errors import OneOSError

SUMMARY = "open the OneOS shell (SSH), or run one line with -c LINE"


class ShellClientError(OneOSError):
    """The shell service cannot be located or the ssh client is missing."""


def endpoint_address(endpoint: str) -> tuple[str, int]:
    """(host, port) a client should use for a server endpoint string like ``tcp:2222:interface=127.0.0.1``."""
    fields = endpoint.split(":")
    if len(fields) < 2 or fields[0] not in ("tcp", "tcp6"):
        raise ShellClientError(f"listen.ssh {endpoint!r} is not a tcp endpoint; give --host and --port")
    port = None
    host = "127.0.0.1"
    for f in fields[1:]:
        if f.startswith("port="):
            port = f[5:]
        elif f.startswith("interface="):
            host = f[len("interface=") :].replace("\\", "") or host
        elif port is None and f.isdigit():
            port = f
    if port is None:
        raise ShellClientError(f"listen.ssh {endpoint!r} names no port; give --port")
    return connect_host(host), int(port)


def _configured() -> tuple[str, int, Path]:
    """Where this machine's runtime serves the shell: what it wrote in runtime.json, else its settings."""
    from oneos.config import load_config, oneos_home, resolve_listen
    from oneos.pubsub.address import parse_broker_url
    from oneos.runtime.host import guess_address

    home = oneos_home()
    running = read_runtime_file(home)
    if running.get("ssh"):
        host, _, port = str(running["ssh"]).rpartition(":")
        return (connect_host(host.strip("[]")), int(port), home)
    try:
        config = load_config(home)
    except OneOSError:
        from oneos.config import DEFAULT_PUBSUB, default_listen

        return (*endpoint_address(resolve_listen(default_listen(), DEFAULT_PUBSUB, "127.0.0.1")["ssh"]), home)
    address = config.address or guess_address(parse_broker_url(config.pubsub).host)
    endpoint = resolve_listen(config.listen, config.pubsub, address).get("ssh")
    if not endpoint:
        raise ShellClientError("the shell's SSH listener is off (listen.ssh is empty); give --host and --port")
    return (*endpoint_address(endpoint), home)


def connect_host(host: str) -> str:
    """A host to connect to for a listening address (a wildcard means this machine)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def read_runtime_file(home: Path) -> dict:
    """``$ONEOS_HOME/runtime.json`` as the runtime living there wrote it, if that runtime still runs."""
    import json

    try:
        info = json.loads((home / "runtime.json").read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return info if isinstance(info, dict) else {}


def local_identity(home: Path, user: str) -> str | None:
    """A key that lets the owner of this ``$ONEOS_HOME`` into its own runtime's shell.

    Used only when this home's runtime has written the network's public host
    key here (same machine, same home): whoever can write *home* already
    controls that runtime, so the first ``oneos`` makes ``client_key`` there
    and maps it to *user* in ``local_authorized_keys``, which that runtime's
    front door (and only it) accepts.  A newcomer's ``twistd -n oneosd`` then
    ``oneos`` works without setting up users; reaching other runtimes needs
    ``oneos user add`` or a key in the tree's ``/etc/oneos/authorized_keys``.
    """
    if not (home / "ssh_host_key.pub").exists() or not os.access(home, os.W_OK):
        return None
    key = home / "client_key"
    if not key.exists():
        keygen = shutil.which("ssh-keygen")
        if keygen is None:
            return None
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", f"oneos-{user}", "-f", str(key)], check=True)
    public = " ".join(Path(f"{key}.pub").read_text().split()[:2])
    keys = home / "local_authorized_keys"
    existing = keys.read_text() if keys.exists() else ""
    entry = f"{user} {public}"
    if entry not in existing.splitlines():
        with open(keys, "a") as f:
            f.write(("" if not existing or existing.endswith("\n") else "\n") + entry + "\n")
        os.chmod(keys, 0o600)
    return str(key)


def ssh_argv(host: str, port: int, user: str, home: Path, line: str | None, key: str | None, tty: bool) -> list[str]:
    """The OpenSSH command line for a session (pure, for tests)."""
    ssh = shutil.which("ssh")
    if ssh is None:
        raise ShellClientError("the OpenSSH client 'ssh' is not installed (apt-get install openssh-client)")
    argv = [ssh, "-p", str(port), "-o", "LogLevel=ERROR"]
    host_pub = home / "ssh_host_key.pub"
    if host_pub.exists():
        known = home / "known_hosts"
        entry = f"[{host}]:{port} " + " ".join(host_pub.read_text().split()[:2]) + "\n"
        if not known.exists() or entry not in known.read_text():
            with open(known, "a") as f:
                f.write(entry)
        argv += ["-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes"]
    if key:
        argv += ["-i", key, "-o", "IdentitiesOnly=yes"]
    argv += ["-t"] if tty else ["-T"]
    argv.append(f"{user}@{host}")
    if line is not None:
        argv += ["--", line]
    return argv


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="oneos shell", description=SUMMARY)
    parser.add_argument("-c", dest="line", metavar="LINE", help="run LINE and exit with its status")
    parser.add_argument("--host", help="shell host (default: from listen.ssh in config.json)")
    parser.add_argument("--port", type=int, help="shell SSH port (default: from listen.ssh, 2222)")
    parser.add_argument("--user", "-u", default=None, help="OneOS user (default: your login name)")
    parser.add_argument("--identity", "-i", help="SSH private key to log in with")
    args = parser.parse_args(argv)
    host, port, home = (
        _configured()
        if not (args.host and args.port)
        else (args.host, args.port, Path(os.environ.get("ONEOS_HOME", "~/.oneos")).expanduser())
    )
    host, port = args.host or host, args.port or port
    user = args.user or getpass.getuser()
    tty = args.line is None and sys.stdin.isatty()
    identity = args.identity or local_identity(home, user)
    command = ssh_argv(host, port, user, home, args.line, identity, tty)
    if args.line is None:
        os.execv(command[0], command)  # the terminal belongs to ssh from here on
    return subprocess.call(command)
