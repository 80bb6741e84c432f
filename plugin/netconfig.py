"""A network's configuration in pynet's own terms, decided once at CreateNetwork.

The store keeps this, not dockerd's request: a later release may validate requests more
strictly (it did: pools over host ranges are refused since), and a record must go on meaning
what it meant when its network was built. Encoding is explicit and versioned
(``CONFIG_VERSION``); ``store.py`` migrates records of earlier versions when it opens the
database.
"""

import functools
import ipaddress
from dataclasses import dataclass
from typing import Any

from plugin import protocol
from plugin.hashing import HashedOnce
from plugin.options import ISOLATED, NAT

CONFIG_VERSION = 2  # 2: gateway modes (a version-1 record means nat for both families)
DEFAULT_GATEWAY_AUX = "DefaultGatewayIPv4"  # --aux-address DefaultGatewayIPv4=...


@dataclass(frozen=True)
class NetworkConfig(HashedOnce):
    """Everything pynet builds a network from."""

    __hash__ = HashedOnce.hash_once

    subnet: ipaddress.IPv4Network | None  # None: an IPv6-only network
    gateway: ipaddress.IPv4Interface | None  # the bridge's address
    default_gateway: ipaddress.IPv4Address | None  # what containers route through
    address_space: str  # "LocalDefault": dockerd's own IPAM, which never overlaps pools
    subnet_v6: ipaddress.IPv6Network | None = None
    gateway_v6: ipaddress.IPv6Interface | None = None
    internal: bool = False
    enable_icc: bool = True
    enable_ip_masquerade: bool = True
    inhibit_ipv4: bool = False
    mtu: int = 0
    iface_prefix: str = "eth"
    host_binding_ipv4: ipaddress.IPv4Address = ipaddress.IPv4Address("0.0.0.0")
    trusted_host_interfaces: tuple[str, ...] = ()
    gateway_mode_ipv4: str = NAT  # options.GATEWAY_MODES; nat for a family it does not have
    gateway_mode_ipv6: str = NAT

    @functools.cached_property
    def spans(self) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
        """The IPv4 and the IPv6 subnet as ``protocol.span`` gives them (None: no subnet)."""
        v4 = None if self.subnet is None else protocol.span(self.subnet)
        v6 = None if self.subnet_v6 is None else protocol.span(self.subnet_v6)
        return v4, v6

    def gateway_mode(self, family: int) -> str:
        """The gateway mode of IP version ``family``."""
        return self.gateway_mode_ipv4 if family == 4 else self.gateway_mode_ipv6

    def bridge_addresses(self) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        """The addresses the bridge carries: the gateways, but none of a family in gateway
        mode ``isolated`` (the host has no address there) nor IPv4 with inhibit_ipv4."""
        v4 = None if self.inhibit_ipv4 or self.gateway_mode_ipv4 == ISOLATED else self.gateway
        v6 = None if self.gateway_mode_ipv6 == ISOLATED else self.gateway_v6
        return [a for a in (v4, v6) if a is not None]

    @classmethod
    def from_request(cls, req: protocol.CreateNetwork) -> "NetworkConfig":
        """What a (validated) CreateNetwork asks for."""
        v4, v6, opts = req.ipv4, req.ipv6, req.options
        aux = v4.aux_addresses.get(DEFAULT_GATEWAY_AUX) if v4 else None
        gateway_ip = aux.ip if aux is not None else v4.gateway.ip if v4 and v4.gateway else None
        return cls(
            subnet=ipaddress.IPv4Network(v4.pool) if v4 else None,
            gateway=ipaddress.IPv4Interface(v4.gateway) if v4 and v4.gateway else None,
            default_gateway=ipaddress.IPv4Address(gateway_ip) if gateway_ip else None,
            address_space=req.address_space,
            subnet_v6=ipaddress.IPv6Network(v6.pool) if v6 else None,
            gateway_v6=ipaddress.IPv6Interface(v6.gateway) if v6 and v6.gateway else None,
            internal=opts.internal, enable_icc=opts.enable_icc,
            enable_ip_masquerade=opts.enable_ip_masquerade, inhibit_ipv4=opts.inhibit_ipv4,
            mtu=opts.mtu, iface_prefix=opts.iface_prefix,
            host_binding_ipv4=opts.host_binding_ipv4,
            trusted_host_interfaces=opts.trusted_host_interfaces,
            # A mode of a family the network does not have changes nothing (as the bridge
            # driver): its rules would otherwise open the bridge to that family.
            gateway_mode_ipv4=opts.gateway_mode_ipv4 if v4 else NAT,
            gateway_mode_ipv6=opts.gateway_mode_ipv6 if v6 else NAT)

    def to_json(self) -> dict[str, Any]:
        """The stored form: addresses as text, ``version`` first."""
        def text(value: object) -> object:
            return None if value is None else str(value)
        return {
            "version": CONFIG_VERSION,
            "subnet": text(self.subnet), "gateway": text(self.gateway),
            "default_gateway": text(self.default_gateway), "address_space": self.address_space,
            "subnet_v6": text(self.subnet_v6), "gateway_v6": text(self.gateway_v6),
            "internal": self.internal, "enable_icc": self.enable_icc,
            "enable_ip_masquerade": self.enable_ip_masquerade,
            "inhibit_ipv4": self.inhibit_ipv4, "mtu": self.mtu,
            "iface_prefix": self.iface_prefix, "host_binding_ipv4": str(self.host_binding_ipv4),
            "trusted_host_interfaces": list(self.trusted_host_interfaces),
            "gateway_mode_ipv4": self.gateway_mode_ipv4,
            "gateway_mode_ipv6": self.gateway_mode_ipv6,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "NetworkConfig":
        """The stored form back; refuses a version this release does not know."""
        if data.get("version") not in (1, CONFIG_VERSION):
            raise ValueError(f"network config version {data.get('version')!r} is not 1 or "
                             f"{CONFIG_VERSION}; was the database written by a newer pynet?")

        def opt(kind: Any, key: str) -> Any:
            return None if data.get(key) is None else kind(data[key])
        return cls(
            subnet=opt(ipaddress.IPv4Network, "subnet"),
            gateway=opt(ipaddress.IPv4Interface, "gateway"),
            default_gateway=opt(ipaddress.IPv4Address, "default_gateway"),
            address_space=data["address_space"],
            subnet_v6=opt(ipaddress.IPv6Network, "subnet_v6"),
            gateway_v6=opt(ipaddress.IPv6Interface, "gateway_v6"),
            internal=data["internal"], enable_icc=data["enable_icc"],
            enable_ip_masquerade=data["enable_ip_masquerade"],
            inhibit_ipv4=data["inhibit_ipv4"], mtu=data["mtu"],
            iface_prefix=data["iface_prefix"],
            host_binding_ipv4=ipaddress.IPv4Address(data["host_binding_ipv4"]),
            trusted_host_interfaces=tuple(data["trusted_host_interfaces"]),
            gateway_mode_ipv4=data.get("gateway_mode_ipv4", NAT),
            gateway_mode_ipv6=data.get("gateway_mode_ipv6", NAT))
