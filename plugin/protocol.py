"""The remote-driver JSON shapes: one validated type per request, built before any work starts,
and one function per reply shape.

This is the only module that knows field names of the libnetwork remote protocol. Everything it
returns is checked: ids are hex, addresses parse, ports are in range. Validation happens here so a
refused request cannot leave anything half-built behind.
"""

import base64
import functools
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from plugin.errors import InvalidRequest
from plugin.options import (
    BRIDGE_NAME,
    ENABLE_ICC,
    ENABLE_IP_MASQUERADE,
    HOST_BINDING_IPV4,
    IFACE_PREFIX,
    INHIBIT_IPV4,
    MTU,
    NetworkOptions,
    parse_network_options,
)

ID_LENGTH = 64  # dockerd's network and endpoint ids: 64 lower-case hex digits
_ID = re.compile(f"[0-9a-f]{{{ID_LENGTH}}}")
# Options whose values reach netlink, sysctl paths or iptables rules. No valid value of any of
# them holds whitespace, quotes, ';', '%', backslashes or non-ASCII, so it is refused here,
# whatever its parser would make of it (Python's int() accepts " 1400\n" and "١٤٠٠").
_KERNEL_OPTIONS = (BRIDGE_NAME, ENABLE_ICC, ENABLE_IP_MASQUERADE, HOST_BINDING_IPV4,
                   INHIBIT_IPV4, MTU, IFACE_PREFIX)
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.:+-]*")
PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}

PORTMAP = "com.docker.network.portmap"
EXPOSED_PORTS = "com.docker.network.endpoint.exposedports"
MAC_OPTION = "com.docker.network.endpoint.macaddress"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# Ranges no pool may overlap. pynet puts the gateway on the bridge with the pool's prefix, so the
# host gets a route for the whole pool: one of these would take addresses the host itself needs
# (its loopback, link-local services such as cloud metadata, multicast, its default route) and
# send them to the bridge. Docker's own address pools lie outside all of them.
FORBIDDEN_POOLS: tuple[tuple[Network, str], ...] = tuple(
    (ipaddress.ip_network(cidr), reason) for cidr, reason in (
        ("0.0.0.0/8", "'this network', the source of hosts without an address yet"),
        ("127.0.0.0/8", "loopback, the host's own addresses"),
        ("169.254.0.0/16", "link-local, where hosts reach services such as cloud metadata"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved, including the broadcast address 255.255.255.255"),
        ("::/128", "the unspecified address"),
        ("::1/128", "loopback, the host's own address"),
        ("fe80::/10", "link-local, which every IPv6 interface uses for neighbour discovery"),
        ("ff00::/8", "multicast"),
    )
)
_POOL_ADVICE = ("use a private range such as 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or "
                "fd00::/8, or leave --subnet out and let dockerd pick one")


def _field(body: dict[str, Any], name: str, kind: type, default: Any = ...) -> Any:
    """Fetch ``body[name]`` and check its JSON type; missing fields take ``default`` if given."""
    if name not in body or body[name] is None:
        if default is ...:
            raise InvalidRequest(f"request is missing the field {name}")
        return default
    value = body[name]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise InvalidRequest(f"field {name} must be a {kind.__name__}, got {value!r:.80}")
    return value


def _object(body: Any, what: str = "request body") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest(f"{what} must be a JSON object, got {type(body).__name__}")
    return body


def _id(body: dict[str, Any], name: str) -> str:
    value = _field(body, name, str)
    if not _ID.fullmatch(value):
        raise InvalidRequest(f"{name} {value!r:.80} is not a 64-character lowercase hex id")
    return value


def _unscoped(value: str, name: str) -> str:
    """Refuse IPv6 zone ids: ``ipaddress`` takes anything after '%' (spaces, quotes, ';'),
    and no address dockerd sends has one."""
    if "%" in value:
        raise InvalidRequest(f"{name} {value!r:.80} has a zone id ('%...'); give a plain address")
    return value


def _interface(value: str, name: str) -> Interface:
    try:
        return ipaddress.ip_interface(_unscoped(value, name))
    except ValueError:
        raise InvalidRequest(f"{name} {value!r:.80} is not an address in CIDR form") from None


def _plain_options(options: dict[str, Any]) -> dict[str, Any]:
    """Refuse values of kernel-facing options that no valid value looks like (see above)."""
    generic = options.get("com.docker.network.generic")
    if isinstance(generic, dict):
        for key in _KERNEL_OPTIONS:
            value = generic.get(key)
            if isinstance(value, str) and not _PLAIN_VALUE.fullmatch(value):
                raise InvalidRequest(f"option {key} has the value {value!r:.80}, which holds "
                                     "characters no valid value has (whitespace, quotes, ';', "
                                     "non-ASCII...); give a plain value")
    return options


def span(network: Network) -> tuple[int, int]:
    """A network's first and last address as integers: CreateNetwork compares a new pool
    with every recorded network, and ``ipaddress`` compares objects."""
    return int(network.network_address), int(network.broadcast_address)


@dataclass(frozen=True)
class IPAMData:
    """One IPAM pool as dockerd sends it; the gateway keeps the pool's prefix length."""

    pool: Network
    gateway: Interface | None
    aux_addresses: dict[str, Interface]
    address_space: str = ""  # "LocalDefault": dockerd's own IPAM, which never overlaps pools
    aux_prefixed: frozenset[str] = frozenset()  # aux addresses sent with a prefix length

    @functools.cached_property
    def span(self) -> tuple[int, int]:
        """The pool's first and last address as integers (``span``)."""
        return span(self.pool)

    def check_host_safety(self) -> None:
        """Refuse a pool or gateway that would take addresses or routes from the host."""
        check_pool_is_safe(self.pool)
        if self.gateway is not None:
            _check_pool_prefix(self.gateway, "Gateway", self.pool)
        for key in self.aux_prefixed:
            _check_pool_prefix(self.aux_addresses[key], f"aux address {key!r:.80}", self.pool)


def check_pool_is_safe(pool: Network) -> Network:
    """Refuse a pool whose route would take over addresses the host needs (FORBIDDEN_POOLS),
    or, with prefix length 0, every address including the default route."""
    if pool.prefixlen == 0:
        raise InvalidRequest(f"Pool {pool} is the whole IPv{pool.version} address space: its "
                             f"route on the bridge would replace the host's default route; "
                             f"{_POOL_ADVICE}")
    for forbidden, reason in FORBIDDEN_POOLS:
        if pool.version == forbidden.version and pool.overlaps(forbidden):
            raise InvalidRequest(f"Pool {pool} overlaps {forbidden} ({reason}): its route on "
                                 f"the bridge would take those addresses from the host; "
                                 f"{_POOL_ADVICE}")
    return pool


def _check_pool_prefix(address: Interface, name: str, pool: Network) -> Interface:
    """Refuse an address whose prefix length is not its pool's: the gateway goes on the bridge
    as given, and "10.9.0.1/1" would route 0.0.0.0/1, half the Internet, to the bridge."""
    if address.network.prefixlen != pool.prefixlen:
        raise InvalidRequest(
            f"{name} {str(address)!r} has prefix length /{address.network.prefixlen} but its pool "
            f"{pool} has /{pool.prefixlen}; give it with the pool's prefix, as dockerd does: "
            f"{address.ip}/{pool.prefixlen}")
    return address


def _pool(text: str, version: int) -> Network:
    try:
        pool = ipaddress.ip_network(_unscoped(text, "Pool"))
    except ValueError:
        raise InvalidRequest(f"Pool {text!r:.80} is not a network in CIDR form") from None
    if pool.version != version:
        raise InvalidRequest(f"Pool {text!r} is not an IPv{version} network")
    return pool


def _gateway(text: str, pool: Network) -> Interface:
    gateway = _interface(text, "Gateway")
    if gateway.ip not in pool:
        raise InvalidRequest(f"Gateway {text!r} is outside the pool {pool}")
    return gateway


def _aux_address(key: str, text: Any, pool: Network) -> Interface:
    """dockerd sends aux addresses with the pool's prefix; a bare address is taken as it is,
    since only its address is used."""
    name = f"aux address {key!r:.80}"
    if not isinstance(text, str):
        raise InvalidRequest(f"{name} must be a string, got {text!r:.80}")
    return _interface(text, name)


def _ipam(entry: Any, version: int) -> IPAMData:
    entry = _object(entry, "an IPAM data entry")
    pool = _pool(_field(entry, "Pool", str), version)
    gateway_text = _field(entry, "Gateway", str, "")
    gateway = _gateway(gateway_text, pool) if gateway_text else None
    given = _field(entry, "AuxAddresses", dict, {})
    aux = {key: _aux_address(key, text, pool) for key, text in given.items()}
    return IPAMData(pool=pool, gateway=gateway, aux_addresses=aux,
                    address_space=_field(entry, "AddressSpace", str, ""),
                    aux_prefixed=frozenset(k for k, text in given.items() if "/" in text))


@dataclass(frozen=True)
class CreateNetwork:
    """``/NetworkDriver.CreateNetwork``."""

    network_id: str
    options: NetworkOptions
    ipv4: IPAMData | None  # None: an IPv6-only network (--ipv4=false, Docker 28+)
    ipv6: IPAMData | None

    @classmethod
    def parse(cls, body: Any) -> "CreateNetwork":
        body = _object(body)
        network_id = _id(body, "NetworkID")
        raw_options = _field(body, "Options", dict, {})
        options = parse_network_options(_plain_options(raw_options))
        v4 = [_ipam(e, 4) for e in _field(body, "IPv4Data", list, [])]
        v6 = [_ipam(e, 6) for e in _field(body, "IPv6Data", list, [])]
        if len(v4) > 1 or not v4 and not v6:
            raise InvalidRequest(
                f"pynet needs exactly one IPv4 pool, got {len(v4)}: "
                "bridge driver doesn't support multiple subnets; give one --subnet"
            )
        if len(v6) > 1:
            raise InvalidRequest(
                f"pynet supports one IPv6 pool, got {len(v6)}: give at most one IPv6 --subnet"
            )
        main = (v4 or v6)[0]  # the family containers route through
        if main.gateway is None and not options.internal:
            raise InvalidRequest(f"pool {main.pool} has no gateway; give --gateway")
        return cls(network_id, options, v4[0] if v4 else None, v6[0] if v6 else None)

    @property
    def address_space(self) -> str:
        """The IPAM address space of the network's pools (IPv4's, else IPv6's)."""
        pool = self.ipv4 or self.ipv6
        return pool.address_space if pool else ""

    def check_host_safety(self) -> None:
        """For a new network (not a stored one: what an earlier release accepted and built
        must go on parsing): refuse pools and gateways that would take from the host."""
        for ipam in (self.ipv4, self.ipv6):
            if ipam is not None:
                ipam.check_host_safety()


@dataclass(frozen=True)
class GwAllocCheck:
    """``/NetworkDriver.GwAllocCheck`` (Docker 28+, asked before dockerd allocates a network's
    addresses): the options CreateNetwork will carry."""

    options: NetworkOptions

    @classmethod
    def parse(cls, body: Any) -> "GwAllocCheck":
        raw = _field(_object(body), "Options", dict, {})
        return cls(parse_network_options(_plain_options(raw)))


@dataclass(frozen=True)
class NetworkRef:
    """Requests that name only a network (DeleteNetwork, FreeNetwork)."""

    network_id: str

    @classmethod
    def parse(cls, body: Any) -> "NetworkRef":
        return cls(_id(_object(body), "NetworkID"))


@dataclass(frozen=True)
class EndpointRef:
    """Requests that name a network and an endpoint (Leave, DeleteEndpoint, OperInfo, Revoke)."""

    network_id: str
    endpoint_id: str

    @classmethod
    def parse(cls, body: Any) -> "EndpointRef":
        body = _object(body)
        return cls(_id(body, "NetworkID"), _id(body, "EndpointID"))


@dataclass(frozen=True)
class PortBinding:
    """One ``-p`` binding; ``host_port`` 0 means "pick an ephemeral port"."""

    proto: str
    port: int
    host_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    host_port: int
    host_port_end: int


def _port(entry: dict[str, Any], name: str, allow_zero: bool) -> int:
    value = _field(entry, name, int, 0)
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        raise InvalidRequest(f"{name} {value} is out of range {low}..65535")
    return value


def _proto(entry: dict[str, Any]) -> str:
    number = _field(entry, "Proto", int)
    if number not in PROTOCOLS:
        raise InvalidRequest(
            f"protocol number {number} is not supported: use tcp (6), udp (17) or sctp (132)"
        )
    return PROTOCOLS[number]


def _binding(entry: Any) -> PortBinding:
    entry = _object(entry, "a port binding")
    proto = _proto(entry)
    port = _port(entry, "Port", allow_zero=False)
    host_ip_text = _field(entry, "HostIP", str, "")
    try:
        host_ip = (ipaddress.ip_address(_unscoped(host_ip_text, "HostIP")) if host_ip_text
                   else None)
    except ValueError:
        raise InvalidRequest(f"HostIP {host_ip_text!r:.80} is not an IP address") from None
    start = _port(entry, "HostPort", allow_zero=True)
    end = _port(entry, "HostPortEnd", allow_zero=True) or start
    if start and end < start:
        raise InvalidRequest(f"host port range {start}-{end} ends before it starts")
    if not start and end:
        raise InvalidRequest(f"host port range 0-{end} has no start")
    return PortBinding(proto, port, host_ip, start, end)


def _bindings(options: dict[str, Any]) -> tuple[PortBinding, ...]:
    entries = options.get(PORTMAP) or []
    if not isinstance(entries, list):
        raise InvalidRequest(f"{PORTMAP} must be a list, got {type(entries).__name__}")
    return tuple(_binding(e) for e in entries)


def _mac(text: str, where: str) -> str:
    """Normalise a MAC to lower-case colon form; refuse multicast and malformed ones."""
    if not re.fullmatch(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}", text):
        raise InvalidRequest(f"{where} {text!r:.80} is not a MAC address like 02:42:0a:00:00:02")
    if int(text[:2], 16) & 1:
        raise InvalidRequest(f"{where} {text} is a multicast address; give a unicast MAC")
    return text.lower()


@dataclass(frozen=True)
class CreateEndpoint:
    """``/NetworkDriver.CreateEndpoint``; ``mac`` is the user's ``--mac-address`` if given."""

    network_id: str
    endpoint_id: str
    address: ipaddress.IPv4Interface | None
    address_v6: ipaddress.IPv6Interface | None
    mac: str | None

    @classmethod
    def parse(cls, body: Any) -> "CreateEndpoint":
        body = _object(body)
        network_id, endpoint_id = _id(body, "NetworkID"), _id(body, "EndpointID")
        iface = _object(_field(body, "Interface", dict, {}), "Interface")
        options = _object(_field(body, "Options", dict, {}), "Options")
        addr_text = _field(iface, "Address", str, "")
        address = _interface(addr_text, "Interface.Address") if addr_text else None
        if address is not None and address.version != 4:
            raise InvalidRequest(f"Interface.Address {addr_text!r} is not IPv4")
        v6_text = _field(iface, "AddressIPv6", str, "")
        address_v6 = _interface(v6_text, "Interface.AddressIPv6") if v6_text else None
        if address_v6 is not None and address_v6.version != 6:
            raise InvalidRequest(f"Interface.AddressIPv6 {v6_text!r} is not IPv6")
        mac_text = _field(iface, "MacAddress", str, "")
        mac = _mac(mac_text, "Interface.MacAddress") if mac_text else None
        if mac is None and options.get(MAC_OPTION):
            mac = _mac_from_option(options[MAC_OPTION])
        _bindings(options)  # validated now so a bad binding fails before anything is built
        return cls(network_id, endpoint_id, address, address_v6, mac)


def _mac_from_option(value: Any) -> str:
    """The endpoint option carries the 6 raw MAC bytes base64-encoded."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{MAC_OPTION} must be a base64 string, got {value!r:.80}")
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raise InvalidRequest(f"{MAC_OPTION} {value!r:.80} is not base64") from None
    if len(raw) != 6:
        raise InvalidRequest(f"{MAC_OPTION} {value!r:.80} does not hold 6 bytes")
    return _mac(":".join(f"{b:02x}" for b in raw), MAC_OPTION)


@dataclass(frozen=True)
class Join:
    """``/NetworkDriver.Join``; the sandbox does not exist yet, so only ids matter."""

    network_id: str
    endpoint_id: str
    sandbox_key: str

    @classmethod
    def parse(cls, body: Any) -> "Join":
        body = _object(body)
        return cls(_id(body, "NetworkID"), _id(body, "EndpointID"),
                   _field(body, "SandboxKey", str, ""))


@dataclass(frozen=True)
class ProgramExternalConnectivity:
    """``/NetworkDriver.ProgramExternalConnectivity``: the container's published ports."""

    network_id: str
    endpoint_id: str
    bindings: tuple[PortBinding, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, body: Any) -> "ProgramExternalConnectivity":
        body = _object(body)
        options = _object(_field(body, "Options", dict, {}), "Options")
        return cls(_id(body, "NetworkID"), _id(body, "EndpointID"), _bindings(options))


@dataclass(frozen=True)
class Discovery:
    """``DiscoverNew``/``DiscoverDelete``: swarm node discovery, which a local driver ignores."""

    discovery_type: int

    @classmethod
    def parse(cls, body: Any) -> "Discovery":
        return cls(_field(_object(body), "DiscoveryType", int, 0))


# -- replies ------------------------------------------------------------------------------

Reply = dict[str, Any]

ACTIVATE: Reply = {"Implements": ["NetworkDriver"]}
CAPABILITIES: Reply = {"Scope": "local", "ConnectivityScope": "local", "GwAllocChecker": True}
ALLOCATE_NETWORK: Reply = {"Options": {}}  # swarm-scope only: nothing to allocate


def error_reply(text: str) -> Reply:
    """Any refusal; dockerd shows ``text`` to the user."""
    return {"Err": text}


def create_endpoint_reply(mac: str | None) -> Reply:
    """The MAC pynet chose, or nothing when the user chose one."""
    return {"Interface": {"MacAddress": mac}} if mac else {}


def join_reply(src_name: str, dst_prefix: str, gateway: str | None,
               gateway_v6: str | None) -> Reply:
    """Which interface dockerd moves into the container, and the container's gateways (none
    for an internal network)."""
    reply: Reply = {"InterfaceName": {"SrcName": src_name, "DstPrefix": dst_prefix}}
    if gateway:
        reply["Gateway"] = gateway
    if gateway_v6:
        reply["GatewayIPv6"] = gateway_v6
    return reply


def gw_alloc_check_reply(skip_v4: bool, skip_v6: bool) -> Reply:
    """Whether dockerd should leave each family's gateway address unallocated."""
    return {"SkipIPv4": skip_v4, "SkipIPv6": skip_v6}


def oper_info_reply(value: dict[str, str]) -> Reply:
    """What ``docker network inspect`` shows of an endpoint."""
    return {"Value": value}
