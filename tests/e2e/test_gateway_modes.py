"""Gateway modes (``-o com.docker.network.bridge.gateway_mode_ipv4/_ipv6``): pynet against
Docker's bridge driver, per IP version.

``nat`` is every other differential test. Here: ``nat-unprotected`` (NAT, but anything may
enter the network, routed to its containers directly or from other networks), ``routed`` (no
NAT: a published port is the container's own port, open to direct routing, and nothing else
is), one network with a different mode per family, and ``isolated`` (internal networks whose
bridge has no address of that family). Docker 20.10 ignores the options, so there pynet's run
alone is checked against what Docker 28+ does.
"""

import pytest

from lab import Instance, addresses, docker, engine
from tests.conftest import Resources
from tests.e2e.differential import Cell, CellDifference, Lab, World
from tests.e2e.test_differential import CELL_DIFFERENCES
from tests.e2e.test_ipv6 import differential6, v6

pytestmark = pytest.mark.usefixtures("ipv6_forwarding")

MODE = "com.docker.network.bridge.gateway_mode_ipv"


def modes(v4: str, v6_mode: str) -> tuple[str, ...]:
    return ("-o", f"{MODE}4={v4}", "-o", f"{MODE}6={v6_mode}")


def both(src: str, dst: str, port: int | str, want: str) -> dict[Cell, str]:
    """The same probe over IPv4 and IPv6, with the same outcome (addresses as tokens)."""
    return {Cell(src, dst, port): want, v6(src, dst, port): want}


STAGES = ("Docker 28's bridge driver still isolates its networks from each other in its "
          "DOCKER-ISOLATION stages, whatever their gateway mode; 29 has no stages and lets "
          "other networks into a nat-unprotected one. pynet does what 29 does on every engine")


def on_28(cells: dict[Cell, str], scenario: str, docker_28: str) -> dict[Cell, str]:
    """``cells`` as the newest bridge driver gives them; Docker 28's gives ``docker_28``
    (a listed difference there, pynet gives the newest's)."""
    if engine() != 28:
        return cells
    for cell, want in cells.items():
        difference = CellDifference(scenario, cell.label, docker_28, want, STAGES)
        if difference not in CELL_DIFFERENCES:  # each run of the scenario asks
            CELL_DIFFERENCES.append(difference)
    return dict.fromkeys(cells, docker_28)


def nat_unprotected(w: World) -> None:
    p = w.lab.ports
    w.network("n0", "--ipv6", *modes("nat-unprotected", "nat-unprotected"))
    w.network("n1", "--ipv6")
    w.container("c0", "n0", "-p", f"{p['H1']}:80")
    w.container("c2", "n1")
    w.observe("up", {
        **both("outside", "c0@n0", 80, "ok outside"),  # routed to it directly
        **both("outside", "c0@n0", 9000, "ok outside"),  # unpublished, open all the same
        **both("outside", "host", "H1", "ok outside"),
        # another network (which masquerades), straight to the container
        **on_28(both("c2", "c0@n0", 80, "ok gw:n0"), "gw-nat-unprotected", "timeout"),
        **both("c0", "c2@n1", 80, "timeout"),  # n1 is a nat network
        **both("c0", "outside", "outsrv", "ok host"),  # masqueraded
    })


def test_nat_unprotected(lab: Lab, pynet: Instance) -> None:
    differential6("gw-nat-unprotected", lab, pynet, nat_unprotected)


def routed(w: World) -> None:
    p = w.lab.ports
    w.network("n0", "--ipv6", *modes("routed", "routed"))
    w.network("n1", "--ipv6")
    w.container("c0", "n0", "-p", f"{p['H1']}:80")
    w.container("c2", "n1")
    w.observe("up", {
        **both("outside", "c0@n0", 80, "ok outside"),  # the published port, directly
        **both("outside", "c0@n0", 9000, "timeout"),  # unpublished
        **both("outside", "host", "H1", "refused"),  # no NAT: no host port
        **both("c2", "c0@n0", 80, "ok gw:n0"),  # n1 masquerades what leaves it
        **both("c0", "c2@n1", 80, "timeout"),
        **both("c0", "outside", "outsrv", "ok c0@n0"),  # not masqueraded
        **both("host", "c0@n0", 80, "ok gw:n0"),
    })


def test_routed(lab: Lab, pynet: Instance) -> None:
    differential6("gw-routed", lab, pynet, routed)


def routed_ipv4_nat_ipv6(w: World) -> None:
    p = w.lab.ports
    w.network("n0", "--ipv6", *modes("routed", "nat"))
    w.container("c0", "n0", "-p", f"{p['H1']}:80")
    w.observe("up", {
        Cell("outside", "c0@n0", 80): "ok outside",
        Cell("outside", "host", "H1"): "refused",
        Cell("c0", "outside", "outsrv"): "ok c0@n0",
        v6("outside", "c0@n0", 80): "timeout",
        v6("outside", "host", "H1"): "ok outside",
        v6("c0", "outside", "outsrv"): "ok host",
    })


def test_a_mode_per_family(lab: Lab, pynet: Instance) -> None:
    differential6("gw-routed4-nat6", lab, pynet, routed_ipv4_nat_ipv6)


def bridge_addresses(w: World) -> dict[str, str]:
    """The global addresses on the network's bridge, as tokens."""
    found = [a for a in addresses(w.nets["n0"].bridge) if not a.startswith("fe80:")]
    return {"bridge addresses": " ".join(sorted(w.tokens().apply(a.split("/")[0])
                                                for a in found)) or "none"}


def isolated(w: World) -> None:
    w.network("n0", "--ipv6", "--internal", *modes("isolated", "isolated"))
    w.container("c0", "n0")
    w.container("c1", "n0")
    # The host has no address on the network, so no route to it either: a probe from the
    # host would follow its default route off the machine. The facts show the addresses.
    w.observe("up", both("c1", "c0@n0", 80, "ok c1@n0"), facts=bridge_addresses)


def test_isolated(lab: Lab, pynet: Instance) -> None:
    differential6("gw-isolated", lab, pynet, isolated)


def test_isolated_needs_an_internal_network(pynet: Instance, res: Resources) -> None:
    """Refused before anything is built, by both drivers (Docker's since 28; 20.10's ignores
    the option, pynet refuses it on every engine)."""
    drivers = ("bridge", pynet.name) if engine() >= 28 else (pynet.name,)
    for driver in drivers:
        name = f"pt-{res.tag}-iso-{driver[:6]}"
        res.networks.append(name)  # removed at the end, should the create succeed
        done = docker("network", "create", "-d", driver, "--subnet", str(res.subnets.take()),
                      "-o", f"{MODE}4=isolated", name, check=False)
        assert done.returncode != 0, f"-d {driver} accepted isolated without --internal"
        assert "can only be used for an internal network" in done.stderr, done.stderr
        assert docker("network", "ls", "-q", "--filter", f"name=^{name}$").stdout == ""
