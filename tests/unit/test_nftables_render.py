"""The nftables backend's decisions without a kernel: what a change writes, and how a listing
is compared with the records (the kernel tests check that the kernel takes both)."""

import ipaddress

from plugin.firewall.nftables import delta_batch, differences, full_batch, render
from plugin.firewall.rules import Desired, NetworkSpec, PortSpec

A = NetworkSpec("pn-a", ipaddress.IPv4Network("10.9.0.0/24"))
B = NetworkSpec("pn-b", ipaddress.IPv4Network("10.9.1.0/24"), internal=True, icc=False)
PORT = PortSpec("pn-a", ipaddress.IPv4Address("10.9.0.2"), "tcp", 80, None, 8080)


def test_a_network_create_only_adds() -> None:
    batch = delta_batch("t", render(Desired([A], [])), render(Desired([B, A], [])))
    assert batch is not None
    assert all(line.startswith("add ") for line in batch.splitlines())
    assert "add chain inet t in-pn-b" in batch
    assert 'add element inet t outbound { "pn-b" : jump out-pn-b }' in batch


def test_a_network_rm_removes_the_elements_before_the_chain() -> None:
    batch = delta_batch("t", render(Desired([B, A], [PORT])), render(Desired([B], [])))
    assert batch is not None
    lines = batch.splitlines()
    assert 'delete element inet t inbound { "pn-a" }' in lines
    assert lines.index('delete element inet t inbound { "pn-a" }') < \
        lines.index("delete chain inet t in-pn-a")
    assert "delete element inet t port_any { tcp . 8080 }" in lines
    assert not any(line.startswith("add ") for line in lines)


def test_no_change_is_no_batch() -> None:
    state = render(Desired([A, B], [PORT]))
    assert delta_batch("t", state, render(Desired([A, B], [PORT]))) is None


def test_internal_and_icc_off_drop_all_that_enters_and_leaves() -> None:
    state = render(Desired([B], []))
    assert state.chains["in-pn-b"] == ("drop",)
    assert state.chains["out-pn-b"] == ('oifname != "pn-b" drop',)
    assert state.elements["outbound"] == {'"pn-b"': "jump out-pn-b"}
    assert state.elements["bridges"] == {}  # no loopback NAT onto an internal bridge
    assert state.elements["masquerading"] == {}


def test_the_whole_table_is_replaced_in_one_transaction() -> None:
    lines = full_batch("t", render(Desired([A], [PORT]))).splitlines()
    assert lines[:3] == ["add table inet t", "delete table inet t", "add table inet t"]
    chains = [i for i, line in enumerate(lines) if line.startswith("add chain")]
    rules = [i for i, line in enumerate(lines) if line.startswith("add rule")]
    assert max(chains) < min(rules)  # a rule may jump to any chain


def listed() -> list[dict]:
    """A JSON listing as nft prints it for network A with PORT."""
    chain = [{"chain": {"name": n}} for n in ("raw", "forward", "published", "nat-prerouting",
                                              "nat-output", "nat-postrouting", "in-pn-a")]
    rules = [{"rule": {"chain": "raw"}}] * 5 + [{"rule": {"chain": "forward"}}] * 2 + \
        [{"rule": {"chain": "published"}}] * 2 + [{"rule": {"chain": "nat-prerouting"}}] + \
        [{"rule": {"chain": "nat-output"}}] + [{"rule": {"chain": "nat-postrouting"}}] * 3 + \
        [{"rule": {"chain": "in-pn-a"}}] * 4
    sets = [
        {"set": {"name": "bridges", "type": "ifname", "elem": ["pn-a"]}},
        {"set": {"name": "subnets", "type": "ipv4_addr",
                 "elem": [{"prefix": {"addr": "10.9.0.0", "len": 24}}]}},
        {"set": {"name": "own", "type": ["ipv4_addr", "ifname"],
                 "elem": [{"concat": [{"prefix": {"addr": "10.9.0.0", "len": 24}}, "pn-a"]}]}},
        {"set": {"name": "trusted", "type": ["ipv4_addr", "ifname"]}},
        {"set": {"name": "masquerading", "type": "ipv4_addr",
                 "elem": [{"prefix": {"addr": "10.9.0.0", "len": 24}}]}},
        {"map": {"name": "inbound", "type": "ifname", "map": "verdict",
                 "elem": [["pn-a", {"jump": {"target": "in-pn-a"}}]]}},
        {"map": {"name": "outbound", "type": "ifname", "map": "verdict"}},
        {"set": {"name": "ports", "type": ["ifname", "ipv4_addr", "inet_proto", "inet_service"],
                 "elem": [{"concat": ["pn-a", "10.9.0.2", "tcp", 80]}]}},
        {"set": {"name": "hairpin", "type": ["ipv4_addr", "ipv4_addr", "inet_proto",
                                             "inet_service"],
                 "elem": [{"concat": ["10.9.0.2", "10.9.0.2", "tcp", 80]}]}},
        {"map": {"name": "port_host", "type": ["ipv4_addr", "inet_proto", "inet_service"],
                 "map": "ipv4_addr . inet_service"}},
        {"map": {"name": "port_any", "type": ["inet_proto", "inet_service"],
                 "map": "ipv4_addr . inet_service",
                 "elem": [[{"concat": ["tcp", 8080]}, {"concat": ["10.9.0.2", 80]}]]}},
    ]
    return chain + rules + sets


def test_a_listing_that_matches_has_no_differences() -> None:
    assert differences(listed(), render(Desired([A], [PORT]))) is None


def test_differences_name_what_is_missing_or_extra() -> None:
    objects = [o for o in listed()
               if o.get("map", {}).get("name") != "port_any"
               and o.get("rule", {}).get("chain") != "in-pn-a"]
    objects.append({"chain": {"name": "in-pn-x"}})
    found = differences(objects, render(Desired([A], [PORT])))
    assert found == ("chain in-pn-a has 0 rule(s), not 4; chain in-pn-x is not pynet's; "
                     "map port_any is missing")
    assert "set ports has other elements" in (
        differences(listed(), render(Desired([A], []))) or "")
