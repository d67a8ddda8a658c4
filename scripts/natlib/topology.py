"""The NAT lab's networks as data: who sits where, at which address, behind what.

Pure: no namespaces are made here. :func:`plan` turns the description into the
``ip``/``iptables``/``sysctl`` command lines that :mod:`natlib.netns` runs, so the
exact network a lab builds can be printed and tested without root.

The "internet" is one namespace, ``inet``, routing between two bridges:

* ``br-pub`` 203.0.113.0/24 (TEST-NET-3): public nodes, ``pubN`` at .10+N;
* ``br-isp`` 198.51.100.0/25 (TEST-NET-2): the WAN side of every home's router
  (or carrier router), home J at 198.51.100.(10+J).

Each home J is one of :data:`HOME_KINDS`:

``eim``       a router doing port-preserving MASQUERADE (endpoint-independent mapping,
              the common home router); one node at 192.168.J.10
``adpm``      MASQUERADE ``--random-fully`` (address-and-port-dependent mapping, the
              "symmetric" NAT); one node
``firewall``  no NAT: the node has a routable address (198.51.100.128+16m /28) and the
              router drops new inbound connections
``cgnat``     two NATs in series: the home router (port-preserving) on 100.64.J.0/24
              (RFC 6598 shared space) behind a carrier router (port-preserving)
``lan``       a port-preserving NAT router with two nodes on one LAN, 192.168.J.10 and .11

Every router forwards what its inside starts and the replies (conntrack
ESTABLISHED,RELATED) and drops every other forwarded packet. The internet routes
each home's inside prefixes to its router, as a neighbour on the ISP's network
could: nothing but the router's rules keeps an inbound connection out, so the lab
proves those rules, not a missing route.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

HOME_KINDS = ("eim", "adpm", "firewall", "cgnat", "lan")
PORT = 4001
PUBLIC_NET, PUBLIC_GW = "203.0.113", "203.0.113.1"
ISP_NET, ISP_GW = "198.51.100", "198.51.100.1"
MAX_HOMES = 100  # 198.51.100.(10+J) must stay inside the /25
MAX_FIREWALLS = 8  # /28s in 198.51.100.128/25


@dataclasses.dataclass(frozen=True, slots=True)
class LabNode:
    """One node: its namespace, the address it listens on, and the address the internet
    sees its connections come from (its own when public or firewalled, else its outermost
    NAT's)."""

    name: str
    kind: str  # "public" or a home kind
    namespace: str
    address: str
    public_address: str
    home: int | None  # the home's index, None for a public node

    @property
    def listen(self) -> str:
        return f"/ip4/{self.address}/tcp/{PORT}"

    @property
    def natted(self) -> bool:
        return self.kind not in ("public", "firewall")


@dataclasses.dataclass(frozen=True, slots=True)
class Home:
    """One home network: its router (and carrier router for ``cgnat``) and its nodes."""

    index: int
    kind: str
    router: str  # namespace
    carrier: str | None  # namespace of the carrier-grade NAT, for cgnat
    wan_address: str  # the router's (or carrier's) address on the ISP bridge
    inside: tuple[str, ...]  # prefixes routed to this home (CIDR)
    nodes: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Topology:
    prefix: str
    nodes: tuple[LabNode, ...]
    homes: tuple[Home, ...]
    routers: str = "drop"  # what a router does with a connection to itself it did not expect

    @property
    def inet(self) -> str:
        return f"{self.prefix}inet"

    @property
    def namespaces(self) -> list[str]:
        """Every namespace, in creation order (the internet first)."""
        names = [self.inet]
        for home in self.homes:
            names += [ns for ns in (home.carrier, home.router) if ns]
        return names + [n.namespace for n in self.nodes]

    def node(self, name: str) -> LabNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def bootstrap(self) -> LabNode:
        """The first public node: every other node joins through it."""
        return next(n for n in self.nodes if n.kind == "public")

    def same_lan(self, a: LabNode, b: LabNode) -> bool:
        return a.home is not None and a.home == b.home

    def seen_from(self, viewer: LabNode, other: LabNode) -> str:
        """The address ``viewer`` sees a connection from ``other`` come from."""
        return other.address if self.same_lan(viewer, other) else other.public_address

    def unambiguous(self, viewer: LabNode, other: LabNode) -> bool:
        """Whether no third node shares the address ``viewer`` sees ``other`` at (two
        nodes behind one NAT look alike from outside)."""
        seen = self.seen_from(viewer, other)
        return not any(self.seen_from(viewer, n) == seen
                       for n in self.nodes if n.name not in (viewer.name, other.name))


ROUTERS = ("drop", "reject")


def build(prefix: str, kinds: Sequence[str] = HOME_KINDS, public: int = 1,
          routers: str = "drop") -> Topology:
    """A lab of ``public`` public nodes (at least one: the bootstrap) and one home of
    each of ``kinds`` (repeats allowed); ValueError for an unknown kind or too many.

    ``routers``: what a home (or carrier) router does with an unexpected TCP connection
    to its own public address: ``drop`` it silently (most home routers) or ``reject``
    it with a reset (Linux's default with no rule, OpenWrt's WAN zone). Hole punching
    depends on it: a reset kills the punch unless the two SYNs cross in flight, which
    in a lab with no link delay they hardly ever do."""
    if routers not in ROUTERS:
        raise ValueError(f"routers must be one of {', '.join(ROUTERS)}")
    unknown = sorted(set(kinds) - set(HOME_KINDS))
    if unknown:
        raise ValueError(f"unknown home kind(s) {', '.join(unknown)}; known: {', '.join(HOME_KINDS)}")
    if public < 1 or public > 100:
        raise ValueError("between 1 and 100 public nodes")
    if len(kinds) > MAX_HOMES or list(kinds).count("firewall") > MAX_FIREWALLS:
        raise ValueError(f"at most {MAX_HOMES} homes, {MAX_FIREWALLS} of them firewalls")
    nodes = [LabNode(f"pub{i}", "public", f"{prefix}pub{i}", f"{PUBLIC_NET}.{10 + i}",
                     f"{PUBLIC_NET}.{10 + i}", None) for i in range(public)]
    homes = []
    firewalls = 0
    for j, kind in enumerate(kinds, start=1):
        wan = f"{ISP_NET}.{10 + j}"
        router = f"{prefix}r{j}"
        if kind == "firewall":
            base = 128 + 16 * firewalls
            firewalls += 1
            addr = f"{ISP_NET}.{base + 2}"
            nodes.append(LabNode(f"fw{j}", kind, f"{prefix}h{j}", addr, addr, j))
            homes.append(Home(j, kind, router, None, wan, (f"{ISP_NET}.{base}/28",), (f"fw{j}",)))
            continue
        names = [f"{kind}{j}a", f"{kind}{j}b"] if kind == "lan" else [f"{kind}{j}"]
        for k, name in enumerate(names):
            suffix = "ab"[k] if kind == "lan" else ""
            nodes.append(LabNode(name, kind, f"{prefix}h{j}{suffix}", f"192.168.{j}.{10 + k}", wan, j))
        carrier = f"{prefix}c{j}" if kind == "cgnat" else None
        inside = (f"192.168.{j}.0/24",) + ((f"100.64.{j}.0/24",) if carrier else ())
        homes.append(Home(j, kind, router, carrier, wan, inside, tuple(names)))
    return Topology(prefix, tuple(nodes), tuple(homes), routers)


# ------------------------------------------------------------------------------ the plan


def _ip(ns: str, *args: str) -> list[str]:
    return ["ip", "-n", ns, *args]


def _exec(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *args]


def _link(a: str, a_if: str, b: str, b_if: str) -> list[list[str]]:
    """A veth pair made inside namespace ``a`` with its peer moved straight into ``b``:
    no interface ever exists in the caller's namespace, so two labs cannot collide."""
    return [_ip(a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b)]


def _host(ns: str, addr: str, plen: int, gateway: str) -> list[list[str]]:
    return [_ip(ns, "addr", "add", f"{addr}/{plen}", "dev", "eth0"),
            _ip(ns, "link", "set", "eth0", "up"),
            _ip(ns, "route", "add", "default", "via", gateway)]


def _router_rules(ns: str, wan: str, lan: str, masquerade: str | None,
                  drop: bool = True) -> list[list[str]]:
    """What a home router does: forward what the inside starts and the replies; drop every
    other forwarded packet; NAT outbound on ``wan`` when ``masquerade`` is given
    ("" for port-preserving, "--random-fully" for randomised ports); with ``drop``, also
    drop new TCP connections to the router itself from ``wan`` (else the kernel resets them)."""
    ipt = _exec(ns, "iptables", "-w")
    cmds = [_exec(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"),
            ipt + ["-P", "FORWARD", "DROP"],
            ipt + ["-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
            ipt + ["-A", "FORWARD", "-i", lan, "-o", wan, "-j", "ACCEPT"],
            # bridged LAN traffic passes FORWARD where br_netfilter is loaded: keep the LAN open
            ipt + ["-A", "FORWARD", "-i", lan, "-o", lan, "-j", "ACCEPT"]]
    if masquerade is not None:
        cmds.append(ipt + ["-t", "nat", "-A", "POSTROUTING", "-o", wan, "-j", "MASQUERADE",
                           *([masquerade] if masquerade else [])])
    if drop:
        cmds.append(ipt + ["-A", "INPUT", "-i", wan, "-p", "tcp", "-m", "conntrack", "--ctstate", "NEW",
                           "-j", "DROP"])
    return cmds


def _bridge(ns: str, name: str, addr: str) -> list[list[str]]:
    return [_ip(ns, "link", "add", name, "type", "bridge"),
            _ip(ns, "addr", "add", addr, "dev", name),
            _ip(ns, "link", "set", name, "up")]


def plan(topo: Topology) -> list[list[str]]:
    """Every command that builds ``topo`` once its namespaces exist (``ip netns add`` of
    :attr:`Topology.namespaces` comes first, made by the builder, which owns clean-up)."""
    inet = topo.inet
    cmds: list[list[str]] = [_ip(ns, "link", "set", "lo", "up") for ns in topo.namespaces]
    cmds += [_exec(inet, "sysctl", "-qw", "net.ipv4.ip_forward=1")]
    cmds += _bridge(inet, "br-pub", f"{PUBLIC_GW}/24") + _bridge(inet, "br-isp", f"{ISP_GW}/25")
    for i, node in enumerate(n for n in topo.nodes if n.kind == "public"):
        cmds += _link(inet, f"p{i}", node.namespace, "eth0")
        cmds += [_ip(inet, "link", "set", f"p{i}", "master", "br-pub", "up")]
        cmds += _host(node.namespace, node.address, 24, PUBLIC_GW)
    by_name = {n.name: n for n in topo.nodes}
    for home in topo.homes:
        outer = home.carrier or home.router
        cmds += _link(inet, f"w{home.index}", outer, "wan")
        cmds += [_ip(inet, "link", "set", f"w{home.index}", "master", "br-isp", "up"),
                 _ip(outer, "addr", "add", f"{home.wan_address}/25", "dev", "wan"),
                 _ip(outer, "link", "set", "wan", "up"),
                 _ip(outer, "route", "add", "default", "via", ISP_GW)]
        cmds += [_ip(inet, "route", "add", prefix, "via", home.wan_address) for prefix in home.inside]
        if home.carrier:
            cpe = f"100.64.{home.index}"
            cmds += _link(home.carrier, "cpe", home.router, "wan")
            cmds += [_ip(home.carrier, "addr", "add", f"{cpe}.1/24", "dev", "cpe"),
                     _ip(home.carrier, "link", "set", "cpe", "up"),
                     _ip(home.carrier, "route", "add", f"192.168.{home.index}.0/24", "via", f"{cpe}.2"),
                     _ip(home.router, "addr", "add", f"{cpe}.2/24", "dev", "wan"),
                     _ip(home.router, "link", "set", "wan", "up"),
                     _ip(home.router, "route", "add", "default", "via", f"{cpe}.1")]
            cmds += _router_rules(home.carrier, "wan", "cpe", "", topo.routers == "drop")
        first = by_name[home.nodes[0]]
        plen = 28 if home.kind == "firewall" else 24
        gateway = _gateway(first.address, plen)
        cmds += _bridge(home.router, "lan", f"{gateway}/{plen}")
        masquerade = {"eim": "", "lan": "", "cgnat": "", "adpm": "--random-fully"}.get(home.kind)
        cmds += _router_rules(home.router, "wan", "lan", masquerade, topo.routers == "drop")
        for k, name in enumerate(home.nodes):
            node = by_name[name]
            cmds += _link(home.router, f"h{k}", node.namespace, "eth0")
            cmds += [_ip(home.router, "link", "set", f"h{k}", "master", "lan", "up")]
            cmds += _host(node.namespace, node.address, plen, gateway)
    return cmds


def _gateway(address: str, plen: int) -> str:
    """The first host address of ``address``'s /24 or /28: the router's LAN side."""
    parts = [int(p) for p in address.split(".")]
    size = 1 << (32 - plen)
    parts[3] = parts[3] // size * size + 1
    return ".".join(map(str, parts))


def nat_pair(a: LabNode, b: LabNode) -> str:
    """The pair's NAT types, sorted: ``"eim-public"``, ``"adpm-cgnat"``, ``"lan-lan"`` ..."""
    return "-".join(sorted((a.kind, b.kind)))


def pairs(nodes: Iterable[LabNode]) -> list[tuple[LabNode, LabNode]]:
    listed = list(nodes)
    return [(a, b) for i, a in enumerate(listed) for b in listed[i + 1:]]
