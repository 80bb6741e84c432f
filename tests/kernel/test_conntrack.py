"""Unpublishing a container's ports forgets its tracked connections, and only those.

A UDP client that keeps sending to a published port would otherwise stay bound to the old
container's address through its conntrack entry. Runs in the host namespace (loopback
addresses only), where dockerd's rules have the conntrack module loaded.
"""

import ipaddress
import socket
import subprocess
from collections.abc import Iterator

import pytest

from plugin.netlink import Netlink

# Loopback addresses no other test uses; the flows never leave lo. IPv6 has one loopback
# address: the test puts three of its own on lo for the time it runs.
FAMILIES = {4: ("127.0.0.71", "127.0.0.72", "127.0.0.73"),
            6: ("fd7e:231:ffff::71", "fd7e:231:ffff::72", "fd7e:231:ffff::73")}


def tracked(address: str) -> list[str]:
    """conntrack-tools' view: entries with ``address`` as source or destination."""
    found = []
    for flag in ("-s", "-d"):
        listing = subprocess.run(["conntrack", "-L", flag, address], capture_output=True,
                                 text=True, check=False).stdout
        found += [line for line in listing.splitlines() if line.strip()]
    return found


def udp_flow(source: str, destination: str) -> None:
    with socket.socket(socket.AF_INET6 if ":" in source else socket.AF_INET,
                       socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.sendto(b"x", (destination, 9))


TRACKING = ["-d", "fd7e:231:ffff::/64", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"]


@pytest.fixture(params=[4, 6])
def addresses(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, str]]:
    """Three local addresses of one family; their flows are forgotten afterwards."""
    found = FAMILIES[request.param]
    if request.param == 6:
        for address in found:
            subprocess.run(["ip", "addr", "add", f"{address}/128", "dev", "lo", "nodad"],
                           check=True)
        # IPv6 is tracked only while some ip6tables rule needs it (pynet's do; on a host
        # without IPv6 networks nothing else may): a rule of the test's own for its flows
        subprocess.run(["ip6tables", "-t", "raw", "-I", "OUTPUT", *TRACKING], check=True)
    try:
        yield found
    finally:
        if request.param == 6:
            subprocess.run(["ip6tables", "-t", "raw", "-D", "OUTPUT", *TRACKING], check=False)
        for address in found:
            for flag in ("-s", "-d"):
                subprocess.run(["conntrack", "-D", flag, address], capture_output=True,
                               check=False)
            if request.param == 6:
                subprocess.run(["ip", "addr", "del", f"{address}/128", "dev", "lo"],
                               check=False)


def test_flush_drops_the_address_flows_both_ways_and_nothing_else(
        addresses: tuple[str, str, str]) -> None:
    CONTAINER, PEER, BYSTANDER = addresses  # noqa: N806 (the roles read better as constants)
    udp_flow(CONTAINER, PEER)  # the container as client: orig source
    udp_flow(PEER, CONTAINER)  # the container as server: orig destination
    udp_flow(PEER, BYSTANDER)
    assert len(tracked(CONTAINER)) == 2 and tracked(BYSTANDER)

    dropped = Netlink().flush_conntrack(ipaddress.ip_address(CONTAINER))

    assert dropped == 2
    assert tracked(CONTAINER) == []
    assert len(tracked(BYSTANDER)) == 1, "another address's flow must survive"
