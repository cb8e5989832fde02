#!/usr/bin/env python3
"""SFTP benchmark: files over SSH into the OneOS tree, beside ``oneos fs`` and beside OpenSSH's own sftp server.

Prints, in one run, upload and download throughput (MB/s, best of
``--rounds``) of one file of ``--size-mib`` MiB of random bytes, each
transfer checked byte for byte:

* OneOS ``sftp``: OpenSSH's ``sftp -b`` (``put`` / ``get``) against the
  shell's SSH door of a real ``twistd oneosd`` (embedded broker, SQLite
  store, its own temporary ``$ONEOS_HOME``; the client key made by
  :func:`oneos.cli.shell.local_identity`, as a first ``oneos`` would);
* OneOS ``scp`` (OpenSSH 9: SFTP underneath, rewriting in place);
* ``oneos fs put`` / ``oneos fs get`` against the same runtime (the file
  system's own streams, no SSH);
* the baseline: the same ``sftp -b`` against our own ``/usr/sbin/sshd -D -f
  CONFIG`` on a free loopback port (generated host key, the same client
  key, key-only login, no PAM, ``Subsystem sftp internal-sftp``), writing
  the machine's own disk.  Without sshd the baseline is skipped with the
  reason and the OneOS figures are still printed.

It also prints the runtime's peak RSS before and after (uploads are spooled
to a temporary file past 1 MiB and reads stream, so it should not grow with
the file).  Everything started here is stopped on the way out, errors
included.  Helpers are shared with benchmarks/bench_shell.py.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_shell import SSHD, BenchError, OneOSTarget, OpenSSHTarget, Target, tool_version
from oneos.testing.bench import interrupt_on_signals  # noqa: E402

STEP_TIMEOUT = 600.0


def sftp_argv(target: Target, batch: Path) -> list[str]:
    """``sftp -b BATCH`` with the same client options bench_shell uses for ``ssh`` (``-p`` becomes ``-P``)."""
    base = target.ssh_base()
    i = base.index("-p")
    options = base[1:i] + base[i + 2 :]
    return ["sftp", "-P", str(target.port), *options, "-b", str(batch), f"{target.user}@127.0.0.1"]


def scp_argv(target: Target, source: str, dest: str) -> list[str]:
    base = target.ssh_base()
    i = base.index("-p")
    return ["scp", "-P", str(target.port), *base[1:i], *base[i + 2 :], source, dest]


def timed(argv: list[str], what: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    """Seconds *argv* took; BenchError if it failed."""
    t0 = time.perf_counter()
    try:
        r = subprocess.run(
            argv,
            check=False,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what} took more than {STEP_TIMEOUT:.0f}s") from None
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise BenchError(f"{what} exited {r.returncode}: {(r.stderr or r.stdout).strip()[-800:]}")
    return elapsed


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def peak_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def measure_sftp(target: Target, local: Path, remote: str, work: Path, rounds: int) -> tuple[float, float]:
    """Best upload and download seconds of ``sftp -b`` put/get of *local* to *remote* (checked byte for byte)."""
    want = digest(local)
    back = work / f"back-{target.name}"
    ups, downs = [], []
    for _ in range(rounds):
        put = work / "put.batch"
        put.write_text(f'put "{local}" "{remote}"\n')
        ups.append(timed(sftp_argv(target, put), f"{target.name} sftp put"))
        get = work / "get.batch"
        get.write_text(f'get "{remote}" "{back}"\n')
        downs.append(timed(sftp_argv(target, get), f"{target.name} sftp get"))
        if digest(back) != want:
            raise BenchError(f"{target.name}: the file came back different")
        back.unlink()
    return min(ups), min(downs)


def measure_scp(target: Target, local: Path, remote: str, work: Path, rounds: int) -> tuple[float, float]:
    want = digest(local)
    back = work / f"back-scp-{target.name}"
    ups, downs = [], []
    for _ in range(rounds):
        ups.append(timed(scp_argv(target, str(local), f"{target.user}@127.0.0.1:{remote}"), f"{target.name} scp up"))
        downs.append(timed(scp_argv(target, f"{target.user}@127.0.0.1:{remote}", str(back)), f"{target.name} scp down"))
        if digest(back) != want:
            raise BenchError(f"{target.name}: the file came back different over scp")
        back.unlink()
    return min(ups), min(downs)


def measure_fs(target: OneOSTarget, local: Path, remote: str, work: Path, rounds: int) -> tuple[float, float]:
    """Best ``oneos fs put`` / ``oneos fs get`` seconds, as the runtime's owner."""
    want = digest(local)
    back = work / "back-fs"
    env = dict(os.environ, ONEOS_HOME=str(target.home))
    cli = [sys.executable, "-m", "oneos.cli.main", "fs", "--pubsub", target.url, "--no-progress"]
    ups, downs = [], []
    for _ in range(rounds):
        ups.append(timed([*cli, "put", str(local), remote], "oneos fs put", env))
        downs.append(timed([*cli, "get", remote, str(back)], "oneos fs get", env))
        if digest(back) != want:
            raise BenchError("oneos fs: the file came back different")
        back.unlink()
    return min(ups), min(downs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=64, help="size of the file moved (default 64 MiB)")
    parser.add_argument("--rounds", type=int, default=3, help="transfers each way per system; the best counts (3)")
    args = parser.parse_args()
    if args.size_mib < 1 or args.rounds < 1:
        parser.error("--size-mib and --rounds must be at least 1")
    for tool in ("ssh", "sftp", "scp", "ssh-keygen"):
        if shutil.which(tool) is None:
            print(
                f"the OpenSSH client tool '{tool}' is not installed (apt-get install openssh-client)", file=sys.stderr
            )
            return 2

    interrupt_on_signals()

    user = getpass.getuser()
    root = Path(tempfile.mkdtemp(prefix="oneos-bench-sftp-"))
    oneos = OneOSTarget(root, user)
    baseline: OpenSSHTarget | None = None
    try:
        size = args.size_mib * 2**20
        local = root / "payload.bin"
        with open(local, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(2**20))
        print(
            f"machine: {os.cpu_count()} cores, {platform.platform()}, Python {sys.version.split()[0]}, "
            f"client: {tool_version(['ssh', '-V'])}, user {user}"
        )
        print(
            f"file: {args.size_mib} MiB of random bytes; best of {args.rounds} transfers each way, checked by SHA-256"
        )
        print("  starting the OneOS runtime ...", file=sys.stderr, flush=True)
        oneos.start()
        assert oneos.process is not None
        rss_before = peak_rss_mib(oneos.process.pid)
        print(f"OneOS: runtime 'bench' on {oneos.url}, shell ssh on 127.0.0.1:{oneos.port}; {oneos.kex()}")
        why = OpenSSHTarget.unavailable()
        if why is None:
            assert oneos.key is not None
            baseline = OpenSSHTarget(root, user, oneos.key)
            try:
                baseline.start()
            except BenchError as e:
                why = f"our sshd did not work: {e}"
                baseline.stop()
                baseline = None
        if baseline is not None:
            print(
                f"OpenSSH: {tool_version([SSHD, '-V'])} on 127.0.0.1:{baseline.port}, internal-sftp; {baseline.kex()}"
            )
        else:
            print(f"OpenSSH baseline skipped: {why}")
        print()
        rows: list[tuple[str, tuple[float, float] | None]] = []
        print("  OneOS sftp ...", file=sys.stderr, flush=True)
        rows.append(("OneOS sftp", measure_sftp(oneos, local, "bench.bin", root, args.rounds)))
        print("  OneOS scp ...", file=sys.stderr, flush=True)
        rows.append(("OneOS scp", measure_scp(oneos, local, "bench-scp.bin", root, args.rounds)))
        print("  oneos fs put/get ...", file=sys.stderr, flush=True)
        rows.append(("oneos fs put/get", measure_fs(oneos, local, "/tmp/bench-fs.bin", root, args.rounds)))
        rss_after = peak_rss_mib(oneos.process.pid)
        if baseline is not None:
            print("  OpenSSH sftp ...", file=sys.stderr, flush=True)
            rows.append(
                ("OpenSSH sftp (host)", measure_sftp(baseline, local, str(root / "sshd-copy.bin"), root, args.rounds))
            )
        else:
            rows.append(("OpenSSH sftp (host)", None))
        head = f"{'(MB/s)':<22}{'upload':>10}{'download':>10}"
        print(head)
        print("-" * len(head))
        for name, result in rows:
            if result is None:
                print(f"{name:<22}{'skipped':>10}{'skipped':>10}")
            else:
                up, down = result
                print(f"{name:<22}{size / up / 1e6:>10.1f}{size / down / 1e6:>10.1f}")
        print(f"\nruntime peak RSS: {rss_before:.0f} MiB before, {rss_after:.0f} MiB after the OneOS transfers")
        return 0
    except BenchError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"interrupted ({e or 'Ctrl-C'}); stopping what was started", file=sys.stderr)
        return 130
    finally:
        if baseline is not None:
            baseline.stop()
        oneos.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
