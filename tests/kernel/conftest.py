"""A driver wired to the host's kernel, for kernel tests that send no traffic."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import new_instance, purge_instance
from plugin.config import Settings
from plugin.driver import Driver
from plugin.service import build_driver


@pytest.fixture(params=["iptables", "nftables"])
def driver(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Driver]:
    """A driver on the host under a throwaway instance name, once per firewall backend."""
    inst = new_instance()
    d = build_driver(Settings(name=inst.name, state_dir=str(tmp_path), call_deadline=0.3,
                              firewall_backend=request.param))
    d.ready.set()
    yield d
    d.reap()
    d.close()
    purge_instance(inst)
