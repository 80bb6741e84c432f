"""Docker's ``-o key=value`` network options, parsed the way the built-in bridge driver does.

dockerd forwards every ``-o`` as a string inside ``com.docker.network.generic``; the bridge driver
parses booleans with Go's ``strconv.ParseBool`` and refuses bad values with
``failed to parse <key> value: <v> (...)``. pynet keeps those spellings and that message shape so
a user switching ``-d bridge`` to ``-d pynet`` sees the same behaviour.
"""

import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import Any

from plugin.errors import InvalidRequest

log = logging.getLogger(__name__)

BRIDGE_NAME = "com.docker.network.bridge.name"
ENABLE_ICC = "com.docker.network.bridge.enable_icc"
ENABLE_IP_MASQUERADE = "com.docker.network.bridge.enable_ip_masquerade"
HOST_BINDING_IPV4 = "com.docker.network.bridge.host_binding_ipv4"
INHIBIT_IPV4 = "com.docker.network.bridge.inhibit_ipv4"
MTU = "com.docker.network.driver.mtu"
IFACE_PREFIX = "com.docker.network.container_iface_prefix"
TRUSTED_HOST_INTERFACES = "com.docker.network.bridge.trusted_host_interfaces"
GATEWAY_MODE_IPV4 = "com.docker.network.bridge.gateway_mode_ipv4"
GATEWAY_MODE_IPV6 = "com.docker.network.bridge.gateway_mode_ipv6"
ENABLE_IPV4 = "com.docker.network.enable_ipv4"  # a top-level option (--ipv4), not under -o
# Gateway modes, per IP version (Docker 27+; README "Gateway modes"): NAT with the direct-routing
# protection (the default), NAT without it, no NAT (routed), no gateway (internal networks).
NAT, NAT_UNPROTECTED, ROUTED, ISOLATED = "nat", "nat-unprotected", "routed", "isolated"
GATEWAY_MODES = (NAT, NAT_UNPROTECTED, ROUTED, ISOLATED)
GATEWAY_MODE_FIELDS = ((GATEWAY_MODE_IPV4, "gateway_mode_ipv4"),
                       (GATEWAY_MODE_IPV6, "gateway_mode_ipv6"))

# Keys the built-in driver knows but whose effect pynet does not need (markers, or options of
# newer engines that 20.10 also ignores); accepted without a warning.
KNOWN_IGNORED = frozenset(
    {
        "com.docker.network.bridge.default_bridge",
    }
)

_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
# Interface names: what the kernel accepts is wider, but anything outside this set is either
# invalid for the kernel ('/', whitespace, ':') or a hazard in logs and rule dumps.
_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
IFNAMSIZ = 15


def parse_go_bool(key: str, value: str) -> bool:
    """Parse ``value`` with the spellings Go's strconv.ParseBool accepts."""
    if value in _GO_TRUE:
        return True
    if value in _GO_FALSE:
        return False
    raise InvalidRequest(
        f"failed to parse {key} value: {value!r} (use true or false; "
        "1/t/T/TRUE/True and 0/f/F/FALSE/False are accepted too)"
    )


def check_ifname(what: str, name: str, max_len: int = IFNAMSIZ) -> str:
    """Refuse interface names the kernel would refuse or that could smuggle syntax into rules."""
    if len(name) > max_len:
        raise InvalidRequest(
            f"{what} {name!r} is {len(name)} characters; Linux allows at most {max_len}"
        )
    if not _IFNAME.fullmatch(name):
        raise InvalidRequest(
            f"{what} {name!r} is not a valid interface name: use letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return name


def parse_gateway_mode(key: str, value: str) -> str:
    """One of Docker's gateway modes, for one IP version (see README, "Gateway modes")."""
    if value not in GATEWAY_MODES:
        raise InvalidRequest(f"failed to parse {key} value: {value!r} (unknown gateway mode; "
                             f"use one of {', '.join(GATEWAY_MODES)})")
    return value


def parse_mtu(value: str) -> int:
    """MTU as the bridge driver takes it: a decimal integer; 0 means "leave the default"."""
    try:
        mtu = int(value, 10)
    except ValueError:
        raise InvalidRequest(
            f"failed to parse {MTU} value: {value!r} (give a whole number such as 1400)"
        ) from None
    if mtu != 0 and not 68 <= mtu <= 65535:
        raise InvalidRequest(
            f"{MTU} value {mtu} is out of range: give 68..65535, or 0 for the default"
        )
    return mtu


def parse_host_ipv4(value: str) -> ipaddress.IPv4Address:
    """The default host address for published ports."""
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise InvalidRequest(
            f"failed to parse {HOST_BINDING_IPV4} value: {value!r} (give an IPv4 address "
            "such as 127.0.0.1)"
        ) from None


@dataclass(frozen=True)
class NetworkOptions:
    """Everything a network's ``-o`` options and flags decide."""

    bridge_name: str | None = None
    enable_icc: bool = True
    enable_ip_masquerade: bool = True
    host_binding_ipv4: ipaddress.IPv4Address = ipaddress.IPv4Address("0.0.0.0")
    inhibit_ipv4: bool = False
    mtu: int = 0
    iface_prefix: str = "eth"
    internal: bool = False
    enable_ipv6: bool = False
    trusted_host_interfaces: tuple[str, ...] = ()
    gateway_mode_ipv4: str = NAT
    gateway_mode_ipv6: str = NAT


def parse_network_options(options: dict[str, Any]) -> NetworkOptions:
    """Turn CreateNetwork's ``Options`` object into NetworkOptions, refusing bad values."""
    generic = options.get("com.docker.network.generic") or {}
    if not isinstance(generic, dict):
        raise InvalidRequest(
            f"com.docker.network.generic must be an object of strings, got {type(generic).__name__}"
        )
    for key, value in generic.items():
        if not isinstance(value, str):
            # repr: the key is the user's, and the message reaches pynet's log and dockerd's
            raise InvalidRequest(f"option {key!r:.80} must be a string, got {value!r:.80}")
    fields: dict[str, Any] = {}
    if BRIDGE_NAME in generic:
        fields["bridge_name"] = check_ifname("bridge name", generic[BRIDGE_NAME])
    for key, attr in ((ENABLE_ICC, "enable_icc"), (ENABLE_IP_MASQUERADE, "enable_ip_masquerade"),
                      (INHIBIT_IPV4, "inhibit_ipv4")):
        if key in generic:
            fields[attr] = parse_go_bool(key, generic[key])
    if HOST_BINDING_IPV4 in generic:
        fields["host_binding_ipv4"] = parse_host_ipv4(generic[HOST_BINDING_IPV4])
    if MTU in generic:
        fields["mtu"] = parse_mtu(generic[MTU])
    if IFACE_PREFIX in generic:
        # The kernel appends an index (eth0, eth12): keep room for it.
        fields["iface_prefix"] = check_ifname("interface prefix", generic[IFACE_PREFIX], 12)
    if TRUSTED_HOST_INTERFACES in generic:
        fields["trusted_host_interfaces"] = tuple(
            check_ifname(f"{TRUSTED_HOST_INTERFACES} interface", name)
            for name in generic[TRUSTED_HOST_INTERFACES].split(":") if name)
    for key, attr in GATEWAY_MODE_FIELDS:
        if key in generic:
            fields[attr] = parse_gateway_mode(key, generic[key])
    for key in ("com.docker.network.internal", "com.docker.network.enable_ipv6", ENABLE_IPV4):
        value = options.get(key, key == ENABLE_IPV4)
        if not isinstance(value, bool):
            raise InvalidRequest(f"{key} must be a JSON boolean, got {value!r}")
    fields["internal"] = options.get("com.docker.network.internal", False)
    fields["enable_ipv6"] = options.get("com.docker.network.enable_ipv6", False)
    for key, attr in GATEWAY_MODE_FIELDS:
        if fields.get(attr) == ISOLATED and not fields["internal"]:  # as the bridge driver
            raise InvalidRequest(f"gateway mode 'isolated' ({key}) can only be used for an "
                                 "internal network: add --internal, or choose nat, "
                                 "nat-unprotected or routed")
    known = {BRIDGE_NAME, ENABLE_ICC, ENABLE_IP_MASQUERADE, HOST_BINDING_IPV4, INHIBIT_IPV4, MTU,
             IFACE_PREFIX, TRUSTED_HOST_INTERFACES, GATEWAY_MODE_IPV4,
             GATEWAY_MODE_IPV6} | KNOWN_IGNORED
    for key in sorted(set(generic) - known):
        log.info("ignoring unknown network option %r=%r", key, generic[key])
    return NetworkOptions(**fields)
