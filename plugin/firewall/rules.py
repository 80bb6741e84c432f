"""pynet's iptables rules as data: records in, one rule set for all of pynet's chains out.

Pure functions, no I/O, so every option combination is unit-testable. The rules do what the
newest bridge driver's do (Docker 29), in chains of pynet's own, on every engine: dockerd's
chains differ per engine (20.10's isolation stages, 28's ``DOCKER-FORWARD``, 29's
``DOCKER-INTERNAL``, none at all with 29's nftables backend) and dockerd deletes, flushes and
reorders them, so pynet decides about its own bridges itself and never relies on a rule or a
chain policy it does not own.

The layout, per network (``BR`` its bridge):

* raw ``<P>-RAW`` (from ``PREROUTING``): a packet for the network's subnet that did not come
  from ``BR`` is dropped before any NAT or routing (Docker 28's direct-routing protection, per
  subnet instead of per container), unless it is for a host address or arrives on one of the
  network's trusted host interfaces; a packet from ``BR`` to 127.0.0.0/8 is dropped
  (``route_localnet=1`` on the bridge would otherwise let containers reach host services bound
  to loopback).
* filter ``<P>-FORWARD``, hooked right below ``DOCKER-USER`` and above all of dockerd's
  FORWARD rules: what enters ``BR`` (replies, published ports, same-network traffic if icc,
  and what the gateway mode opens, below) is accepted and everything else entering ``BR``
  dropped; internal networks drop whatever leaves them too.
* The data plane does not pay per network where pynet names the bridges (``pn-<id>``, unless
  ``com.docker.network.bridge.name`` says otherwise): both chains start with rules that match
  every such bridge by its name prefix (``-i pn-+``). In ``<P>-FORWARD`` replies and the rest
  of established connections into them are accepted at once (their first packet passed every
  check); only the internal networks' drops come before. In ``<P>-RAW`` loopback is dropped
  for all of them, and the rest of what they send returns at once: the subnet drops below are
  for packets from the host's other interfaces; a packet from one pynet bridge to another
  network enters that network's bridge only as ``<P>-FORWARD`` allows (a reply, a DNATed
  published port, what its gateway mode opens). Each network's own rules follow, oldest
  first, so a new network's are appended (iptables-nft inserts anywhere but at the ends only
  after reading the whole chain).
* filter ``<P>-EGRESS``, hooked right below dockerd's FORWARD jumps: what leaves ``BR`` for
  elsewhere is accepted there, after dockerd had its say, so Docker's own networks stay closed
  to pynet's containers as they are to each other (Docker 28+ drops what enters its bridges
  from elsewhere, and routing to its containers directly, itself).
* filter ``<P>-ISOLATION``, hooked into Docker's ``DOCKER-ISOLATION-STAGE-1`` where that
  exists (20.10, 28): dockerd evaluates it before any rule of its bridges, so what leaves a
  pynet bridge for another one goes through Docker's stage 2 (which drops it for Docker's
  bridges) unless it is a DNATed connection to a published port; what leaves an internal
  network is dropped there too. On 20.10 that jump comes before ``<P>-FORWARD``'s, so the chain
  starts by returning established connections into pynet-named bridges (their first packet
  passed it, and stage 2 drops only what enters Docker's bridges): else every packet would
  walk every network's rule there.
* nat: DNAT for published ports (for every source: pynet has no docker-proxy), masquerade.
  ``PREROUTING`` skips 127.0.0.0/8, so only the host itself reaches a port via loopback.

Gateway modes (``com.docker.network.bridge.gateway_mode_ipv4``/``_ipv6``, per IP version, as
the bridge driver since Docker 28): ``nat`` is all of the above. ``nat-unprotected`` keeps the
NAT but accepts whatever enters the bridge from elsewhere and has no direct-routing drop.
``routed`` has no NAT at all (no masquerade, no DNAT: a published port is the container's own
port, accepted from anywhere but its network), accepts ICMP into the bridge and has no
direct-routing drop; the rest entering the bridge is dropped. ``isolated`` is for internal
networks only, whose rules it does not change (the bridge has no address: the driver's doing).

IPv6 (ip6tables) gets the same chains, hooks and rules, rendered with ``family=6``, for the
networks that have an IPv6 subnet, the subnet and address rules from it and from the
endpoints' IPv6 addresses. A network without IPv6 has IPv6 turned off on its bridge (the
driver's doing: the host neither takes nor routes IPv6 there) and gets no IPv6 rules, unless
icc is off (bridged IPv6 between its containers, link-local: dockerd 28+ turns IPv6 off in
them, 20.10 does not, is dropped as IPv4 is) or its bridge is not named by pynet (a user's
bridge keeps IPv6 on: its rules drop what would enter it). The kernel never routes ::1 off
the host, so the loopback masquerade has no twin, and ::1 is not DNATed: host ::1 ->
published port is reset (Docker relays it with its docker-proxy; pynet has none, see
``ports``).
"""

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from plugin.hashing import HashedOnce
from plugin.netconfig import NetworkConfig
from plugin.options import NAT, NAT_UNPROTECTED, ROUTED
from plugin.store import DELETING, EndpointRecord, NetworkRecord

# Docker's chains that pynet's placement and rules refer to.
DOCKER_USER = "DOCKER-USER"
DOCKER_FORWARD = "DOCKER-FORWARD"  # 28 and 29 (iptables backend)
DOCKER_ISOLATION_1 = "DOCKER-ISOLATION-STAGE-1"  # 20.10 and 28
DOCKER_ISOLATION_2 = "DOCKER-ISOLATION-STAGE-2"
LOOPBACK = "127.0.0.0/8"
LOOPBACK_V6 = "::1/128"
LINK_LOCAL_V6 = "fe80::/10"
BRIDGE_PREFIX = "pn-"  # of the bridges pynet names (``-o com.docker.network.bridge.name`` aside)
ANY_BRIDGE = f"{BRIDGE_PREFIX}+"  # iptables' interface wildcard for all of them


def docker_iptables(filter_chains: Mapping[str, list[str]]) -> bool:
    """Whether dockerd keeps its iptables layout: FORWARD jumps into its chains."""
    forward = filter_chains.get("FORWARD", [])
    return any(f"-j {chain}" in forward for chain in (DOCKER_USER, DOCKER_FORWARD,
                                                       DOCKER_ISOLATION_1))


def docker_layout(filter_chains: Mapping[str, list[str]]) -> str:
    """Which engine's iptables layout dockerd keeps, from the jumps in the filter table (for
    logs and ``pynet status``; the rules depend only on whether the isolation stages exist).
    Jumps, not chains: an engine leaves its predecessor's chains behind when a host switches."""
    forward = filter_chains.get("FORWARD", [])
    if f"-j {DOCKER_ISOLATION_1}" in forward:
        return "Docker 20.10 iptables"
    if f"-j {DOCKER_FORWARD}" in forward:
        staged = f"-j {DOCKER_ISOLATION_1}" in filter_chains.get(DOCKER_FORWARD, [])
        return "Docker 28 iptables" if staged else "Docker 29 iptables"
    return "no Docker iptables chains (Docker's nftables backend, or dockerd's iptables off)"


@dataclass(frozen=True)
class Chains:
    """The names of one pynet instance's chains (the prefix keeps test instances apart)."""

    prefix: str

    @property
    def forward(self) -> str:
        return f"{self.prefix}-FORWARD"

    @property
    def egress(self) -> str:
        return f"{self.prefix}-EGRESS"

    @property
    def ports(self) -> str:
        return f"{self.prefix}-PORTS"

    @property
    def isolation(self) -> str:
        return f"{self.prefix}-ISOLATION"

    @property
    def raw(self) -> str:
        return f"{self.prefix}-RAW"

    @property
    def dnat(self) -> str:
        return f"{self.prefix}-DNAT"

    @property
    def postrouting(self) -> str:
        return f"{self.prefix}-POSTROUTING"

    def owned(self) -> dict[str, list[str]]:
        """Every chain pynet owns, per table."""
        return {"filter": [self.forward, self.egress, self.ports, self.isolation],
                "nat": [self.dnat, self.postrouting],
                "raw": [self.raw]}

    def retired(self) -> dict[str, list[str]]:
        """Chains earlier releases made (hooked into Docker's isolation stages): removed,
        with every jump to them, wherever they are found."""
        return {"filter": [f"{self.prefix}-ISOLATION-1", f"{self.prefix}-ISOLATION-2"]}


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class NetworkSpec(HashedOnce):
    """What the rules of one network depend on."""

    __hash__ = HashedOnce.hash_once

    bridge: str
    subnet: ipaddress.IPv4Network | None  # None: an IPv6-only network
    internal: bool = False
    icc: bool = True
    masquerade: bool = True
    trusted: tuple[str, ...] = ()  # host interfaces that may route to the containers
    subnet_v6: ipaddress.IPv6Network | None = None
    modes: tuple[str, str] = (NAT, NAT)  # gateway modes of IPv4, IPv6 (module docstring)

    def subnet_of(self, family: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        """The network's subnet of IP version ``family`` (None: it has none)."""
        return self.subnet if family == 4 else self.subnet_v6

    def mode(self, family: int) -> str:
        """The gateway mode of IP version ``family``."""
        return self.modes[0] if family == 4 else self.modes[1]

    def masquerades(self, family: int) -> bool:
        """Whether what leaves the network for elsewhere over ``family`` is masqueraded."""
        return self.masquerade and not self.internal and self.mode(family) != ROUTED


@dataclass(frozen=True)
class PortSpec:
    """One published port of a container on ``bridge``; ``host_ip`` None means every address
    (of ``container_ip``'s family)."""

    bridge: str
    container_ip: Address
    proto: str
    port: int
    host_ip: Address | None
    host_port: int
    icc: bool = True
    trusted: tuple[str, ...] = ()  # the network's trusted host interfaces
    routed: bool = False  # gateway mode routed: no host port, the container port is opened


@dataclass(frozen=True)
class Desired:
    """What pynet's records ask of any firewall backend: networks (oldest first) and the
    published ports of their endpoints."""

    networks: list[NetworkSpec]
    ports: list[PortSpec]


@functools.lru_cache(maxsize=8192)
def _network_spec(bridge: str, config: NetworkConfig) -> NetworkSpec:
    """A network's spec, one object per configuration: the store keeps each network's
    configuration object, so every change hands the backends the same spec objects, which
    their per-network caches (``nftables._network``) match without comparing fields."""
    return NetworkSpec(bridge, config.subnet, config.internal, config.enable_icc,
                       config.enable_ip_masquerade, config.trusted_host_interfaces,
                       config.subnet_v6, (config.gateway_mode_ipv4, config.gateway_mode_ipv6))


def desired_from_records(networks: Iterable[NetworkRecord],
                         endpoints: list[EndpointRecord]) -> Desired:
    """The firewall's input, from the records (those being deleted drop out)."""
    endpoints_of: dict[str, list[EndpointRecord]] = {}
    for endpoint in endpoints:
        endpoints_of.setdefault(endpoint.network_id, []).append(endpoint)
    specs: list[NetworkSpec] = []
    ports: list[PortSpec] = []
    for network in networks:
        if network.state == DELETING:
            continue
        config = network.config
        specs.append(_network_spec(network.bridge, config))
        for endpoint in endpoints_of.get(network.id, []):
            for p in endpoint.ports:
                host_ip = ipaddress.ip_address(p.host_ip)
                address = endpoint.address if host_ip.version == 4 else endpoint.address_v6
                if address is None:
                    continue  # never recorded: the driver publishes IPv6 only to IPv6 addresses
                ports.append(PortSpec(network.bridge, ipaddress.ip_interface(address).ip,
                                      p.proto, p.port,
                                      None if host_ip.is_unspecified else host_ip, p.host_port,
                                      config.enable_icc, config.trusted_host_interfaces,
                                      p.routed))
    return Desired(specs, ports)


@dataclass(frozen=True)
class Hook:
    """A jump from a built-in chain into one of pynet's chains.

    ``after``: chains whose jumps must come above it; ``before``: chains whose jumps must come
    below it. A hook that must move goes below the last ``after`` jump there is, past the bare
    jumps that follow it (but above any ``before`` jump); with ``last``, right below the last
    ``after`` jump (the end of the chain if there is none).
    """

    table: str
    chain: str
    rule: str  # exactly as iptables-save prints it, without "-A CHAIN"
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ()
    last: bool = False

    @property
    def target(self) -> str:
        return self.rule.split()[-1]


@dataclass
class RuleSet:
    """The full content of pynet's chains, the hooks that lead into them, and the chains of
    earlier releases to remove."""

    chains: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    hooks: list[Hook] = field(default_factory=list)
    retired: dict[str, list[str]] = field(default_factory=dict)


def _proto(proto: str, port: int, direction: str = "--dport") -> str:
    return f"-p {proto} -m {proto} {direction} {port}"


def _prefixed(bridge: str) -> bool:
    """Whether the shared rules at the top of pynet's chains (``ANY_BRIDGE``) cover it."""
    return bridge.startswith(BRIDGE_PREFIX)


# The top of <P>-FORWARD and <P>-RAW: what they decide for all bridges named pn-*. Only what
# enters them: what leaves them for elsewhere goes through dockerd's rules (its internal
# networks drop replies to them) before <P>-EGRESS accepts it.
_ESTABLISHED = f"-o {ANY_BRIDGE} -m conntrack --ctstate RELATED,ESTABLISHED"
FORWARD_HEAD = [f"{_ESTABLISHED} -j ACCEPT"]
ISOLATION_HEAD = [f"{_ESTABLISHED} -j RETURN"]  # see the module docstring


def loopback(family: int) -> str:
    """The loopback range of IP version ``family``."""
    return LOOPBACK if family == 4 else LOOPBACK_V6


def raw_head(family: int) -> list[str]:
    """The top of ``<P>-RAW`` (see the module docstring)."""
    lo = loopback(family)
    return [f"-s {lo} -i {ANY_BRIDGE} -j DROP", f"-d {lo} -i {ANY_BRIDGE} -j DROP",
            f"-i {ANY_BRIDGE} -j RETURN"]


RAW_HEAD = raw_head(4)


def host_route(ip: Address) -> str:
    """``ip`` as a one-address network (``/32``, ``/128``)."""
    return f"{ip}/{ip.max_prefixlen}"


def internal_drops(net: NetworkSpec) -> list[str]:
    """What crosses an internal network's bridge, dropped above everything else in
    ``<P>-FORWARD``: its containers' packets to a host address are DNATed to other networks'
    published ports, and the accepts below (published ports, the shared reply accept) would
    take them."""
    br = net.bridge
    return [f"-i {br} ! -o {br} -j DROP", f"! -i {br} -o {br} -j DROP"]


NEIGHBOUR_DISCOVERY = (135, 136)  # ICMPv6 neighbour solicitation and advertisement
ICMP = {4: "icmp", 6: "ipv6-icmp"}  # each family's ICMP, as iptables-save names it


def opened(net: NetworkSpec, family: int) -> list[str]:
    """What a network's gateway mode lets in from elsewhere beyond replies and published
    ports: everything in ``nat-unprotected``, ICMP in ``routed`` (its published ports are
    ``port_rules``'), nothing in ``nat``."""
    br, mode = net.bridge, net.mode(family)
    if mode == NAT_UNPROTECTED:
        return [f"! -i {br} -o {br} -j ACCEPT"]
    if mode == ROUTED:
        return [f"! -i {br} -o {br} -p {ICMP[family]} -j ACCEPT"]
    return []


def network_filter_rules(c: Chains, net: NetworkSpec, family: int = 4) -> list[str]:
    """The ``<P>-FORWARD`` rules of one network: what may enter its bridge, and for internal
    networks what may leave it. Each rule names the network's own bridge.

    With icc off, IPv6 neighbour discovery still passes between the bridge's ports, as ARP
    does for IPv4: a same-network peer's connection to a published port is DNATed back onto
    the bridge, and the two containers must find each other's MAC for it."""
    br = net.bridge
    if net.icc:
        intra = [f"-i {br} -o {br} -j ACCEPT"]
    elif family == 6 and not net.internal:
        intra = [f"-i {br} -o {br} -p ipv6-icmp -m icmp6 --icmpv6-type {kind} -j ACCEPT"
                 for kind in NEIGHBOUR_DISCOVERY]
    else:
        intra = []
    if net.internal:
        return [*intra, f"-o {br} -j DROP", f"-i {br} -j DROP"]
    replies = [] if _prefixed(br) else [
        f"-o {br} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]
    return [
        *replies,
        f"-o {br} -j {c.ports}",
        *opened(net, family),
        *intra,
        f"-o {br} -j DROP",
    ]


def network_raw_rules(net: NetworkSpec, family: int = 4) -> list[str]:
    """The ``<P>-RAW`` rules of one network (see the module docstring)."""
    br, subnet, lo = net.bridge, net.subnet_of(family), loopback(family)
    # Nothing legitimate enters a bridge from or for loopback; with route_localnet=1 the
    # kernel would otherwise take both.
    localnet = [] if net.internal or _prefixed(br) else [f"-s {lo} -i {br} -j DROP",
                                                         f"-d {lo} -i {br} -j DROP"]
    if subnet is None or net.mode(family) != NAT:  # the other modes are for direct routing
        return localnet
    trusted = [f"-d {subnet} -i {name} -j RETURN" for name in net.trusted]
    return [*localnet, *trusted,
            f"-d {subnet} ! -i {br} -m addrtype ! --dst-type LOCAL -j DROP"]


def isolation_rules(net: NetworkSpec) -> list[str]:
    """The ``<P>-ISOLATION`` rule of one network (engines with isolation stages)."""
    br = net.bridge
    if net.internal:
        return [f"-i {br} ! -o {br} -j DROP"]
    return [f"-i {br} ! -o {br} -m conntrack ! --ctstate DNAT -j {DOCKER_ISOLATION_2}"]


def port_rules(p: PortSpec) -> tuple[list[str], list[str], list[str]]:
    """(filter PORTS, nat DNAT, nat POSTROUTING) rules of one published port.

    The accept needs the connection to be DNATed: a packet routed to the container address
    directly is no use of the published port (Docker 28+ drops those too, in its raw table),
    unless it comes in on one of the network's trusted host interfaces. In gateway mode
    ``routed`` there is no NAT: the accept is for the container's own address and port.
    """
    match = _proto(p.proto, p.port)
    dnatted = "-m conntrack --ctstate DNAT -j ACCEPT"
    container = host_route(p.container_ip)
    if p.routed:  # reached at the container's own address, from anywhere but its network
        return [f"-d {container} ! -i {p.bridge} -o {p.bridge} {match} -j ACCEPT"], [], []
    accept = [f"-d {container} ! -i {p.bridge} -o {p.bridge} {match} {dnatted}"]
    accept += [f"-d {container} -i {name} -o {p.bridge} {match} -j ACCEPT"
               for name in p.trusted]
    if not p.icc:
        # Same-network peers still reach a published port through the host address.
        accept.append(f"-d {container} -i {p.bridge} -o {p.bridge} {match} {dnatted}")
    dest = f"-d {host_route(p.host_ip)} " if p.host_ip is not None else ""
    if p.container_ip.version == 4:
        source, to = "", str(p.container_ip)
    else:  # a link-local client cannot be answered from another link (Docker skips it too)
        source, to = f"! -s {LINK_LOCAL_V6} ", f"[{p.container_ip}]"
    dnat = [f"{source}{dest}{_proto(p.proto, p.host_port)} -j DNAT "
            f"--to-destination {to}:{p.port}"]
    hairpin = [f"-s {container} -d {container} {match} -j MASQUERADE"]
    return accept, dnat, hairpin


def render(c: Chains, networks: list[NetworkSpec], ports: list[PortSpec],
           docker_stages: bool, family: int = 4) -> RuleSet:
    """The complete rule set for ``networks`` (oldest first) and their published ``ports``,
    for iptables (``family`` 4) or ip6tables (6).

    ``docker_stages`` says whether dockerd's isolation stage chains exist (20.10, 28).

    A network's rules match only its bridge or subnet, so their order across networks does
    not matter; oldest first appends a new network's rules at the end of each chain, where
    iptables-nft adds without reading the chain (inserting at rule N reads all of it).
    """
    if family == 6:
        networks = [net for net in networks
                    if net.subnet_v6 is not None or not net.icc or not _prefixed(net.bridge)]
    forward: list[str] = [rule for net in networks if net.internal
                          for rule in internal_drops(net)] + FORWARD_HEAD
    egress: list[str] = []
    isolation: list[str] = list(ISOLATION_HEAD)
    raw: list[str] = raw_head(family)
    filter_ports: list[str] = []
    dnat: list[str] = []
    post: list[str] = []
    for net in networks:
        forward += network_filter_rules(c, net, family)
        raw += network_raw_rules(net, family)
        isolation += isolation_rules(net) if docker_stages else []
        if net.internal:
            continue
        egress.append(f"-i {net.bridge} -j ACCEPT")
        br, subnet = net.bridge, net.subnet_of(family)
        if net.masquerades(family) and subnet is not None:
            post.append(f"-s {subnet} ! -o {br} -j MASQUERADE")
        if family == 4 and net.mode(4) != ROUTED:
            # Host 127.0.0.1 -> published port leaves on the bridge with a source the
            # container cannot answer (routed: nothing is DNATed). Only loopback: a
            # connection from another host address keeps its source, as with Docker (its
            # OUTPUT DNAT, or its proxy for 127.0.0.1).
            post.append(f"-s {LOOPBACK} -o {br} -j MASQUERADE")
    for p in (p for p in ports if p.container_ip.version == family):
        accept, nat_dnat, nat_post = port_rules(p)
        filter_ports += accept
        dnat += nat_dnat
        post += nat_post
    # Two host bindings of one container port (-p 80 twice, on two host addresses) need the
    # same ACCEPT and hairpin rule; like Docker, keep one of each.
    rules = RuleSet()
    rules.chains["filter"] = {c.forward: forward, c.egress: egress,
                              c.ports: list(dict.fromkeys(filter_ports))}
    if docker_stages:
        rules.chains["filter"][c.isolation] = isolation
    rules.chains["nat"] = {c.dnat: dnat, c.postrouting: list(dict.fromkeys(post))}
    rules.chains["raw"] = {c.raw: raw}
    rules.hooks = hooks(c, docker_stages, family)
    rules.retired = c.retired()
    return rules


def hooks(c: Chains, docker_stages: bool = False, family: int = 4) -> list[Hook]:
    """The jumps into pynet's chains, each as iptables-save (``family`` 6: ip6tables-save)
    prints it."""
    stage = [Hook("filter", DOCKER_ISOLATION_1, f"-j {c.isolation}")] if docker_stages else []
    return [
        Hook("filter", "FORWARD", f"-j {c.forward}", after=(DOCKER_USER,),
             before=(DOCKER_FORWARD, c.egress)),
        Hook("filter", "FORWARD", f"-j {c.egress}",
             after=(DOCKER_USER, DOCKER_FORWARD, DOCKER_ISOLATION_1, c.forward), last=True),
        *stage,
        Hook("nat", "PREROUTING",
             f"! -d {loopback(family)} -m addrtype --dst-type LOCAL -j {c.dnat}"),
        Hook("nat", "OUTPUT", ("" if family == 4 else f"! -d {LOOPBACK_V6} ")
             + f"-m addrtype --dst-type LOCAL -j {c.dnat}"),
        Hook("nat", "POSTROUTING", f"-j {c.postrouting}"),
        Hook("raw", "PREROUTING", f"-j {c.raw}"),
    ]
