"""Fixtures of the end-to-end tests that compare drivers: host ports and the outside host."""

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import Instance, Subnets, pynet_firewall
from tests.e2e.differential import PYNET, Lab, World


class PortPool:
    """Host ports from 18000-18999 (this suite's share), from a random start."""

    def __init__(self) -> None:
        self._next = secrets.randbelow(1000)

    def take(self) -> int:
        port = 18000 + self._next % 1000
        self._next += 1
        return port


@pytest.fixture(scope="session")
def port_pool() -> PortPool:
    return PortPool()


@pytest.fixture
def lab(dockerd: None, subnets: Subnets, port_pool: PortPool) -> Iterator[Lab]:
    """The outside host and servers both runs share; removed even if the test fails."""
    names = ("outsrv", "hostsrv", "H1", "H2", "H3")
    the_lab = Lab(subnets, {name: port_pool.take() for name in names})
    try:
        the_lab.open()
        yield the_lab
    finally:
        the_lab.close()


@pytest.fixture
def ipv6_forwarding() -> Iterator[None]:
    """The host forwards IPv6, as dockerd makes it for Docker's own IPv6 networks (pynet
    leaves that to the administrator); put back as found."""
    forwarding = Path("/proc/sys/net/ipv6/conf/all/forwarding")
    before = forwarding.read_text()
    forwarding.write_text("1")
    try:
        yield
    finally:
        forwarding.write_text(before)


@pytest.fixture
def pynet_iptables() -> None:
    """For tests of pynet's iptables chains: pynet writes nftables on this host (dockerd runs
    its nftables backend), where tests/e2e/test_nftables.py checks the same of its table."""
    if pynet_firewall() != "iptables":
        pytest.skip("pynet writes nftables here; test_nftables.py covers its table")


@pytest.fixture
def pynet_nftables() -> None:
    """For tests of pynet's nftables table: pynet writes iptables on this host (dockerd runs
    its iptables backend), where the differential tests check its chains."""
    if pynet_firewall() != "nftables":
        pytest.skip("pynet writes iptables here; the differential tests cover its chains")


@pytest.fixture
def pynet_world(lab: Lab, pynet: Instance) -> Iterator[World]:
    """A pynet run outside the differential, for tests of pynet alone."""
    world = World(lab, PYNET, pynet.name)
    try:
        yield world
    finally:
        world.close()
