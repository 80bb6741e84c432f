"""The nftables backend's decisions without a kernel: what a change writes, and how a listing
is compared with the records (the kernel tests check that the kernel takes both)."""

import ipaddress

from plugin.firewall.nftables import (
    BASE_CHAINS,
    Rendering,
    delta_batch,
    differences,
    full_batch,
    render,
)
from plugin.firewall.rules import Desired, NetworkSpec, PortSpec

A = NetworkSpec("pn-a", ipaddress.IPv4Network("10.9.0.0/24"))
B = NetworkSpec("pn-b", ipaddress.IPv4Network("10.9.1.0/24"), internal=True, icc=False)
PORT = PortSpec("pn-a", ipaddress.IPv4Address("10.9.0.2"), "tcp", 80, None, 8080)
A6 = NetworkSpec("pn-a", ipaddress.IPv4Network("10.9.0.0/24"),
                 subnet_v6=ipaddress.IPv6Network("fd09::/64"))
PORT6 = PortSpec("pn-a", ipaddress.IPv6Address("fd09::2"), "tcp", 80, None, 8080)


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


def test_a_rendering_that_remembers_renders_what_a_fresh_one_does() -> None:
    """Networks come, change in place (same bridge, new spec), and go; ports come and go.
    Each result equals a render from nothing, and none changes an earlier result (the
    backend compares them)."""
    steps = [Desired([A], []), Desired([A, B], [PORT]), Desired([A6, B], [PORT, PORT6]),
             Desired([B], []), Desired([], []), Desired([A6], [PORT6])]
    rendering = Rendering()
    results = []
    for desired in steps:
        results.append((rendering(desired), render(desired)))
    for (kept, fresh), desired in zip(results, steps, strict=True):
        assert kept == fresh == render(desired)
    assert results[2][0].chains["masq-pn-a"] != results[1][0].chains["masq-pn-a"]
    assert results[4][0].chains == {} and not any(results[4][0].elements.values())


def test_no_change_is_no_batch() -> None:
    state = render(Desired([A, B], [PORT]))
    assert delta_batch("t", state, render(Desired([A, B], [PORT]))) is None


def test_internal_and_icc_off_drop_all_that_enters_and_leaves() -> None:
    state = render(Desired([B], []))
    assert state.chains["in-pn-b"] == ("drop",)
    assert state.chains["out-pn-b"] == ('oifname != "pn-b" drop',)
    assert state.elements["outbound"] == {'"pn-b"': "jump out-pn-b"}
    assert state.elements["bridges"] == {}  # no loopback NAT onto an internal bridge
    assert state.elements["egress"] == {} and "masq-pn-b" not in state.chains
    # routing to its containers from elsewhere is still dropped before the forward drop
    assert state.elements["protected"] == {'"pn-b"': "jump raw-pn-b"}


def test_no_set_or_map_has_intervals() -> None:
    """libnftables reads every interval set's elements before each change that adds one:
    subnets are matched in the network's own chains, keys are bridges and addresses."""
    from plugin.firewall.nftables import SETS
    assert not [name for name, spec in SETS.items() if "interval" in spec]
    state = render(Desired([A6, B], [PORT, PORT6]))
    keys = [key for items in state.elements.values() for key in items]
    assert not [key for key in keys if "/" in key]


def test_direct_routing_and_masquerade_are_per_bridge_chains() -> None:
    net = NetworkSpec("pn-a", ipaddress.IPv4Network("10.9.0.0/24"),
                      subnet_v6=ipaddress.IPv6Network("fd09::/64"), trusted=("eth1",))
    state = render(Desired([net], []))
    assert state.chains["raw-pn-a"] == (
        'iifname "pn-a" return',
        'iifname { "eth1" } return',
        "ip daddr 10.9.0.0/24 fib daddr type != local drop",
        "ip6 daddr fd09::/64 fib daddr type != local drop")
    assert state.chains["masq-pn-a"] == (
        'oifname != "pn-a" ip saddr 10.9.0.0/24 masquerade',
        'oifname != "pn-a" ip6 saddr fd09::/64 masquerade')
    assert state.elements["protected"] == {'"pn-a"': "jump raw-pn-a"}
    assert state.elements["egress"] == {'"pn-a"': "jump masq-pn-a"}


def test_the_whole_table_is_replaced_in_one_transaction() -> None:
    lines = full_batch("t", render(Desired([A], [PORT]))).splitlines()
    assert lines[:3] == ["add table inet t", "delete table inet t", "add table inet t"]
    chains = [i for i, line in enumerate(lines) if line.startswith("add chain")]
    rules = [i for i, line in enumerate(lines) if line.startswith("add rule")]
    assert max(chains) < min(rules)  # a rule may jump to any chain


def listed() -> list[dict]:
    """A JSON listing as nft prints it for dual-stack network A with PORT and PORT6."""
    own = {"in-pn-a": 5, "raw-pn-a": 3, "masq-pn-a": 2}
    chain = [{"chain": {"name": n}} for n in (*BASE_CHAINS, *own)]
    rules = [{"rule": {"chain": name}} for name, (_, body) in BASE_CHAINS.items()
             for _ in body] + [{"rule": {"chain": n}} for n, count in own.items()
                               for _ in range(count)]
    sets = [
        {"set": {"name": "bridges", "type": "ifname", "elem": ["pn-a"]}},
        {"map": {"name": "inbound", "type": "ifname", "map": "verdict",
                 "elem": [["pn-a", {"jump": {"target": "in-pn-a"}}]]}},
        {"map": {"name": "outbound", "type": "ifname", "map": "verdict"}},
        {"map": {"name": "protected", "type": "string", "map": "verdict",
                 "elem": [["pn-a", {"jump": {"target": "raw-pn-a"}}]]}},
        {"map": {"name": "egress", "type": "ifname", "map": "verdict",
                 "elem": [["pn-a", {"jump": {"target": "masq-pn-a"}}]]}},
    ]
    for s, a, ip in (("", "ipv4_addr", "10.9.0.2"), ("6", "ipv6_addr", "fd09::2")):
        sets += [
            {"set": {"name": "ports" + s, "type": ["ifname", a, "inet_proto", "inet_service"],
                     "elem": [{"concat": ["pn-a", ip, "tcp", 80]}]}},
            {"set": {"name": "routed" + s, "type": ["ifname", a, "inet_proto", "inet_service"]}},
            {"set": {"name": "hairpin" + s, "type": [a, a, "inet_proto", "inet_service"],
                     "elem": [{"concat": [ip, ip, "tcp", 80]}]}},
            {"map": {"name": "port_host" + s, "type": [a, "inet_proto", "inet_service"],
                     "map": f"{a} . inet_service"}},
            {"map": {"name": "port_any" + s, "type": ["inet_proto", "inet_service"],
                     "map": f"{a} . inet_service",
                     "elem": [[{"concat": ["tcp", 8080]}, {"concat": [ip, 80]}]]}},
        ]
    return chain + rules + sets


def test_a_listing_that_matches_has_no_differences() -> None:
    assert differences(listed(), render(Desired([A6], [PORT, PORT6]))) is None


def test_differences_name_what_is_missing_or_extra() -> None:
    objects = [o for o in listed()
               if o.get("map", {}).get("name") != "port_any"
               and o.get("rule", {}).get("chain") != "in-pn-a"]
    objects.append({"chain": {"name": "in-pn-x"}})
    found = differences(objects, render(Desired([A6], [PORT, PORT6])))
    assert found == ("chain in-pn-a has 0 rule(s), not 5; chain in-pn-x is not pynet's; "
                     "map port_any is missing")
    assert differences(listed(), render(Desired([A6], [PORT]))) == \
        "set ports6 has other elements; set hairpin6 has other elements; " \
        "map port_any6 has other elements"
    assert "chain masq-pn-a has 2 rule(s), not 1" in (
        differences(listed(), render(Desired([A], [PORT, PORT6]))) or "")
    earlier = [*listed(), {"set": {"name": "subnets", "type": "ipv4_addr"}}]
    assert differences(earlier, render(Desired([A6], [PORT, PORT6]))) == \
        "set subnets is not pynet's"


def test_gateway_modes_are_per_family() -> None:
    """routed IPv4, nat-unprotected IPv6 (rules.py's twin test): neither subnet gets the
    direct-routing drop, IPv4 is not masqueraded, its published port is a @routed element
    (no DNAT, no hairpin), and in-<BR> opens ICMP and those ports of IPv4, all of IPv6."""
    net = NetworkSpec("pn-a", ipaddress.IPv4Network("10.9.0.0/24"),
                      subnet_v6=ipaddress.IPv6Network("fd09::/64"),
                      modes=("routed", "nat-unprotected"))
    routed = PortSpec("pn-a", ipaddress.IPv4Address("10.9.0.2"), "tcp", 80, None, 0, routed=True)
    state = render(Desired([net], [routed, PORT6]))
    el = state.elements
    assert "raw-pn-a" not in state.chains and el["protected"] == {}
    assert state.chains["masq-pn-a"] == ('oifname != "pn-a" ip6 saddr fd09::/64 masquerade',)
    assert el["routed"] == {'"pn-a" . 10.9.0.2 . tcp . 80': None}
    assert el["ports"] == el["hairpin"] == el["port_any"] == {}
    assert el["port_any6"] == {"tcp . 8080": "fd09::2 . 80"}
    assert state.chains["in-pn-a"][-5:] == (
        'iifname != "pn-a" meta nfproto ipv4 meta l4proto icmp accept',
        'iifname != "pn-a" oifname . ip daddr . meta l4proto . th dport @routed accept',
        'iifname != "pn-a" meta nfproto ipv6 accept',
        'iifname "pn-a" accept',
        "drop")
