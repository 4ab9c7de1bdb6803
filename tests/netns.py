"""Linux network namespaces for NAT tests (issue 10): a public segment, two homes behind NAT routers.

``nat_topology()`` builds the topology below, yields a ``Topology`` whose ``Netns`` handles run
commands (and pointillist processes) inside each namespace, and removes every namespace in a
``finally`` — veth pairs live only inside our namespaces, so deleting the namespaces deletes them.
Only documentation ranges are used (RFC 5737); no namespace has a route to anything else, so no
packet can leave::

    pub    203.0.113.1/24 on bridge br0 (the relay runs here)
    req    203.0.113.20/24, on br0: a public requester whose stateful firewall drops unsolicited
           inbound (like any laptop firewall): it can dial out, and cannot be dialed
    r1     WAN 203.0.113.11/24, LAN 192.0.2.1/24: a *symmetric* NAT (nft ``masquerade random``:
           each connection gets its own random external port) that drops unsolicited inbound
    home1  192.0.2.2/24, default route via r1: cannot be hole-punched
    r2     WAN 203.0.113.12/24, LAN 198.51.100.1/24: nft ``masquerade`` that keeps source ports
           (endpoint-independent mapping), drops unsolicited inbound (conntrack filtering): TCP
           simultaneous open from both listen ports gets through
    home2  198.51.100.2/24, default route via r2

Needs root, ``ip`` (iproute2) and ``nft`` (nftables; installed with apt-get when missing).
``Unavailable`` says why the topology cannot be built; tests turn it into a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

#: Every namespace this module makes is named PREFIX<pid>-<role>; <pid> is the creating process.
PREFIX = "ptnat"

PUBLIC_NET = "203.0.113"
RELAY_IP = f"{PUBLIC_NET}.1"
REQUESTER_IP = f"{PUBLIC_NET}.20"

# Unsolicited inbound is dropped on the WAN side of both routers (and at the requester); what a
# host inside sent out may come back (conntrack). nat: masquerade on the WAN.
_ROUTER_RULES = """
table ip nat {{
  chain post {{ type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" masquerade{random}
  }}
}}
table ip filter {{
  chain input {{ type filter hook input priority filter; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" drop
  }}
  chain forward {{ type filter hook forward priority filter; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" drop
  }}
}}
"""

_HOST_FIREWALL = """
table ip filter {
  chain input { type filter hook input priority filter; policy accept;
    iifname "lo" accept
    ct state established,related accept
    drop
  }
}
"""


class Unavailable(Exception):
    """Network namespaces cannot be used here (not root, no ip/nft, no kernel support)."""


@dataclass(frozen=True)
class Netns:
    """One namespace: ``wrap`` a command to run it inside."""

    name: str
    ip: str  # this namespace's main address

    def wrap(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: list[str], check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.wrap(argv), check=check, timeout=timeout, capture_output=True, text=True, **kw)

    def python(self, *args: str) -> list[str]:
        """This venv's Python inside the namespace (as a ``launcher``/argv prefix)."""
        return self.wrap([sys.executable, *args])

    def pids(self) -> list[int]:
        shown = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True, timeout=10)
        return [int(p) for p in shown.stdout.split()]


@dataclass
class Topology:
    pub: Netns
    req: Netns
    r1: Netns
    home1: Netns
    r2: Netns
    home2: Netns
    all: list[Netns] = field(default_factory=list)


def _sh(argv: list[str], input: str | None = None) -> None:
    done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")


def ensure_tools() -> None:
    """Root, ``ip`` and ``nft``; installs nftables with apt-get when ``nft`` is missing."""
    if os.geteuid() != 0:
        raise Unavailable("network namespaces need root (ip netns add, nft)")
    if sys.platform != "linux":
        raise Unavailable("network namespaces are Linux only")
    if shutil.which("ip") is None:
        raise Unavailable("the ip command (iproute2) is missing")
    if shutil.which("nft") is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            done = subprocess.run(["apt-get", "install", "-y", "nftables"], capture_output=True, text=True,
                                  timeout=300, env=env)
            if done.returncode != 0:  # a fresh machine may have no package lists yet
                subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, timeout=300, env=env)
                done = subprocess.run(["apt-get", "install", "-y", "nftables"], capture_output=True, text=True,
                                      timeout=300, env=env)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"nft is missing and apt-get install -y nftables could not run: {exc}") from exc
        if done.returncode != 0 or shutil.which("nft") is None:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
            raise Unavailable(f"nft is missing and apt-get install -y nftables failed: {tail[0]}")


def _ours(name: str) -> bool:
    return name.startswith(PREFIX)


def _list_ours() -> list[str]:
    shown = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return [line.split()[0] for line in shown.stdout.splitlines() if line.strip() and _ours(line.split()[0])]


def _pid_alive(pid: int) -> bool:
    from pointillist.node.node_file import pid_running

    return pid_running(pid)


def remove_stale() -> list[str]:
    """Delete namespaces an earlier run of this module left behind: named PREFIX<pid>-… for a
    <pid> that no longer exists. Namespaces of a live process (another test run) are left alone."""
    removed = []
    for name in _list_ours():
        digits = name[len(PREFIX):].split("-", 1)[0]
        if digits.isdigit() and int(digits) != os.getpid() and not _pid_alive(int(digits)):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
            removed.append(name)
    return removed


def _teardown(namespaces: list[Netns]) -> None:
    """Kill what still runs inside our namespaces (only processes this run put there), delete them."""
    import signal

    for ns in namespaces:
        for pid in ns.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for ns in namespaces:
        subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, timeout=10)


def remaining(namespaces: list[Netns]) -> list[str]:
    """Which of these namespaces still exist (after teardown: none)."""
    names = set(_list_ours())
    return [ns.name for ns in namespaces if ns.name in names]


@contextmanager
def nat_topology() -> Iterator[Topology]:
    """Build the topology (module docstring), yield it, and always remove it."""
    ensure_tools()
    remove_stale()
    base = f"{PREFIX}{os.getpid()}-"
    spec = {"pub": RELAY_IP, "req": REQUESTER_IP, "r1": f"{PUBLIC_NET}.11", "home1": "192.0.2.2",
            "r2": f"{PUBLIC_NET}.12", "home2": "198.51.100.2"}
    made: list[Netns] = []
    try:
        for role, ip in spec.items():
            ns = Netns(base + role, ip)
            try:
                _sh(["ip", "netns", "add", ns.name])
            except RuntimeError as exc:
                if not made:
                    raise Unavailable(f"cannot create a network namespace: {exc}") from exc
                raise
            made.append(ns)
            _sh(["ip", "-n", ns.name, "link", "set", "lo", "up"])
        topo = Topology(*made, all=made)
        _build(topo)
        yield topo
    finally:
        _teardown(made)
        left = remaining(made)
        if left:
            raise RuntimeError(f"network namespaces left behind: {left}")


def _veth(a: Netns, a_if: str, b: Netns, b_if: str) -> None:
    """A veth pair made inside ``a`` with its peer moved straight into ``b``: the root namespace
    never holds either end, so names cannot clash with anything outside our namespaces."""
    _sh(["ip", "-n", a.name, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name])


def _build(t: Topology) -> None:
    ip = lambda ns, *args: _sh(["ip", "-n", ns.name, *args])  # noqa: E731
    ip(t.pub, "link", "add", "br0", "type", "bridge")
    ip(t.pub, "addr", "add", f"{RELAY_IP}/24", "dev", "br0")
    ip(t.pub, "link", "set", "br0", "up")

    def on_bridge(ns: Netns, port: str, ifname: str, addr: str) -> None:
        _veth(ns, ifname, t.pub, port)
        ip(t.pub, "link", "set", port, "master", "br0", "up")
        ip(ns, "addr", "add", f"{addr}/24", "dev", ifname)
        ip(ns, "link", "set", ifname, "up")

    on_bridge(t.req, "p-req", "eth0", REQUESTER_IP)
    _sh(["ip", "netns", "exec", t.req.name, "nft", "-f", "-"], input=_HOST_FIREWALL)

    for router, home, lan_net, port, symmetric in ((t.r1, t.home1, "192.0.2", "p-r1", True),
                                                    (t.r2, t.home2, "198.51.100", "p-r2", False)):
        on_bridge(router, port, "wan", router.ip)
        _veth(router, "lan", home, "eth0")
        ip(router, "addr", "add", f"{lan_net}.1/24", "dev", "lan")
        ip(router, "link", "set", "lan", "up")
        ip(home, "addr", "add", f"{home.ip}/24", "dev", "eth0")
        ip(home, "link", "set", "eth0", "up")
        ip(home, "route", "add", "default", "via", f"{lan_net}.1")
        _sh(["ip", "netns", "exec", router.name, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
        _sh(["ip", "netns", "exec", router.name, "nft", "-f", "-"],
            input=_ROUTER_RULES.format(random=" random" if symmetric else ""))


def tcp_connect(ns: Netns, host: str, port: int, timeout_s: float = 3.0) -> str:
    """Try one TCP connection from inside ``ns``: 'connected', or why not ('timeout', 'refused',
    'unreachable: …')."""
    code = (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(({host!r}, {port}), timeout={timeout_s}).close(); print('connected')\n"
        "except socket.timeout: print('timeout')\n"
        "except ConnectionRefusedError: print('refused')\n"
        "except OSError as e: print('unreachable:', e)\n"
    )
    return ns.run([sys.executable, "-c", code], timeout=timeout_s + 30).stdout.strip()
