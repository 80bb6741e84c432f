"""Fixtures of the end-to-end tests that compare drivers: host ports and the outside host."""

import secrets
from collections.abc import Iterator

import pytest

from lab import Subnets
from tests.e2e.differential import Lab


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
