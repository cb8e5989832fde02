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

Connections are reused (OpenSSH's connection multiplexing): a full SSH
connect and login costs far more than running a short line, so the first
``oneos`` starts a *master* connection in the background (``ssh -M -N -f``:
it logs in, detaches with its stdio on /dev/null, and exits
:data:`PERSIST_SECONDS` after its last session) and every ``oneos`` /
``oneos -c`` is a client of it, which opens one more session channel on
the logged-in connection (a ``oneos -c LINE`` given nothing else finds it
without even loading this module: oneos/cli/quick.py).  The session's stdin, stdout, stderr and exit
status are passed to the master as they are, so they behave exactly as
without reuse.  We start the master ourselves instead of letting the first
command become one (``ControlMaster=auto`` with ``ControlPersist``) so a
caller reading our output through pipes never waits for a background
process that kept them open, and so a stale socket is cleaned up before
the client sees it (OpenSSH would print a warning on the command's
stderr).  ``--no-reuse`` or ``ONEOS_SSH_REUSE=0`` turns it off.

Exit status: the remote line's status with ``-c``; 255 when the connection
or login fails (OpenSSH's convention): this process becomes ``ssh``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from oneos.cli import quick
from oneos.errors import OneOSError

SUMMARY = "open the OneOS shell (SSH), or run one line with -c LINE"

#: how long a shared connection stays up after its last session ended (OpenSSH's ControlPersist)
PERSIST_SECONDS = 60
#: the longest control socket path we hand to ssh: a UNIX socket's path holds 104 bytes on the BSDs and
#: macOS (108 on Linux), and OpenSSH first binds ``PATH.<16 random characters>`` then renames it into place
MAX_CONTROL_PATH = 104 - 1 - 17


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


def _home() -> Path:
    """``$ONEOS_HOME`` or ``~/.oneos`` (as oneos.config.oneos_home, without importing the configuration code)."""
    return Path(quick.home())


def _configured() -> tuple[str, int, Path]:
    """Where this machine's runtime serves the shell: what it wrote in runtime.json, else its settings."""
    home = _home()
    running = read_runtime_file(home)
    if running.get("ssh"):
        host, _, port = str(running["ssh"]).rpartition(":")
        return (connect_host(host.strip("[]")), int(port), home)
    # No running runtime here: work it out from the settings (the configuration code is only needed now).
    from oneos.config import load_config, resolve_listen
    from oneos.pubsub.address import parse_broker_url
    from oneos.runtime.host import guess_address

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

    Several ``oneos`` started at once the first time make one key: the
    work is done under a lock on *home* (not taken once the key is listed).
    """
    if not (home / "ssh_host_key.pub").exists() or not os.access(home, os.W_OK):
        return None
    key = home / "client_key"
    if _listed(home, key, user):
        return str(key)
    import fcntl

    lock = os.open(home, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not key.exists():
            import shutil
            import subprocess

            keygen = shutil.which("ssh-keygen")
            if keygen is None:
                return None
            subprocess.run(
                [keygen, "-q", "-t", "ed25519", "-N", "", "-C", f"oneos-{user}", "-f", str(key)],
                check=True,
                stdin=subprocess.DEVNULL,
            )
        if not _listed(home, key, user):
            keys = home / "local_authorized_keys"
            existing = keys.read_text() if keys.exists() else ""
            with open(keys, "a") as f:
                f.write(("" if not existing or existing.endswith("\n") else "\n") + _entry(key, user) + "\n")
            os.chmod(keys, 0o600)
    finally:
        os.close(lock)  # and with it the lock
    return str(key)


def _entry(key: Path, user: str) -> str:
    """The ``local_authorized_keys`` line giving *key* to *user*."""
    return f"{user} " + " ".join(Path(f"{key}.pub").read_text().split()[:2])


def _listed(home: Path, key: Path, user: str) -> bool:
    """Whether *key* exists and ``local_authorized_keys`` gives it to *user*."""
    try:
        return _entry(key, user) in (home / "local_authorized_keys").read_text().splitlines()
    except OSError:
        return False


def _ssh() -> str:
    """The OpenSSH client on PATH (shutil.which, without importing shutil on the fast path)."""
    for directory in os.get_exec_path():
        path = os.path.join(directory, "ssh")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise ShellClientError("the OpenSSH client 'ssh' is not installed (apt-get install openssh-client)")


def _login_options(host: str, port: int, home: Path, key: str | None) -> list[str]:
    """``-p``, quiet logging, the pinned host key and the identity: the same for a session and its master."""
    argv = ["-p", str(port), "-o", "LogLevel=ERROR"]
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
    return argv


def ssh_argv(
    host: str,
    port: int,
    user: str,
    home: Path,
    line: str | None,
    key: str | None,
    tty: bool,
    *,
    control: Path | str | None = None,
) -> list[str]:
    """The OpenSSH command line for a session (pure but for pinning the host key, for tests).

    *control*: a master's control socket (:func:`control_path`) to run the
    session over, ``"none"`` for no multiplexing at all (not even one the
    user's ``~/.ssh/config`` sets up), None to say nothing about it.
    """
    argv = [_ssh(), *_login_options(host, port, home, key)]
    if control is not None:
        # A client only: a missing master means a connection of our own, never a new master (see ensure_master).
        argv += ["-o", "ControlMaster=no", "-o", f"ControlPath={control}"]
    argv += ["-t"] if tty else ["-T"]
    argv.append(f"{user}@{host}")
    if line is not None:
        argv += ["--", line]
    return argv


def master_argv(
    host: str, port: int, user: str, home: Path, key: str | None, control: Path, persist: int = PERSIST_SECONDS
) -> list[str]:
    """``ssh -M -N -f``: log in, then keep the connection in the background for sessions to share.

    ``-f`` detaches only once logged in (a password is asked on the
    terminal first) and puts the background process's stdio on /dev/null;
    it exits *persist* seconds after the last session or when the runtime
    closes the connection.  ServerAliveInterval: a master whose runtime
    vanished without closing the connection gives up after 30 s instead of
    keeping new sessions waiting.
    """
    return [
        _ssh(),
        *_login_options(host, port, home, key),
        "-o",
        f"ControlPath={control}",
        "-o",
        f"ControlPersist={persist}",
        "-o",
        "ServerAliveInterval=10",
        "-M",  # once: "-M -M" or "-M -o ControlMaster=yes" means "ask before each session"
        "-N",
        "-f",
        f"{user}@{host}",
    ]


def reuse_wanted(no_reuse: bool, env: Mapping[str, str] | None = None) -> bool:
    """Whether to share a connection: not with ``--no-reuse`` nor ``ONEOS_SSH_REUSE=0`` (or no/off/false)."""
    return not no_reuse and not quick.reuse_off((os.environ if env is None else env).get("ONEOS_SSH_REUSE", ""))


def control_path(
    home: Path,
    user: str,
    host: str,
    port: int,
    key: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    uid: int | None = None,
    tmp: str = "/tmp",
) -> Path | None:
    """Where the master connection for this home, user, key and server listens; None if nowhere fits.

    The socket's name is a hash of what the connection is for, so a second
    ``oneos`` finds the first one's master and a different user, key, server
    or home never shares it.  Its directory must be ours and private (0700),
    made here if missing: whoever can connect to the socket can run lines as
    the logged-in user.  Candidates in order: ``$ONEOS_HOME/ssh-control``,
    ``$XDG_RUNTIME_DIR/oneos-ssh``, ``/tmp/oneos-UID-ssh``; one is skipped
    when the path would be too long for a UNIX socket (see
    :data:`MAX_CONTROL_PATH`), has characters ssh's option parser would
    take apart, or the directory cannot be made or is not private.
    """
    import hashlib

    env = os.environ if env is None else env
    uid = os.getuid() if uid is None else uid
    what = "\0".join([os.path.abspath(home), user, host, str(port), os.path.abspath(key) if key else ""])
    name = hashlib.sha256(what.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    candidates = [Path(home) / "ssh-control"]
    if env.get("XDG_RUNTIME_DIR"):
        candidates.append(Path(env["XDG_RUNTIME_DIR"]) / "oneos-ssh")
    candidates.append(Path(tmp) / f"oneos-{uid}-ssh")
    for directory in candidates:
        path = Path(os.path.abspath(directory)) / name
        if len(os.fsencode(path)) > MAX_CONTROL_PATH or not _plain(str(path)):
            continue
        if _private_dir(path.parent, uid):
            return path
    return None


def _plain(path: str) -> bool:
    """No characters that ssh would expand (``%``, a leading ``~``) or split the option at (spaces, quotes)."""
    return not any(c.isspace() or c in "%\"'\\" for c in path)


def _private_dir(directory: Path, uid: int) -> bool:
    """*directory* exists (made 0700 if missing), is a real directory, belongs to *uid*, and nobody else may enter it."""
    import stat

    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    try:
        st = directory.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid and st.st_mode & 0o077 == 0


def master_alive(control: Path) -> bool:
    """Whether a master listens on *control* (a connect, much cheaper than ``ssh -O check``)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(control))
        except OSError:
            return False
    return True


def ensure_master(argv: list[str], control: Path) -> tuple[bool, str]:
    """Make sure a master listens on *control*, starting it with *argv* (:func:`master_argv`) if not.

    Returns (ready, what ssh printed when it could not log in).  A socket
    nobody listens on any more (its master was killed, or the machine
    restarted) is removed first: a client would print a warning about it,
    and a new master could not bind there.  A lock on the socket's
    (private) directory keeps two ``oneos`` started at once from starting
    two masters, and leaves no lock file behind.
    """
    if master_alive(control):
        return True, ""
    import fcntl
    import subprocess
    import tempfile

    directory = os.open(control.parent, os.O_RDONLY)
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)
        if master_alive(control):
            return True, ""  # another oneos started it while we waited
        try:
            control.unlink()
        except FileNotFoundError:
            pass
        # ssh's messages go to a file, not a pipe: reading a pipe to its end would wait for the
        # background master if an ssh ever kept it open.  A password is asked on /dev/tty.
        with tempfile.TemporaryFile() as errors:
            status = subprocess.call(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors)
            errors.seek(0)
            said = errors.read().decode(errors="replace")
    finally:
        os.close(directory)  # and with it the lock
    if status != 0:
        return False, said
    return master_alive(control), said


def stop_master(control: Path, user: str, host: str) -> bool:
    """Ask the master on *control* to exit (``ssh -O exit``); whether one was running."""
    import subprocess

    if not master_alive(control):
        return False
    argv = [_ssh(), "-o", f"ControlPath={control}", "-O", "exit", f"{user}@{host}"]
    subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return True


def master_pid(control: Path, user: str, host: str) -> int | None:
    """The process id of the master on *control* (``ssh -O check``), or None when none runs."""
    import re
    import subprocess

    if not master_alive(control):
        return None
    argv = [_ssh(), "-o", f"ControlPath={control}", "-O", "check", f"{user}@{host}"]
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    found = re.search(r"pid=(\d+)", result.stderr + result.stdout)
    return int(found.group(1)) if found else None


def share(host: str, port: int, user: str, home: Path, identity: str | None, control: Path) -> Path | str | None:
    """The ``ControlPath`` a client (``ssh``, ``sftp``) should use: *control* once a master listens there.

    ``"none"`` (a connection of the client's own) when the master did not
    come up without saying why; None when ssh said why it could not connect
    or log in (printed on stderr here): the caller then exits with 255, as
    ssh would have.
    """
    ready, said = ensure_master(master_argv(host, port, user, home, identity, control), control)
    if said:
        sys.stderr.write(said)
    if not ready and said:
        return None
    return control if ready else "none"


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="oneos shell",
        description=SUMMARY,
        epilog=f"Connections are reused: the first command logs in and leaves the connection open in the "
        f"background for {PERSIST_SECONDS}s after the last one, so later ones start in a few milliseconds "
        "(--no-reuse or ONEOS_SSH_REUSE=0: log in every time).",
    )
    parser.add_argument("-c", dest="line", metavar="LINE", help="run LINE and exit with its status")
    parser.add_argument("--host", help="shell host (default: from listen.ssh in config.json)")
    parser.add_argument("--port", type=int, help="shell SSH port (default: from listen.ssh, 2222)")
    parser.add_argument("--user", "-u", default=None, help="OneOS user (default: your login name)")
    parser.add_argument("--identity", "-i", help="SSH private key to log in with")
    parser.add_argument(
        "--no-reuse", action="store_true", help="log in afresh, without sharing a connection (also ONEOS_SSH_REUSE=0)"
    )
    parser.add_argument(
        "--close", action="store_true", help="close the shared connection to this shell, if one is open, and exit"
    )
    args = parser.parse_args(argv)
    if args.close and args.line is not None:
        parser.error("--close and -c: one at a time")
    host, port, home = _configured() if not (args.host and args.port) else (args.host, args.port, _home())
    host, port = args.host or host, args.port or port
    user = args.user or quick.login_name()  # the rule the fast path checks its saved session against
    identity = args.identity or local_identity(home, user)
    control: Path | str = "none"
    if reuse_wanted(args.no_reuse):
        shared = control_path(home, user, host, port, identity)
        if args.close:
            if shared is not None:
                stop_master(shared, user, host)
            quick.forget(str(home))
            return 0
        if shared is not None:
            over = share(host, port, user, home, identity, shared)
            if over is None:
                return 255  # ssh said why it could not connect or log in, as without reuse
            control = over
    elif args.close:
        return 0
    tty = args.line is None and sys.stdin.isatty()
    command = ssh_argv(host, port, user, home, args.line, identity, tty, control=control)
    if args.line is not None and control != "none" and not (args.host or args.port or args.user or args.identity):
        # the default connection's session line, for the next 'oneos -c' to use without all this
        quick.save(str(home), user, str(control), command[:-1])
    sys.stdout.flush()
    sys.stderr.flush()
    # ssh becomes this process: the terminal and stdio are its own, and its exit status (the line's,
    # or 255) is ours.  No Python waits behind it, so a one-liner costs one process start less.
    os.execv(command[0], command)
    return 255  # not reached (execv returns only when a test replaced it)
