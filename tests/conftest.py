"""Fixtures: dockerd, the busybox image, a pynet instance, networks and containers that clean
up after themselves even when a test fails."""

import os
import secrets
from collections.abc import Iterator

import pytest

from lab import (
    IMAGE,
    Instance,
    Subnets,
    docker,
    ensure_dockerd,
    ensure_image,
    serving,
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under tests/kernel and tests/e2e need root: fail loudly rather than skip."""
    if os.geteuid() != 0 and any("/unit/" not in str(i.fspath) for i in items):
        raise pytest.UsageError("kernel and end-to-end tests need root; run make test as root")


@pytest.fixture(scope="session")
def dockerd() -> None:
    """A running dockerd and the local image."""
    ensure_dockerd()
    ensure_image()


@pytest.fixture(scope="session")
def subnets() -> Subnets:
    return Subnets()


@pytest.fixture(scope="session")
def pynet(dockerd: None) -> Iterator[Instance]:
    """One pynet instance for the session, under a name no installed pynet uses."""
    yield from serving()


class Resources:
    """Networks and containers one test made; removed at the end even if the test failed."""

    def __init__(self, subnets: Subnets) -> None:
        self.subnets = subnets
        self.networks: list[str] = []
        self.containers: list[str] = []
        self.tag = secrets.token_hex(3)

    def network(self, driver: str, *args: str, name: str | None = None,
                subnet: bool = True) -> str:
        """``docker network create``; returns the network's name."""
        name = name or f"pt-{self.tag}-n{len(self.networks)}"
        extra = ["--subnet", str(self.subnets.take())] if subnet and "--subnet" not in args \
            else []
        docker("network", "create", "-d", driver, *extra, *args, name)
        self.networks.append(name)
        return name

    def run(self, *args: str, name: str | None = None, command: tuple[str, ...] = (
            "sleep", "600")) -> str:
        """``docker run -d`` a busybox container; returns its name."""
        name = name or f"pt-{self.tag}-c{len(self.containers)}"
        self.containers.append(name)
        docker("run", "-d", "--name", name, *args, IMAGE, *command)
        return name

    def cleanup(self) -> None:
        for c in reversed(self.containers):
            docker("rm", "-f", c, check=False)
        for n in reversed(self.networks):
            docker("network", "rm", n, check=False)


@pytest.fixture
def res(dockerd: None, subnets: Subnets) -> Iterator[Resources]:
    """Per-test networks and containers."""
    r = Resources(subnets)
    yield r
    r.cleanup()
