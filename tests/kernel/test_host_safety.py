"""Network creates that would take from the host are refused, and IPv4 works without IPv6.

In a throwaway namespace (thread_netns.py), with a real driver: a pool over one of the host's
routes is refused before anything is built, and a host booted with ``ipv6.disable=1`` (no
``net/ipv6`` sysctl tree: here a sysctl root without it) or without ip6tables (here a PATH
without it) still gets IPv4 networks, and refuses ``--ipv6`` ones with the reason.
"""

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from lab import driver_call, hex_id, link, network_body
from lab.netns import thread_in_netns
from plugin.app import create_app
from plugin.config import Settings
from plugin.service import build_driver

LAN = "10.231.251.0/24"  # a route of the "host" (the namespace)


def client_in_netns(tmp_path: Path, sysctl_root: str) -> Iterator[FlaskClient]:
    """A driver in a fresh namespace with a LAN route, forwarding on, and its HTTP client."""
    with thread_in_netns("pns"):
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
        subprocess.run(["ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan1"],
                       check=True)
        subprocess.run(["ip", "addr", "add", "10.231.251.1/24", "dev", "lan0"], check=True)
        for end in ("lan0", "lan1"):
            subprocess.run(["ip", "link", "set", end, "up"], check=True)
        driver = build_driver(Settings(name=f"pynet-s{secrets.token_hex(3)}",
                                       state_dir=str(tmp_path / "state"),
                                       sysctl_root=sysctl_root))
        driver.ready.set()
        try:
            yield create_app(driver).test_client()
        finally:
            driver.close()


def create(client: FlaskClient, pool: str, gateway: str, bridge: str,
           pool_v6: str | None = None) -> dict[str, Any]:
    return driver_call(client, "CreateNetwork", network_body(
        hex_id(), pool, gateway, generic={"com.docker.network.bridge.name": bridge},
        pool_v6=pool_v6))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[FlaskClient]:
    yield from client_in_netns(tmp_path, "/proc/sys")


@pytest.mark.parametrize("pool,gateway", [(LAN, "10.231.251.2/24"),
                                          ("10.231.251.128/25", "10.231.251.129/25"),
                                          ("10.231.0.0/16", "10.231.0.1/16")])
def test_pool_over_a_host_route_is_refused_and_builds_nothing(client: FlaskClient, pool: str,
                                                               gateway: str) -> None:
    reply = create(client, pool, gateway, "pnsbr0")
    assert reply["Err"] == (f"subnet {pool} overlaps the host's route to {LAN} via lan0: the "
                            "network's bridge would take those addresses from it; choose "
                            "another subnet")
    assert link("pnsbr0") is None


def test_ipv4_network_on_a_host_without_ipv6(tmp_path: Path) -> None:
    """No net/ipv6 tree (ipv6.disable=1): the IPv6 settings pynet makes are skipped."""
    root = tmp_path / "sys"
    (root / "net").mkdir(parents=True)
    for tree in ("ipv4", "core", "bridge"):
        if os.path.exists(f"/proc/sys/net/{tree}"):
            (root / "net" / tree).symlink_to(f"/proc/sys/net/{tree}")
    for client in client_in_netns(tmp_path, str(root)):
        assert create(client, "10.231.252.0/24", "10.231.252.1/24", "pnsbr1") == {}
        found = link("pnsbr1")
        assert found is not None and found["linkinfo"]["info_kind"] == "bridge"
        reply = create(client, "10.231.253.0/24", "10.231.253.1/24", "pnsbr2",
                       pool_v6="fd7e:231:0:fd00::/64")
        assert reply["Err"].startswith("IPv6 is disabled on the host"), reply
        assert link("pnsbr2") is None


def test_a_host_without_ip6tables_refuses_ipv6_networks(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the iptables backend needs ip6tables; with ``auto`` either backend may be the one
    writing, so IPv6 networks are refused (IPv4 ones work)."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for directory in os.environ["PATH"].split(":"):
        for tool in Path(directory).glob("*") if Path(directory).is_dir() else []:
            if not tool.name.startswith("ip6tables") and not (tools / tool.name).exists():
                (tools / tool.name).symlink_to(tool)
    monkeypatch.setenv("PATH", str(tools))
    for client in client_in_netns(tmp_path, "/proc/sys"):
        Path("/proc/sys/net/ipv6/conf/all/forwarding").write_text("1")
        reply = create(client, "10.231.253.0/24", "10.231.253.1/24", "pnsbr3",
                       pool_v6="fd7e:231:0:fd00::/64")
        assert "cannot write IPv6 rules here (the host has no ip6tables)" in reply["Err"], reply
        assert link("pnsbr3") is None
        assert create(client, "10.231.252.0/24", "10.231.252.1/24", "pnsbr4") == {}
