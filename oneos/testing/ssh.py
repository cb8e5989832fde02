"""OpenSSH client command lines for tests and benchmarks that log into a OneOS shell.

Every such caller wants the same things of ``ssh``: no prompt for a host key
it cannot know in advance (each test runtime makes its own), no reading of
the user's ~/.ssh/config or agent (a developer's settings must not change a
test), quiet output, and either the one key given or a password only.  One
function says so once.
"""

from __future__ import annotations

from pathlib import Path


def ssh_options(
    key: Path | str | None = None,
    *,
    password: bool = False,
    known_hosts: Path | str | None = None,
    connect_timeout: float | None = None,
) -> list[str]:
    """``-F``/``-o`` options for ``ssh``/``scp``/``sftp``.

    *key*: log in with this private key only (no agent, no other identities,
    never a prompt).  *password*: log in by password only (the caller supplies
    it, e.g. through ``SSH_ASKPASS``).  *known_hosts*: check the host key
    against this file strictly instead of accepting any.
    """
    hosts = (
        ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}"]
        if known_hosts is not None
        else ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    )
    options = ["-F", "/dev/null", *hosts, "-o", "LogLevel=ERROR", "-o", "IdentityAgent=none"]
    if key is not None:
        options += ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", str(key)]
    if password:
        options += [
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password",
            "-o",
            "NumberOfPasswordPrompts=1",
        ]
    if connect_timeout is not None:
        options += ["-o", f"ConnectTimeout={connect_timeout:g}"]
    return options


def ssh_argv(
    port: int | str,
    user: str,
    host: str = "127.0.0.1",
    *,
    key: Path | str | None = None,
    password: bool = False,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """``ssh -p PORT [options] [extra] USER@HOST`` (append ``--`` and a command line to run one)."""
    return ["ssh", "-p", str(port), *ssh_options(key, password=password), *extra, f"{user}@{host}"]
