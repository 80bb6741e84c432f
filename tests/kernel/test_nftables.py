"""The nftables backend against the kernel: a throwaway network namespace's nftables, so
nothing touches the host's tables. What the table does to packets is the end-to-end tests'
(attack matrix and differential on Docker 29's nftables backend)."""

import ipaddress
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import run
from lab.netns import thread_in_netns
from plugin.firewall.libnft import FD_SETSIZE
from plugin.firewall.nftables import FAMILY, NFTables, render
from plugin.firewall.rules import Desired, NetworkSpec, PortSpec

TABLE = "pynet-kt"
NETWORKS = [
    NetworkSpec("pn-kt-a", ipaddress.IPv4Network("10.9.0.0/24"),
                subnet_v6=ipaddress.IPv6Network("fd09::/64")),
    NetworkSpec("pn-kt-b", ipaddress.IPv4Network("10.9.1.0/24"), internal=True, icc=False),
    NetworkSpec("pn-kt-c", ipaddress.IPv4Network("10.9.2.0/24"), masquerade=False,
                trusted=("eth9",)),
    NetworkSpec("pn-kt-d", ipaddress.IPv4Network("10.9.3.0/24"),
                subnet_v6=ipaddress.IPv6Network("fd09:3::/64"),
                modes=("routed", "nat-unprotected")),
    NetworkSpec("pn-kt-e", ipaddress.IPv4Network("10.9.4.0/24"),
                subnet_v6=ipaddress.IPv6Network("fd09:4::/64"),
                modes=("nat-unprotected", "routed")),
]
PORTS = [
    PortSpec("pn-kt-a", ipaddress.IPv4Address("10.9.0.2"), "tcp", 80, None, 8080),
    PortSpec("pn-kt-a", ipaddress.IPv4Address("10.9.0.2"), "udp", 53,
             ipaddress.IPv4Address("192.0.2.5"), 5353),
    PortSpec("pn-kt-a", ipaddress.IPv6Address("fd09::2"), "tcp", 80, None, 8080),
    PortSpec("pn-kt-a", ipaddress.IPv6Address("fd09::2"), "udp", 53,
             ipaddress.IPv6Address("2001:db8::5"), 5353),
    PortSpec("pn-kt-d", ipaddress.IPv4Address("10.9.3.2"), "tcp", 80, None, 0, routed=True),
    PortSpec("pn-kt-e", ipaddress.IPv6Address("fd09:4::2"), "udp", 53, None, 0, routed=True),
]
ALL = Desired(NETWORKS, PORTS)


@pytest.fixture
def nft() -> Iterator[NFTables]:
    """A backend in a namespace of its own (the test's thread is in it until the end)."""
    with thread_in_netns("pnkn"):
        yield NFTables(TABLE)


def listing() -> dict:
    """The table as ``nft -j`` lists it, by object kind and name."""
    done = run(["nft", "-j", "list", "table", FAMILY, TABLE])
    objects = json.loads(done.stdout)["nftables"]
    return {kind: {o[kind]["name"]: o[kind] for o in objects if kind in o}
            for kind in ("chain", "set", "map")}


def test_apply_writes_the_rendered_table_and_then_nothing(nft: NFTables) -> None:
    assert nft.apply(lambda: ALL)
    chains = listing()["chain"]
    assert {"raw", "forward", "published", "nat-prerouting", "nat-output",
            "nat-postrouting"} <= chains.keys()
    assert chains["forward"]["hook"] == "forward"
    assert {f"in-{n.bridge}" for n in NETWORKS} <= chains.keys()
    assert nft.repair_needed(lambda: ALL) is None
    assert not nft.apply(lambda: ALL)
    assert not nft.apply(lambda: ALL, fresh=True)


def test_a_change_touches_only_its_network(nft: NFTables) -> None:
    nft.apply(lambda: ALL)
    smaller = Desired(NETWORKS[1:], [])
    assert nft.apply(lambda: smaller)
    tables = listing()
    assert "in-pn-kt-a" not in tables["chain"]
    assert tables["map"]["port_any"].get("elem") is None
    assert nft.repair_needed(lambda: smaller) is None
    assert nft.apply(lambda: ALL, keep=True)
    assert nft.apply(lambda: smaller, keep=True) is False  # only adds: a leftover stays
    assert "in-pn-kt-a" in listing()["chain"]


@pytest.mark.parametrize("damage", [
    "flush table inet pynet-kt",
    "delete table inet pynet-kt",
    "delete chain inet pynet-kt in-pn-kt-b",
    "delete element inet pynet-kt ports { \"pn-kt-a\" . 10.9.0.2 . tcp . 80 }",
    "flush chain inet pynet-kt raw",
    "flush chain inet pynet-kt raw-pn-kt-a",
    "delete element inet pynet-kt egress { \"pn-kt-a\" }",
])
def test_damage_is_seen_and_repaired(nft: NFTables, damage: str) -> None:
    nft.apply(lambda: ALL)
    if "in-pn-kt-b" in damage:  # a chain a map jumps to cannot go before the element
        run(["nft", f'delete element inet {TABLE} inbound {{ "pn-kt-b" }}'])
    run(["nft", damage])
    assert nft.repair_needed(lambda: ALL) is not None
    assert nft.apply(lambda: ALL, fresh=True)
    assert nft.repair_needed(lambda: ALL) is None


def test_a_change_after_damage_rewrites_the_table(nft: NFTables) -> None:
    """The remembered picture is stale once someone deleted the table: the change fails and
    the whole table is written instead."""
    nft.apply(lambda: Desired(NETWORKS[:1], []))
    run(["nft", "delete", "table", "inet", TABLE])
    assert nft.apply(lambda: ALL)
    assert nft.repair_needed(lambda: ALL) is None


def test_the_check_lists_the_table_only_after_someone_else_changed_it(
        nft: NFTables, monkeypatch: pytest.MonkeyPatch) -> None:
    """pynet's own change moves the ruleset's generation by one from a table the check found
    in place: the next check knows what the table holds without listing it. Any other
    transaction in between (here: another table) makes it list again."""
    nft.apply(lambda: Desired(NETWORKS[:1], []))
    assert nft.repair_needed(lambda: Desired(NETWORKS[:1], [])) is None
    assert nft.apply(lambda: ALL)
    listed: list[str] = []
    real = nft.nft.table
    monkeypatch.setattr(nft.nft, "table", lambda *a: listed.append(a[1]) or real(*a))
    assert nft.repair_needed(lambda: ALL) is None
    assert listed == []
    run(["nft", "add table inet pynet-kt-other"])
    assert nft.apply(lambda: Desired(NETWORKS[:2], []))
    assert nft.repair_needed(lambda: Desired(NETWORKS[:2], [])) is None
    assert listed == [TABLE]


def test_a_run_of_own_changes_needs_no_listing(
        nft: NFTables, monkeypatch: pytest.MonkeyPatch) -> None:
    """Networks come and go between two checks: every transaction since the last listing was
    one of pynet's, so the check knows the table without listing it."""
    nft.apply(lambda: Desired(NETWORKS[:1], []))
    assert nft.repair_needed(lambda: Desired(NETWORKS[:1], [])) is None
    listed: list[str] = []
    real = nft.nft.table
    monkeypatch.setattr(nft.nft, "table", lambda *a: listed.append(a[1]) or real(*a))
    for count in (2, 3, 5, 4, 2):
        assert nft.apply(lambda count=count: Desired(NETWORKS[:count], PORTS[:count]))
    assert nft.repair_needed(lambda: Desired(NETWORKS[:2], PORTS[:2])) is None
    # records ahead of the rules (a network's owed rules): pynet's next write, not damage
    assert nft.repair_needed(lambda: Desired(NETWORKS[:3], PORTS[:2])) is None
    assert listed == []
    last = chain_rules("in-pn-kt-a")[-1]
    run(["nft", "delete", "rule", FAMILY, TABLE, "in-pn-kt-a", "handle", str(last["handle"])])
    run(["nft", "add table inet pynet-kt-other"])  # the damage is not pynet's change
    assert nft.repair_needed(lambda: Desired(NETWORKS[:2], PORTS[:2])) is not None
    assert listed == [TABLE]


def test_a_listing_while_another_transaction_runs_proves_nothing(
        nft: NFTables, monkeypatch: pytest.MonkeyPatch) -> None:
    """The records may be ahead of the rules for a moment (a new network's rules are owed)
    and the listing may show the table before or after a concurrent change: the check says
    nothing then, and the next one, with no transaction during its listing, finds the
    damage."""
    nft.apply(lambda: Desired(NETWORKS[:1], []))
    run(["nft", "flush", "chain", FAMILY, TABLE, "in-pn-kt-a"])
    real = nft.nft.table

    def listing_while_another_change(*args: str) -> object:
        objects = real(*args)
        run(["nft", "add table inet pynet-kt-other"])
        return objects

    monkeypatch.setattr(nft.nft, "table", listing_while_another_change)
    assert nft.repair_needed(lambda: Desired(NETWORKS[:1], [])) is None
    monkeypatch.setattr(nft.nft, "table", real)
    assert "in-pn-kt-a" in (nft.repair_needed(lambda: Desired(NETWORKS[:1], [])) or "")


def chain_rules(chain: str) -> list[dict]:
    """The rules of one of the table's chains, as ``nft -j`` lists them."""
    done = run(["nft", "-j", "list", "chain", FAMILY, TABLE, chain])
    return [o["rule"] for o in json.loads(done.stdout)["nftables"] if "rule" in o]


def test_remove_all(nft: NFTables) -> None:
    assert not nft.remove_all()
    nft.apply(lambda: ALL)
    assert nft.remove_all()
    assert run(["nft", "list", "table", "inet", TABLE], check=False).returncode != 0
    assert not nft.remove_all()


def test_the_rendered_elements_read_back_as_written(nft: NFTables) -> None:
    """``differences`` compares the listing with what ``render`` writes: every set and map
    must read back exactly, or each periodic check would rewrite the table."""
    nft.apply(lambda: ALL)
    state = render(ALL)
    tables = listing()
    for kind in ("set", "map"):
        for name, item in tables[kind].items():
            assert len(item.get("elem", [])) == len(state.elements[name]), name


DESCRIPTORS = """
import os, resource
from plugin.errors import KernelError
from plugin.firewall.libnft import FD_SETSIZE, Nft
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * FD_SETSIZE), hard))
BATCH = "add table ip pynet-kt-fd; add chain ip pynet-kt-fd c; delete table ip pynet-kt-fd"
early, late = Nft(), Nft()
early.run(BATCH)  # made while few descriptors are open, as pynet's is at start
held = [os.open(os.devnull, os.O_RDONLY) for _ in range(FD_SETSIZE + 10)]
early.run(BATCH)
print("early context: still works")
try:
    late.run(BATCH)
    print("late context: ran")
except KernelError as exc:
    print(f"late context: {exc}")
"""


def test_a_context_never_gets_a_descriptor_select_cannot_take() -> None:
    """libnftables waits for its socket with select() when it sends a transaction: a context
    made once the process holds over FD_SETSIZE descriptors would abort the process at its
    first write. pynet's context, made early, keeps working; one made late is refused with an
    error instead. In a child process (an abort, the raised limit and the thousand
    descriptors stay out of pytest) in a network namespace of its own (the batch writes a
    table)."""
    done = subprocess.run(["unshare", "--net", sys.executable, "-c", DESCRIPTORS],
                          capture_output=True, text=True,
                          timeout=60, check=False, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr  # an abort is -6, with glibc's "bit out of range"
    early, late = done.stdout.splitlines()
    assert early == "early context: still works"
    refused = re.fullmatch(r"late context: libnftables' socket would get descriptor (\d+) or "
                           r"near it, and it cannot wait on descriptors from (\d+) up .*"
                           r"PYNET_FIREWALL_BACKEND=iptables", late)
    assert refused is not None, late
    assert int(refused[1]) >= int(refused[2]) == FD_SETSIZE
