"""A throw-away multi-host network on one Linux box, made of network namespaces.

OneOS is a distributed system, and a single loopback interface hides most of
what goes wrong between machines: every process shares one address, nothing
can be unplugged, and no packet is ever lost.  :class:`Network` gives each
simulated machine ("host") its own network namespace, so its own interfaces,
routes, ports and firewall, all wired to one Linux bridge::

        switch namespace (oneos-<pid>-<n>-s)
        +---------------- br0 ----------------+
        |  h1 (veth)     h2 (veth)    ...      |
        +---|--------------|-------------------+
            |              |
          eth0           eth0                 one namespace per host,
        10.77.X.1      10.77.X.2              lo up, a private address

Rules this module keeps, because the box it runs on is shared:

* Nothing is added to the root network namespace: no address, no bridge, not
  even a transient veth (each pair is created inside the host namespace with
  its peer placed straight into the switch namespace).  Test traffic can only
  go to loopback or to addresses inside namespaces made here.
* Names are unique per process and per network (``oneos-<pid>-<n>-...``), so
  parallel runs, and several networks in one run, never collide.  The third
  octet of the subnet is derived from the pid as well; since every network has
  its own switch the subnets could not clash anyway, but distinct subnets make
  ``ip``/``tcpdump`` output from parallel runs easy to tell apart.
* Cleanup is total and idempotent: :meth:`Network.close` SIGKILLs every
  process still in any of its namespaces (not only the ones started through
  :meth:`Host.popen`: their children too) and deletes the namespaces, which
  deletes the veth ends with them.  It is also registered with :mod:`atexit`,
  and namespaces left behind by a run that was SIGKILLed (atexit cannot run)
  are swept when the next network is made on this machine, see
  :func:`sweep_stale`.

Faults are injected with ordinary tools: ``ip link set eth0 down`` for a
dead NIC (:meth:`Host.link_down`), iptables rules in the host's own
namespace (which affect only that namespace) for partitions
(:meth:`Host.drop_from`, :meth:`Host.cut`).

There is no pytest dependency here, so benchmarks can use it too; the pytest
fixture lives in ``tests/integration/conftest.py``.  Everything needs root.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "Host",
    "Network",
    "NetnsError",
    "available",
    "connects",
    "namespace_pids",
    "sweep_stale",
    "wait_port",
]

#: where ``ip netns add`` bind-mounts named namespaces
NETNS_DIR = Path("/run/netns")
#: every namespace made here starts with this, so sweeps never touch others'
PREFIX = "oneos-"
_NAME_RE = re.compile(r"^oneos-(\d+)-(\d+)-(s|h\d+)$")
#: the host-side veth end; a normal-looking NIC name for the programs inside
HOST_IFACE = "eth0"
#: the bridge inside the switch namespace
BRIDGE = "br0"
#: a /24 has 254 usable addresses; .1 .. .N are the hosts
MAX_HOSTS = 254
#: seconds close() waits for SIGKILLed processes to disappear
KILL_DEADLINE = 15.0
#: seconds any single ip/iptables invocation may take
TOOL_TIMEOUT = 30.0
#: setns(2)'s flag for a network namespace
CLONE_NEWNET = 0x40000000

NsIdentity = tuple[int, int]  # (st_dev, st_ino) of a namespace file


class NetnsError(RuntimeError):
    """A namespace operation failed (the message carries the tool's stderr)."""


# -- tools -----------------------------------------------------------------


def _tool(name: str) -> str | None:
    """Absolute path of *name*; also looks in the sbin directories a non-login PATH may lack."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = TOOL_TIMEOUT) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError as e:
        raise NetnsError(f"{argv[0]} not found") from e
    if check and result.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` failed with status {result.returncode}: {result.stderr.strip()}")
    return result


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run([_tool("ip") or "ip", *args], check=check)


# -- processes inside namespaces ---------------------------------------------


def _ns_identity(path: str) -> NsIdentity | None:
    """Identity of the namespace behind *path* (a /run/netns file or /proc/PID/ns/net), if any.

    Two paths name the same namespace exactly when their nsfs inode matches;
    this is the comparison ``ip netns pids`` makes.
    """
    try:
        st = os.stat(path)
    except OSError:  # gone, a zombie (no namespaces any more), or not ours to see
        return None
    return (st.st_dev, st.st_ino)


def _scan(idents: Mapping[NsIdentity, str]) -> list[tuple[int, NsIdentity]]:
    """(pid, namespace) of every process whose network namespace is one of *idents*."""
    me = os.getpid()
    found: list[tuple[int, NsIdentity]] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        ident = _ns_identity(f"/proc/{entry}/ns/net")
        if ident is not None and ident in idents:
            found.append((int(entry), ident))
    return found


def namespace_pids(name: str) -> list[int]:
    """Pids of the live processes in network namespace *name* (like ``ip netns pids NAME``)."""
    ident = _ns_identity(str(NETNS_DIR / name))
    if ident is None:
        return []
    return sorted(pid for pid, _ in _scan({ident: name}))


def _kill_in(pid: int, ident: NsIdentity) -> None:
    """SIGKILL *pid* only if it is still a process in namespace *ident*.

    Going through a pidfd closes the pid-reuse race: the namespace is checked
    after the pidfd pins the process, and the signal goes to that process or
    nowhere.
    """
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # already gone
        return
    try:
        if _ns_identity(f"/proc/{pid}/ns/net") == ident:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(fd)


def _kill_all(
    namespaces: Sequence[str], tracked: Callable[[], list[subprocess.Popen]], deadline: float = KILL_DEADLINE
) -> str | None:
    """SIGKILL everything in *namespaces* and every tracked child until none is left.

    Loops because a dying process may have forked just before; tracked
    children are killed by their Popen as well, since one that has not yet
    entered its namespace (still inside ``ip netns exec``) is not found by the
    scan.  Returns a description of survivors after *deadline*, else None.
    """
    idents = {ident: name for name in namespaces if (ident := _ns_identity(str(NETNS_DIR / name))) is not None}
    end = time.monotonic() + deadline
    while True:
        alive: list[str] = []
        for pid, ident in _scan(idents):
            _kill_in(pid, ident)
            alive.append(f"{pid} in {idents[ident]}")
        for p in tracked():
            if p.poll() is None:  # poll() also reaps the zombies of those already killed
                p.kill()
                argv = p.args  # Host.command's list: ip netns exec NAME program ...
                program = argv[4] if isinstance(argv, list) and len(argv) > 4 else argv
                alive.append(f"{p.pid} ({program!s})")
        if not alive:
            return None
        if time.monotonic() > end:
            return f"still running {deadline:g}s after SIGKILL: {', '.join(alive)}"
        time.sleep(0.02)  # polling interval while the kernel tears processes down


def _pid_alive(pid: int) -> bool:
    """Whether *pid* is a running (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X")


def _setns(fd: int, what: str) -> None:
    """setns(2) of the calling thread into the network namespace open at *fd* (the stdlib has no setns before 3.12)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise NetnsError(f"cannot {what}: setns failed: {os.strerror(errno)}")


def _list_namespaces() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except OSError:
        return []


_sweep_lock = threading.Lock()
_swept = False


def sweep_stale() -> list[str]:
    """Delete this harness's namespaces whose creating process is gone; return their names.

    atexit cannot run when a test run is SIGKILLed (or a CI job is
    cancelled), so its namespaces, and the runtimes still running inside
    them, would outlive it.  The pid in each name says who made it: if that
    process no longer runs, or is this very process before it made any
    network (the pid was reused), the namespace is stale.  Namespaces of
    other live runs are left alone.
    """
    me = os.getpid()
    ours = {name for net in list(_live) for name in net._namespaces}
    stale = []
    for name in _list_namespaces():
        match = _NAME_RE.match(name)
        if not match or name in ours:
            continue
        pid = int(match.group(1))
        if pid == me or not _pid_alive(pid):
            stale.append(name)
    if stale:
        _kill_all(stale, lambda: [])
        for name in stale:
            _ip("netns", "del", name, check=False)
    return stale


def _sweep_once() -> None:
    """Sweep before this process makes its first network (own-pid names are stale only then)."""
    global _swept
    with _sweep_lock:
        if not _swept:
            _swept = True
            sweep_stale()


# -- hosts and networks ------------------------------------------------------


class Host:
    """One simulated machine: a network namespace with ``lo`` and ``eth0`` up.

    Programs started through :meth:`popen` / :meth:`run` see only this
    host's interfaces, so they bind and connect exactly as on a separate
    machine reachable at :attr:`addr`.
    """

    def __init__(self, network: Network, index: int, name: str, addr: str) -> None:
        self.network = network
        #: 1-based position in the network
        self.index = index
        #: "h1".."hN", for messages and ids
        self.label = f"h{index}"
        #: the network namespace name (for ``ip netns exec`` / ``ip -n``)
        self.name = name
        #: this host's IPv4 address on the switch
        self.addr = addr
        #: the host-side veth end
        self.iface = HOST_IFACE
        self._procs: list[subprocess.Popen] = []
        self._rules: list[tuple[str, ...]] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Host {self.label} {self.addr} netns={self.name}>"

    # -- running programs --------------------------------------------------
    def command(self, argv: Sequence[str]) -> list[str]:
        """*argv* wrapped to run inside this host (``ip netns exec NAME argv...``).

        ``ip netns exec`` execs *argv* in place, so the pid of a process
        started with this command is the program's own pid.
        """
        return [_tool("ip") or "ip", "netns", "exec", self.name, *(str(a) for a in argv)]

    def popen(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stdout: Any = None,
        stderr: Any = None,
        **kwargs: Any,
    ) -> subprocess.Popen:
        """Start *argv* inside this host; :meth:`Network.close` kills it if it is still running.

        *env* replaces the environment as with :class:`subprocess.Popen`
        (None inherits ours).  stdin defaults to /dev/null so no child ever
        competes for the terminal; other keyword arguments go to Popen.
        """
        self.network._check_open()
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        process = subprocess.Popen(
            self.command(argv), env=None if env is None else dict(env), cwd=cwd, stdout=stdout, stderr=stderr, **kwargs
        )
        with self._lock:
            # forget children already reaped, so long benchmarks do not grow the list
            self._procs = [p for p in self._procs if p.returncode is None]
            self._procs.append(process)
        return process

    def run(
        self,
        argv: Sequence[str],
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        input: str | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run *argv* inside this host to completion; output is captured as text.

        On timeout the program is killed and :class:`subprocess.TimeoutExpired` raised.
        """
        self.network._check_open()
        return subprocess.run(
            self.command(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else dict(env),
            cwd=cwd,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            check=check,
        )

    def pids(self) -> list[int]:
        """Pids of every live process in this host, whoever started it."""
        return namespace_pids(self.name)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Move the calling thread into this host for the block: the sockets it opens there are this host's.

        So a test's own clients (``http.client``, a websocket) talk to a host's
        address exactly as a program on this host would, without a helper
        process.  Only the calling thread moves (a network namespace is per
        thread), and it moves back at the end; a socket keeps the namespace it
        was made in, so a connection opened inside can be used after the block.
        """
        self.network._check_open()
        with contextlib.ExitStack() as fds:
            home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            fds.callback(os.close, home)
            target = os.open(NETNS_DIR / self.name, os.O_RDONLY | os.O_CLOEXEC)
            fds.callback(os.close, target)
            _setns(target, f"enter {self.label}")
            try:
                yield
            finally:
                _setns(home, f"leave {self.label}")

    def _tracked(self) -> list[subprocess.Popen]:
        with self._lock:
            return list(self._procs)

    # -- fault injection ---------------------------------------------------
    def link_down(self) -> None:
        """Take this host's NIC down, like pulling its cable.

        The kernel removes the subnet route, so the host's own sends fail at
        once (ENETUNREACH) while its peers just stop hearing from it.  For a
        silent failure where both sides keep trying, use :meth:`cut`.
        """
        _ip("-n", self.name, "link", "set", self.iface, "down")

    def link_up(self) -> None:
        """Bring the NIC back (the address and subnet route return with it)."""
        _ip("-n", self.name, "link", "set", self.iface, "up")

    def drop_from(self, other: Host | str) -> None:
        """Silently drop every packet arriving from *other* (a Host or an address).

        An iptables INPUT rule inside this namespace, so it affects this host
        only.  TCP between the two stops in both directions (replies to this
        host are dropped too); datagrams this host sends still arrive.
        Idempotent.
        """
        self._add_rule(("INPUT", "-s", _addr_of(other), "-j", "DROP"))

    def undrop(self, other: Host | str) -> None:
        """Undo :meth:`drop_from` for *other*; a no-op if it was not dropped."""
        self._del_rule(("INPUT", "-s", _addr_of(other), "-j", "DROP"))

    def cut(self) -> None:
        """Partition this host from everyone: drop all traffic in and out except on ``lo``.

        Unlike :meth:`link_down` the link stays up, so nothing fails fast:
        connections just go silent until timeouts notice.  Idempotent.
        """
        for rule in _CUT_RULES:
            self._add_rule(rule)

    def heal(self) -> None:
        """Undo :meth:`cut` (rules added by :meth:`drop_from` stay)."""
        for rule in _CUT_RULES:
            self._del_rule(rule)

    def reset_faults(self) -> None:
        """Remove every rule this harness added here and bring the link up."""
        with self._lock:
            rules = list(self._rules)
        for rule in rules:
            self._del_rule(rule)
        self.link_up()

    def _iptables(self, *args: str) -> None:
        iptables = _tool("iptables")
        if iptables is None:
            raise NetnsError("iptables is not installed; packet-drop faults need it")
        # -w: wait for the xtables lock instead of failing when another run holds it
        _run(self.command([iptables, "-w", "10", *args]))

    def _add_rule(self, rule: tuple[str, ...]) -> None:
        with self._lock:
            if rule in self._rules:
                return
            self._iptables("-I", *rule)
            self._rules.append(rule)

    def _del_rule(self, rule: tuple[str, ...]) -> None:
        with self._lock:
            if rule not in self._rules:
                return
            self._iptables("-D", *rule)
            self._rules.remove(rule)


_CUT_RULES: tuple[tuple[str, ...], ...] = (
    ("INPUT", "!", "-i", "lo", "-j", "DROP"),
    ("OUTPUT", "!", "-o", "lo", "-j", "DROP"),
)


def _addr_of(other: Host | str) -> str:
    return other.addr if isinstance(other, Host) else str(other)


_seq = itertools.count()
_live: list[Network] = []
_live_lock = threading.Lock()


class Network:
    """A switch namespace holding a bridge, and *hosts* host namespaces wired to it.

    Use as a context manager, or call :meth:`close`; both are idempotent and
    atexit closes whatever is still open.  If building fails half-way, what
    was built is torn down before the error propagates.
    """

    def __init__(self, hosts: int = 3) -> None:
        if not 1 <= hosts <= MAX_HOSTS:
            raise ValueError(f"hosts must be 1..{MAX_HOSTS}, not {hosts}")
        _sweep_once()
        #: the process that made it; only that process may tear it down at exit
        self.owner = os.getpid()
        seq = next(_seq)
        #: common prefix of every namespace of this network
        self.id = f"{PREFIX}{self.owner}-{seq}"
        octet = (self.owner + seq) % 256
        #: the hosts' subnet, e.g. "10.77.42.0/24"
        self.subnet = f"10.77.{octet}.0/24"
        #: the namespace holding the bridge
        self.switch = f"{self.id}-s"
        self.hosts: list[Host] = []
        self._namespaces: list[str] = []
        self._closed = False
        self._lock = threading.Lock()
        with _live_lock:
            _live.append(self)
        try:
            self._build(hosts, f"10.77.{octet}")
        except BaseException:
            try:
                self.close()
            except Exception:
                pass  # the build error is the one worth reporting
            raise

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Network {self.id} {self.subnet} hosts={len(self.hosts)} {state}>"

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def namespaces(self) -> list[str]:
        """Every namespace name of this network, the switch first."""
        return list(self._namespaces)

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise NetnsError(f"network {self.id} is closed")

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)  # only after it exists, so close() deletes only what we made
        _ip("-n", name, "link", "set", "lo", "up")

    def _build(self, count: int, net: str) -> None:
        sw = self.switch
        self._add_namespace(sw)
        # STP is off by default; forward_delay 0 makes a port forward the moment it comes up,
        # so link_up() does not add a hidden delay of its own
        _ip("-n", sw, "link", "add", BRIDGE, "type", "bridge", "forward_delay", "0")
        _ip("-n", sw, "link", "set", BRIDGE, "up")
        # if br_netfilter is loaded, keep the switch a pure L2 switch.  The sysctl is per namespace
        # since Linux 5.3 (the root namespace keeps its value); older kernels only have it in the
        # root namespace, so there the write fails, harmlessly -- hence check=False
        _run(
            [_tool("ip") or "ip", "netns", "exec", sw, "sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=0"],
            check=False,
        )
        for index in range(1, count + 1):
            name = f"{self.id}-h{index}"
            port = f"h{index}"  # switch-side veth end; names are per namespace, so short is enough
            self._add_namespace(name)
            # created inside the host namespace with the peer moved straight into the switch:
            # the root namespace never sees either end
            _ip("-n", name, "link", "add", HOST_IFACE, "type", "veth", "peer", "name", port, "netns", sw)
            _ip("-n", sw, "link", "set", port, "master", BRIDGE)
            _ip("-n", sw, "link", "set", port, "up")
            addr = f"{net}.{index}"
            _ip("-n", name, "addr", "add", f"{addr}/24", "dev", HOST_IFACE)
            _ip("-n", name, "link", "set", HOST_IFACE, "up")
            self.hosts.append(Host(self, index, name, addr))

    def close(self) -> None:
        """Kill every process in the network's namespaces, then delete the namespaces.

        Safe to call more than once and from atexit.  Raises
        :class:`NetnsError` if something survived (a leak worth failing a
        test for), after having cleaned up all it could.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        problems: list[str] = []
        try:
            survivors = _kill_all(self._namespaces, lambda: [p for h in self.hosts for p in h._tracked()])
            if survivors:
                problems.append(survivors)
            for host in self.hosts:
                for p in host._tracked():
                    for stream in (p.stdin, p.stdout, p.stderr):
                        if stream is not None:
                            stream.close()
            for name in reversed(self._namespaces):
                result = _ip("netns", "del", name, check=False)
                if result.returncode != 0 and (NETNS_DIR / name).exists():
                    problems.append(f"cannot delete namespace {name}: {result.stderr.strip()}")
        finally:
            with _live_lock:
                if self in _live:
                    _live.remove(self)
        if problems:
            raise NetnsError(f"closing {self.id}: " + "; ".join(problems))


def _close_all() -> None:
    """atexit: close the networks this process still has open (never a parent's, after fork)."""
    for net in list(_live):
        if net.owner != os.getpid():
            continue
        try:
            net.close()
        except Exception as e:  # nothing to raise to at exit; say it
            print(f"oneos.testing.netns: cleanup of {net.id} failed: {e}", file=sys.stderr)


atexit.register(_close_all)


# -- probes ------------------------------------------------------------------

_CONNECT_ONCE = """\
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
except OSError as e:
    print(e, file=sys.stderr)
    sys.exit(1)
"""

_CONNECT_UNTIL = """\
import socket, sys, time
addr, port, end = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while True:
    try:
        socket.create_connection((addr, port), timeout=1.0).close()
        sys.exit(0)
    except OSError as e:
        last = e
    if time.monotonic() >= end:
        print(last, file=sys.stderr)
        sys.exit(1)
    time.sleep(0.05)
"""


def _python(script: str, *args: str) -> list[str]:
    # -I -S: no site, no user env -- starts fast and behaves the same everywhere
    return [sys.executable, "-I", "-S", "-c", script, *args]


def connects(host: Host, addr: str, port: int, timeout: float = 1.0) -> bool:
    """One TCP connect from inside *host* to *addr*:*port*: True if it was accepted.

    For negative checks (a dropped peer) as much as positive ones; a failure
    to run the probe at all raises instead of reading as "not reachable".
    """
    result = host.run(_python(_CONNECT_ONCE, addr, str(port), str(timeout)), timeout=timeout + TOOL_TIMEOUT)
    if result.returncode not in (0, 1):
        raise NetnsError(f"connect probe in {host.label} failed ({result.returncode}): {result.stderr.strip()}")
    return result.returncode == 0


def wait_port(
    host: Host, addr: str, port: int, deadline: float = 30.0, *, process: subprocess.Popen | None = None
) -> None:
    """Return once *addr*:*port* accepts TCP connections from inside *host*.

    Polls (a probe inside the namespace retries every 50 ms) until
    *deadline* seconds have passed, then raises :class:`TimeoutError`.  If
    *process* (the server being waited for) exits first, raises
    :class:`NetnsError` at once instead of waiting out the deadline.
    """
    prober = host.popen(
        _python(_CONNECT_UNTIL, addr, str(port), str(deadline)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    end = time.monotonic() + deadline + TOOL_TIMEOUT  # the probe enforces the deadline; this is a backstop
    try:
        while True:
            code = prober.poll()
            if code == 0:
                return
            if code is not None or time.monotonic() > end:
                err = (
                    prober.stderr.read().decode(errors="replace").strip() if code is not None and prober.stderr else ""
                )
                raise TimeoutError(
                    f"{addr}:{port} did not accept connections from {host.label} "
                    f"within {deadline:g}s (probe status {code}: {err})"
                )
            if process is not None and process.poll() is not None:
                raise NetnsError(
                    f"{process.args!r} exited with status {process.returncode} "
                    f"before {addr}:{port} accepted connections"
                )
            time.sleep(0.02)  # polling interval, not synchronisation: the probe's result decides
    finally:
        if prober.poll() is None:
            prober.kill()
            prober.wait()
        if prober.stderr is not None:
            prober.stderr.close()


# -- availability --------------------------------------------------------------

_availability: dict[bool, str | None] = {}


def available(iptables: bool = False) -> str | None:
    """None if this machine can run :class:`Network`, else why not (for a skip message).

    Checks the cheap things first (Linux, root, ``ip`` installed), then
    actually builds and tears down a one-host network, since containers may
    forbid namespaces or bridges even to root.  With *iptables*, also checks
    that iptables works inside a namespace (for :meth:`Host.drop_from` and
    :meth:`Host.cut`).  The answer is cached per process.
    """
    if iptables in _availability:
        return _availability[iptables]
    reason: str | None = None
    if not sys.platform.startswith("linux"):
        reason = "network namespaces need Linux"
    elif os.geteuid() != 0:
        reason = f"network namespaces need root (running as uid {os.geteuid()})"
    elif _tool("ip") is None:
        reason = "the iproute2 'ip' command is not installed"
    elif iptables and _tool("iptables") is None:
        reason = "iptables is not installed"
    else:
        try:
            with Network(hosts=1) as net:
                if iptables:
                    net.hosts[0]._iptables("-L", "INPUT", "-n")
        except Exception as e:
            reason = f"cannot build a namespace network here: {e}"
    _availability[iptables] = reason
    return reason
