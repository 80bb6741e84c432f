"""The scale benchmark's rule count per packet, from ``nft -a monitor trace`` lines: rules that
matched are reported, the ones tried before them and the rest of a chain left without a
verdict are counted from the chains' rule order. The kernel tests the tracing itself (the
scale smoke test runs it against dockerd's and pynet's real tables)."""

import pytest

from lab.bench.rulewalk import SENTINEL, chain_rules, first_and_established, rules_evaluated

FILTER = ("ip", "filter", "FORWARD")
# Docker 29's iptables layout, shortened: handles are deliberately not in numeric order.
CHAINS = {
    ("ip", "raw", "PREROUTING"): [4, 5],
    FILTER: [16, 7],
    ("ip", "filter", "DOCKER-USER"): [],
    ("ip", "filter", "DOCKER-FORWARD"): [8, 9, 10, 11, 12],
    ("ip", "filter", "DOCKER-CT"): [20, 21],
    ("ip", "filter", "DOCKER-INTERNAL"): [],
    ("ip", "filter", "DOCKER-BRIDGE"): [30, 31],
    ("ip", "filter", "DOCKER"): [40, 41],
    ("ip", "nat", "POSTROUTING"): [50, 51],
    ("inet", "pynet", "forward"): [60, 61, 62],
    ("inet", "pynet", "pn-net"): [70, 71, 72, 73],
    ("ip", "trace", "pre"): [1],
}


def line(trace_id: str, chain: tuple[str, str, str], event: str) -> str:
    return f"trace id {trace_id} {' '.join(chain)} {event}"


def rule(trace_id: str, chain: tuple[str, str, str], handle: int, verdict: str) -> str:
    return line(trace_id, chain, f"rule some match # handle {handle} (verdict {verdict})")


def packet(trace_id: str, chain: tuple[str, str, str], daddr: str = "10.1.0.2",
           ip_id: int = 7) -> str:
    return line(trace_id, chain, f'packet: iif "br-x" ip saddr 10.1.0.3 ip daddr {daddr} '
                f'ip id {ip_id} ip length 84')


def test_rules_before_a_match_and_chains_left_at_their_end_count() -> None:
    """The first packet of a connection through Docker 29's chains: raw's two rules do not
    match (policy), DOCKER-USER is empty, DOCKER-CT's two are tried, DOCKER-BRIDGE's second
    jumps to DOCKER whose two are tried, DOCKER-FORWARD accepts at its fifth."""
    trace = "\n".join([
        packet("a", ("ip", "trace", "pre")), rule("a", ("ip", "trace", "pre"), 1, "continue"),
        line("a", ("ip", "trace", "pre"), "policy accept "),
        packet("a", ("ip", "raw", "PREROUTING")),
        line("a", ("ip", "raw", "PREROUTING"), "policy accept "),
        packet("a", FILTER), rule("a", FILTER, 16, "jump DOCKER-USER"),
        rule("a", FILTER, 7, "jump DOCKER-FORWARD"),
        rule("a", ("ip", "filter", "DOCKER-FORWARD"), 8, "jump DOCKER-CT"),
        rule("a", ("ip", "filter", "DOCKER-FORWARD"), 9, "jump DOCKER-INTERNAL"),
        rule("a", ("ip", "filter", "DOCKER-FORWARD"), 10, "jump DOCKER-BRIDGE"),
        rule("a", ("ip", "filter", "DOCKER-BRIDGE"), 31, "jump DOCKER"),
        rule("a", ("ip", "filter", "DOCKER-FORWARD"), 12, "accept"),
        packet("a", ("ip", "nat", "POSTROUTING")),
        line("a", ("ip", "nat", "POSTROUTING"), "policy accept "),
    ])
    # raw 2, FORWARD 2, DOCKER-FORWARD 5, DOCKER-CT 2, DOCKER-BRIDGE 2, DOCKER 2, nat 2
    assert rules_evaluated(trace, CHAINS, "trace") == [('iif "br-x" ip saddr 10.1.0.3 '
                                                        'ip daddr 10.1.0.2 ip id 7 '
                                                        'ip length 84', 17)]


def test_verdict_maps_goto_and_return() -> None:
    """A vmap rule is one rule; goto replaces the chain it came from; return ends a chain
    without trying the rest; a reported return counts the chain's remaining rules."""
    net = ("inet", "pynet", "pn-net")
    goto_return = "\n".join([
        packet("b", ("inet", "pynet", "forward")),
        rule("b", ("inet", "pynet", "forward"), 61, "goto pn-net"),
        rule("b", net, 71, "return"),
        line("b", ("inet", "pynet", "forward"), "policy accept "),
    ])
    # forward: 2 (60 tried, 61 goto); pn-net: 2 (70, 71 return); a goto does not come back,
    # so forward's 62 is never tried: the return ends the base chain (its policy)
    assert rules_evaluated(goto_return, CHAINS, "trace")[0][1] == 2 + 2
    goto_silent_end = "\n".join([
        packet("d", ("inet", "pynet", "forward")),
        rule("d", ("inet", "pynet", "forward"), 61, "goto pn-net"),
        line("d", ("inet", "pynet", "forward"), "policy accept "),
    ])
    # forward: 2; pn-net ended silently: all 4 tried
    assert rules_evaluated(goto_silent_end, CHAINS, "trace")[0][1] == 2 + 4
    jump_reported_return = "\n".join([
        packet("c", ("inet", "pynet", "forward")),
        rule("c", ("inet", "pynet", "forward"), 60, "jump pn-net"),
        rule("c", net, 70, "continue"),
        line("c", net, "return "),
        rule("c", ("inet", "pynet", "forward"), 62, "accept"),
    ])
    # forward: 60 (1), pn-net: 70 then the three others (4), forward: 61, 62 (2)
    assert rules_evaluated(jump_reported_return, CHAINS, "trace")[0][1] == 1 + 4 + 2


def test_packets_in_order_and_the_sentinel_left_out() -> None:
    trace = "\n".join([
        packet("s", ("ip", "trace", "pre"), daddr=SENTINEL),
        packet("s", ("ip", "nat", "POSTROUTING"), daddr=SENTINEL),
        line("s", ("ip", "nat", "POSTROUTING"), "policy accept "),
        packet("f", ("ip", "raw", "PREROUTING")),
        line("f", ("ip", "raw", "PREROUTING"), "policy accept "),
        packet("e", ("ip", "raw", "PREROUTING"), daddr="10.1.0.3"),
        rule("e", ("ip", "raw", "PREROUTING"), 5, "drop"),
    ])
    walked = rules_evaluated(trace, CHAINS, "trace")
    assert [n for _, n in walked] == [2, 2]
    assert first_and_established(walked) == (2.0, 2.0)


def test_a_trace_id_reused_by_the_next_packet_starts_a_new_walk() -> None:
    """The kernel makes trace ids from the packet buffer's address: a later packet in a
    reused buffer has the same id and another IP id."""
    raw = ("ip", "raw", "PREROUTING")
    trace = "\n".join([packet("r", raw, ip_id=1), line("r", raw, "policy accept "),
                       packet("r", raw, ip_id=2), rule("r", raw, 4, "drop")])
    assert [n for _, n in rules_evaluated(trace, CHAINS, "trace")] == [2, 1]


def test_an_event_in_a_chain_the_packet_never_entered_is_an_error() -> None:
    trace = "\n".join([packet("x", ("ip", "raw", "PREROUTING")),
                       rule("x", ("ip", "filter", "DOCKER"), 40, "accept")])
    with pytest.raises(ValueError, match="never entered"):
        rules_evaluated(trace, CHAINS, "trace")


def test_a_probe_with_one_packet_is_refused() -> None:
    with pytest.raises(RuntimeError, match="1 packet"):
        first_and_established([("p", 3)])


def test_chain_rules_reads_handles_in_listing_order() -> None:
    listing = {"nftables": [
        {"metainfo": {"json_schema_version": 1}},
        {"table": {"family": "ip", "name": "filter", "handle": 1}},
        {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 2}},
        {"chain": {"family": "ip", "table": "filter", "name": "EMPTY", "handle": 3}},
        {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 9}},
        {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 4}},
    ]}
    assert chain_rules(listing) == {FILTER: [9, 4], ("ip", "filter", "EMPTY"): []}
