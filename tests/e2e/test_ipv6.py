"""Dual-stack networks (``--ipv6``): pynet against Docker's bridge driver over IPv6.

The scenarios are the IPv4 ones' twins, probed over IPv6 (each network gets an IPv4 and an
IPv6 subnet of the tests' ranges; the outside host has both). Docker writes ip6tables by default
since 27; 20.10 writes none (its bridge driver leaves IPv6 open), so there pynet's run alone is
checked against what Docker 28+ does, as everywhere pynet is never weaker than the newest
bridge driver.

IPv6-only networks (``--ipv4=false``, Docker 28+) are compared the same way.
"""

from collections.abc import Callable
from dataclasses import replace

import pytest

from lab import (
    Instance,
    engine,
    ip6tables_save,
    link,
    run,
    wait_for,
)
from plugin.config import Settings
from tests.e2e.differential import (
    PYNET,
    Cell,
    CellDifference,
    Lab,
    World,
    compare,
    pynet_expectation,
    run_both,
)
from tests.e2e.test_differential import CELL_DIFFERENCES, PEER_SOURCE, RULE_DIFFERENCES

LOOPBACK_V6 = ("Docker relays host [::1] -> published port with docker-proxy; pynet has no "
               "proxy and the kernel does not DNAT ::1 off the host, so the connection reaches "
               "pynet's reservation socket, which resets it at once")

# The IPv4 differences hold over IPv6 too (their chains are "6:<chain>" here); the hairpin
# masquerade is per /128 instead of /32.
RULE_DIFFERENCES_V6 = [replace(d, chain=f"6:{d.chain}",
                               pynet=None if d.pynet is None else d.pynet.replace("/32", "/128"))
                       for d in RULE_DIFFERENCES]
NEIGHBOURS = ("with icc off Docker drops neighbour discovery between the bridge's ports too, so "
              "a direct connection fails at once; pynet lets it through, as ARP is for IPv4 "
              "(a peer's connection to a published port is DNATed back onto the bridge and "
              "needs it), and drops the connection itself")
CELL_DIFFERENCES_V6 = [
    CellDifference("v6-icc-off", "c1 -> c0@n0:80/tcp over IPv6", "ehostunreach", "timeout",
                   NEIGHBOURS),
    CellDifference("v6-icc-off", "c1 -> host:H1/tcp over IPv6", "ok gw:n0", "ok c1@n0",
                   PEER_SOURCE),
    CellDifference("v6-ports", "c1 -> host:H1/tcp over IPv6", "ok gw:n0", "ok c1@n0",
                   PEER_SOURCE),
    CellDifference("v6-ports", "host -> loopback:H1/tcp over IPv6", "ok gw:n0", "reset",
                   LOOPBACK_V6),
]


pytestmark = pytest.mark.usefixtures("ipv6_forwarding")


def differential6(name: str, lab: Lab, pynet: Instance, scenario: Callable[[World], None]) -> None:
    """Both drivers where Docker writes ip6tables (28+); pynet alone, against Docker 28+'s
    matrix, on 20.10."""
    if engine() >= 28:
        results = run_both(lab, pynet.name, scenario)
        problems = compare(name, results, RULE_DIFFERENCES + RULE_DIFFERENCES_V6,
                           CELL_DIFFERENCES + CELL_DIFFERENCES_V6)
        assert not problems, "\n\n".join(problems)
        return
    world = World(lab, PYNET, pynet.name)
    try:
        scenario(world)
    finally:
        world.close()
    problems = [f"[{name}/{step}] pynet: {label} gave {seen.matrix[label]!r}, expected {want!r}"
                for step, seen in world.steps.items()
                for label, want in pynet_expectation(name, seen.expected,
                                                     CELL_DIFFERENCES_V6).items()
                if seen.matrix[label] != want]
    assert not problems, "\n".join(problems)


def v6(src: str, dst: str, port: int | str, proto: str = "tcp") -> Cell:
    return Cell(src, dst, port, proto, family=6)


def plain(w: World) -> None:
    w.network("n0", "--ipv6")
    w.container("c0", "n0")
    w.container("c1", "n0")
    w.observe("up", {
        v6("c1", "c0@n0", 80): "ok c1@n0",
        v6("c0", "host", "hostsrv"): "ok c0@n0",
        v6("c0", "gw:n0", "hostsrv"): "ok c0@n0",
        v6("host", "c0@n0", 80): "ok gw:n0",
        v6("outside", "c0@n0", 80): "timeout",
        v6("c0", "outside", "outsrv"): "ok host",
        Cell("c1", "c0@n0", 80): "ok c1@n0",
        Cell("c0", "outside", "outsrv"): "ok host",
    })


def test_plain_dual_stack_network(lab: Lab, pynet: Instance) -> None:
    differential6("v6-plain", lab, pynet, plain)


def two_networks(w: World) -> None:
    w.network("n0", "--ipv6")
    w.network("n1", "--ipv6")
    w.container("c0", "n0")
    w.container("c1", "n1")
    w.observe("up", {
        v6("c0", "c1@n1", 80): "timeout",
        v6("c1", "c0@n0", 80): "timeout",
        v6("c0", "gw:n1", "hostsrv"): "ok c0@n0",
        v6("c1", "outside", "outsrv"): "ok host",
        v6("host", "c1@n1", 80): "ok gw:n1",
        v6("outside", "c1@n1", 80): "timeout",
    })


def test_two_dual_stack_networks_are_isolated(lab: Lab, pynet: Instance) -> None:
    differential6("v6-two-networks", lab, pynet, two_networks)


def icc_off(w: World) -> None:
    w.network("n0", "--ipv6", "-o", "com.docker.network.bridge.enable_icc=false")
    w.container("c0", "n0", "-p", f"{w.lab.ports['H1']}:80")
    w.container("c1", "n0")
    w.observe("up", {
        v6("c1", "c0@n0", 80): "ehostunreach",
        v6("c1", "gw:n0", "hostsrv"): "ok c1@n0",
        v6("c1", "host", "H1"): "ok gw:n0",
        v6("outside", "host", "H1"): "ok outside",
        v6("c0", "outside", "outsrv"): "ok host",
    })


def test_icc_off_over_ipv6(lab: Lab, pynet: Instance) -> None:
    differential6("v6-icc-off", lab, pynet, icc_off)


def masquerade_off(w: World) -> None:
    w.network("n0", "--ipv6", "-o", "com.docker.network.bridge.enable_ip_masquerade=false")
    w.container("c0", "n0", "-p", f"{w.lab.ports['H1']}:80")
    w.observe("up", {
        # the outside host's replies to the container's own address come in on the host's
        # interface: dropped as routing to the container directly
        v6("c0", "outside", "outsrv"): "timeout",
        v6("outside", "host", "H1"): "ok outside",
        v6("outside", "c0@n0", 80): "timeout",
    })


def test_masquerade_off_over_ipv6(lab: Lab, pynet: Instance) -> None:
    differential6("v6-masquerade-off", lab, pynet, masquerade_off)


def internal(w: World) -> None:
    w.network("n0", "--ipv6", "--internal")
    w.container("c0", "n0")
    w.container("c1", "n0")
    w.observe("up", {
        v6("c1", "c0@n0", 80): "ok c1@n0",
        v6("c0", "host", "hostsrv"): "enetunreach",
        v6("c0", "outside", "outsrv"): "enetunreach",
        v6("outside", "c0@n0", 80): "timeout",
        v6("host", "c0@n0", 80): "ok gw:n0",
    })


def test_internal_dual_stack_network(lab: Lab, pynet: Instance) -> None:
    differential6("v6-internal", lab, pynet, internal)


def ports(w: World) -> None:
    p = w.lab.ports
    w.network("n0", "--ipv6")
    w.network("n1", "--ipv6")
    w.container("c0", "n0", "-p", f"{p['H1']}:80", "-p", f"[{w.lab.outside.host_ip6}]:{p['H2']}:80",
                "-P", "--expose", "9000")
    w.container("c1", "n0")
    w.container("c2", "n1")
    w.observe("up", {
        v6("outside", "host", "H1"): "ok outside",
        Cell("outside", "host", "H1"): "ok outside",  # no host address: both families
        v6("outside", "host", "H2"): "ok outside",
        Cell("outside", "host", "H2"): "refused",  # an IPv6 host address: IPv6 only
        v6("outside", "host", "eph:c0@n0:9000"): "ok outside",
        v6("outside", "c0@n0", 80): "timeout",
        v6("outside", "host", "H3"): "refused",
        v6("host", "host", "H1"): "ok host",
        v6("host", "loopback", "H1"): "ok gw:n0",
        v6("c0", "host", "H1"): "ok gw:n0",  # hairpin
        v6("c1", "host", "H1"): "ok gw:n0",
        v6("c2", "host", "H1"): "ok gw:n0",
        v6("c2", "c0@n0", 80): "timeout",
    })


def test_published_ports_over_ipv6(lab: Lab, pynet: Instance) -> None:
    differential6("v6-ports", lab, pynet, ports)


def ipv6_only(w: World) -> None:
    p = w.lab.ports
    w.network("n0", "--ipv4=false", "--ipv6")
    w.container("c0", "n0", "-p", f"{p['H1']}:80")
    w.container("c1", "n0")
    w.observe("up", {
        v6("c1", "c0@n0", 80): "ok c1@n0",
        v6("host", "c0@n0", 80): "ok gw:n0",
        v6("outside", "c0@n0", 80): "timeout",
        v6("c0", "outside", "outsrv"): "ok host",
        v6("outside", "host", "H1"): "ok outside",
    })


@pytest.mark.skipif(engine() < 28, reason="IPv6-only networks came with Docker 28 (EnableIPv4)")
def test_ipv6_only_network(lab: Lab, pynet: Instance) -> None:
    differential6("v6-only", lab, pynet, ipv6_only)


def test_a_flushed_ip6tables_chain_is_restored(pynet_iptables: None, pynet_world: World,
                                               pynet: Instance) -> None:
    """Damage to pynet's IPv6 chains is repaired like damage to its IPv4 ones: the periodic
    check finds it and isolation over IPv6 holds again."""
    w = pynet_world
    w.network("n0", "--ipv6")
    w.network("n1", "--ipv6")
    w.container("c0", "n0")
    w.container("c1", "n1")
    forward = f"{Settings(name=pynet.name).chain_prefix}-FORWARD"
    run(["ip6tables", "-F", forward])
    wait_for("pynet to restore its IPv6 chain",
             lambda: f"-A {forward} -o {w.nets['n1'].bridge} -j DROP" in ip6tables_save(),
             timeout=30)
    cell = v6("c0", "c1@n1", 80)
    assert w.matrix({cell: ""}, "")[cell.label] == "timeout"
    assert link(w.nets["n1"].bridge) is not None
