"""Which of a node's addresses to advertise (issue 10, item 6): only ones others can use.

- A wildcard listen address (``0.0.0.0``, ``::``) is not an address: it stands for every
  interface's, which is what is advertised (``expand_wildcards``).
- Loopback and private-range addresses (RFC 1918, CGNAT, link-local, IPv6 ULA) reach no one
  beyond this machine or LAN, so they are advertised only when the node has nothing better: no
  other direct address and no relayed one (a network of one machine, or of one LAN).
- Direct addresses of a node that AutoNAT found private (network/reachability.py) cannot be
  dialed from outside; its relayed addresses stand in for them.

Documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) count as public here: the
NAT tests build their "internet" from them. Pure, except ``interface_ips``.
"""

from __future__ import annotations

import ipaddress
from typing import Callable, Iterable

_LOCAL_NETS = [ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
    "::1/128", "fc00::/7", "fe80::/10",
)]


def interface_ips() -> list[str]:
    """This machine's interface addresses (IPv4 and IPv6, link-local IPv6 left out)."""
    import ifaddr

    out = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                out.append(ip.ip)
            elif not ip.ip[0].lower().startswith("fe80"):  # IPv6: (address, flowinfo, scope)
                out.append(ip.ip[0])
    return out


def _ip_of(addr: str) -> tuple[str, str] | None:
    parts = addr.split("/")
    if len(parts) > 2 and parts[1] in ("ip4", "ip6"):
        return parts[1], parts[2]
    return None


def expand_wildcards(addrs: Iterable[str], ips: Callable[[], list[str]] = interface_ips) -> list[str]:
    out: list[str] = []
    for addr in addrs:
        found = _ip_of(addr)
        if found is None or found[1] not in ("0.0.0.0", "::"):
            out.append(addr)
            continue
        family, wildcard = found
        rest = addr.split("/", 3)[3]
        for ip in ips():
            if (":" in ip) == (family == "ip6"):
                out.append(f"/{family}/{ip}/{rest}")
    return list(dict.fromkeys(out))


def is_local(addr: str) -> bool:
    found = _ip_of(addr)
    if found is None:
        return False  # a DNS name or another transport: someone chose to advertise it
    try:
        ip = ipaddress.ip_address(found[1])
    except ValueError:
        return False
    return ip.is_unspecified or any(ip in net for net in _LOCAL_NETS)


def advertised(listen: Iterable[str], circuits: Iterable[str], reachability: str,
               ips: Callable[[], list[str]] = interface_ips) -> list[str]:
    """The addresses to put in the capacity record, best first (see the module docstring)."""
    direct = expand_wildcards(listen, ips)
    public = [a for a in direct if not is_local(a)] if reachability != "private" else []
    chosen = public + list(circuits)
    return chosen or [a for a in direct if not _is_unspecified(a)]


def _is_unspecified(addr: str) -> bool:
    found = _ip_of(addr)
    return found is not None and found[1] in ("0.0.0.0", "::")
