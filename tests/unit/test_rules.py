"""rules.py and the pure half of iptables.py: rendered rule sets, hook placement, batches.

Expected rules are written out in full for each option. Batches are checked by applying them
to a model of ``iptables-restore --noflush``, so convergence and idempotence are tested for the
chain states each engine's dockerd really leaves behind (20.10's isolation stages, 29's
DOCKER-FORWARD, reordered jumps, duplicates, other pynet instances, an earlier release's
chains).
"""

import copy
import ipaddress
import itertools
import re

import pytest

from plugin.firewall.iptables import (
    Dump,
    build_batch,
    hook_fix,
    keeping_leftovers,
    parse_save,
    teardown_batch,
)
from plugin.firewall.rules import (
    FORWARD_HEAD,
    ISOLATION_HEAD,
    RAW_HEAD,
    Chains,
    NetworkSpec,
    PortSpec,
    RuleSet,
    docker_iptables,
    docker_layout,
    hooks,
    render,
)

C = Chains("PT")
NET = ipaddress.IPv4Network("10.231.130.0/24")
CIP = ipaddress.IPv4Address("10.231.130.2")
LOOPBACK = ipaddress.IPv4Address("127.0.0.1")

BASELINE = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
COMMIT
"""

ENGINE_29 = """\
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -d 172.17.0.2/32 ! -i docker0 -j DROP
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-BRIDGE - [0:0]
:DOCKER-CT - [0:0]
:DOCKER-FORWARD - [0:0]
:DOCKER-INTERNAL - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-FORWARD
-A DOCKER ! -i docker0 -o docker0 -j DROP
-A DOCKER-BRIDGE -o docker0 -j DOCKER
-A DOCKER-CT -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A DOCKER-FORWARD -j DOCKER-CT
-A DOCKER-FORWARD -j DOCKER-INTERNAL
-A DOCKER-FORWARD -j DOCKER-BRIDGE
-A DOCKER-FORWARD -i docker0 -j ACCEPT
COMMIT
""" + BASELINE[BASELINE.index("*nat"):].replace("-A DOCKER -i docker0 -j RETURN\n", "")

NO_DOCKER = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
"""


def restore(dump: Dump, batch: str | None) -> Dump:
    """A model of ``iptables-restore --noflush`` for the commands pynet writes.

    Like the real thing it refuses what the kernel would refuse (deleting a rule that is not
    there, inserting past the end, dropping a chain that still has rules).
    """
    tables = copy.deepcopy(dump.tables)
    table: dict[str, list[str]] = {}
    for line in (batch or "").splitlines():
        if line.startswith("*"):
            table = tables.setdefault(line[1:], {})
        elif line.startswith(":"):
            table[line[1:].split()[0]] = []  # with --noflush: create, or flush
        elif line.startswith("-"):
            op, chain, *rest = line.split(" ", 2)
            rule = rest[0] if rest else ""
            rules = table.setdefault(chain, [])  # built-in chains come with their table
            if op == "-A":
                rules.append(rule)
            elif op == "-I":
                position, rule = rule.split(" ", 1)
                assert 1 <= int(position) <= len(rules) + 1, f"bad position in {line!r}"
                rules.insert(int(position) - 1, rule)
            elif op == "-D" and rule.isdigit():
                assert 1 <= int(rule) <= len(rules), f"{line!r}: no such rule number"
                del rules[int(rule) - 1]
            elif op == "-D":
                assert rule in rules, f"{line!r}: no such rule"
                rules.remove(rule)
            elif op == "-F":
                rules.clear()
            elif op == "-X":
                assert not rules, f"{line!r}: chain not empty"
                del table[chain]
            else:
                raise AssertionError(f"unexpected command {line!r}")
    return Dump(tables)


def converge(rules: RuleSet, dump: Dump) -> Dump:
    """Apply once; a second batch must then be empty (the steady state costs no write)."""
    after = restore(dump, build_batch(rules, dump))
    assert build_batch(rules, after) is None, "a second apply would change something"
    return after


def one(**kwargs: object) -> NetworkSpec:
    return NetworkSpec("pt-br0", NET, **kwargs)  # type: ignore[arg-type]


# -- render ----------------------------------------------------------------------------------

FORWARD_RULES = ["-o pt-br0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                 "-o pt-br0 -j PT-PORTS", "-i pt-br0 -o pt-br0 -j ACCEPT", "-o pt-br0 -j DROP"]
RAW_RULES = ["-s 127.0.0.0/8 -i pt-br0 -j DROP", "-d 127.0.0.0/8 -i pt-br0 -j DROP",
             "-d 10.231.130.0/24 ! -i pt-br0 -m addrtype ! --dst-type LOCAL -j DROP"]


def test_plain_network_accepts_only_what_may_enter_its_bridge() -> None:
    rules = render(C, [one()], [], docker_stages=False)
    assert rules.chains["filter"] == {"PT-FORWARD": FORWARD_HEAD + FORWARD_RULES,
                                      "PT-EGRESS": ["-i pt-br0 -j ACCEPT"], "PT-PORTS": []}
    assert rules.chains["raw"] == {"PT-RAW": RAW_HEAD + RAW_RULES}
    assert rules.chains["nat"] == {
        "PT-DNAT": [],
        "PT-POSTROUTING": ["-s 10.231.130.0/24 ! -o pt-br0 -j MASQUERADE",
                           "-s 127.0.0.0/8 -o pt-br0 -j MASQUERADE"],
    }


@pytest.mark.parametrize("internal,icc,masquerade,docker_stages",
                         list(itertools.product([False, True], repeat=4)))
def test_every_option_combination(internal: bool, icc: bool, masquerade: bool,
                                  docker_stages: bool) -> None:
    port = PortSpec("pt-br0", CIP, "tcp", 80, None, 18080, icc=icc)
    rules = render(C, [one(internal=internal, icc=icc, masquerade=masquerade)],
                   [] if internal else [port], docker_stages)
    f, nat, raw = rules.chains["filter"], rules.chains["nat"], rules.chains["raw"]["PT-RAW"]
    intra = ["-i pt-br0 -o pt-br0 -j ACCEPT"] if icc else []
    assert raw[-1] == RAW_RULES[-1]  # nothing routed from elsewhere reaches the subnet
    # An internal network's crossings are dropped above the shared reply accept.
    drops = ["-i pt-br0 ! -o pt-br0 -j DROP", "! -i pt-br0 -o pt-br0 -j DROP"] if internal else []
    head = len(drops) + len(FORWARD_HEAD)
    assert f["PT-FORWARD"][:head] == drops + FORWARD_HEAD and raw[:3] == RAW_HEAD
    f["PT-FORWARD"], raw = f["PT-FORWARD"][head:], raw[3:]
    if internal:
        assert f["PT-FORWARD"] == intra + ["-o pt-br0 -j DROP", "-i pt-br0 -j DROP"]
        assert f["PT-EGRESS"] == []
        assert raw == RAW_RULES[2:]  # no route_localnet on internal bridges
        assert nat == {"PT-DNAT": [], "PT-POSTROUTING": []}
    else:
        assert f["PT-FORWARD"] == FORWARD_RULES[:2] + intra + FORWARD_RULES[3:]
        assert f["PT-EGRESS"] == ["-i pt-br0 -j ACCEPT"]
        assert raw == RAW_RULES
        masq = "-s 10.231.130.0/24 ! -o pt-br0 -j MASQUERADE"
        assert (masq in nat["PT-POSTROUTING"]) == masquerade
        peer = ("-d 10.231.130.2/32 -i pt-br0 -o pt-br0 -p tcp -m tcp --dport 80 "
                "-m conntrack --ctstate DNAT -j ACCEPT")
        assert (peer in f["PT-PORTS"]) == (not icc)
        assert nat["PT-DNAT"] == [
            "-p tcp -m tcp --dport 18080 -j DNAT --to-destination 10.231.130.2:80"]
    isolation = ("-i pt-br0 ! -o pt-br0 -j DROP" if internal else
                 "-i pt-br0 ! -o pt-br0 -m conntrack ! --ctstate DNAT -j DOCKER-ISOLATION-STAGE-2")
    assert f.get("PT-ISOLATION") == (ISOLATION_HEAD + [isolation] if docker_stages else None)
    assert rules.hooks == hooks(C, docker_stages)


def test_trusted_host_interfaces_may_route_to_published_ports() -> None:
    port = PortSpec("pt-br0", CIP, "tcp", 80, None, 18080, trusted=("eth1", "vpn0"))
    rules = render(C, [one(trusted=("eth1", "vpn0"))], [port], False)
    assert rules.chains["raw"]["PT-RAW"] == [
        *RAW_HEAD, *RAW_RULES[:2], "-d 10.231.130.0/24 -i eth1 -j RETURN",
        "-d 10.231.130.0/24 -i vpn0 -j RETURN", RAW_RULES[2]]
    assert rules.chains["filter"]["PT-PORTS"][1:] == [
        "-d 10.231.130.2/32 -i eth1 -o pt-br0 -p tcp -m tcp --dport 80 -j ACCEPT",
        "-d 10.231.130.2/32 -i vpn0 -o pt-br0 -p tcp -m tcp --dport 80 -j ACCEPT"]


def test_published_ports_accept_only_dnatted_connections() -> None:
    """-p 8080:80 -p 127.0.0.1:8081:80/udp -P --expose 9000: a port rule needs the DNAT, so
    routing to the container address directly reaches nothing, as with Docker 28+."""
    ports = [PortSpec("pt-br0", CIP, "tcp", 80, None, 8080),
             PortSpec("pt-br0", CIP, "udp", 80, LOOPBACK, 8081),
             PortSpec("pt-br0", CIP, "tcp", 9000, None, 32779)]
    rules = render(C, [one()], ports, docker_stages=False)
    dnatted = "-m conntrack --ctstate DNAT -j ACCEPT"
    assert rules.chains["filter"]["PT-PORTS"] == [
        f"-d 10.231.130.2/32 ! -i pt-br0 -o pt-br0 -p tcp -m tcp --dport 80 {dnatted}",
        f"-d 10.231.130.2/32 ! -i pt-br0 -o pt-br0 -p udp -m udp --dport 80 {dnatted}",
        f"-d 10.231.130.2/32 ! -i pt-br0 -o pt-br0 -p tcp -m tcp --dport 9000 {dnatted}"]
    assert rules.chains["nat"]["PT-DNAT"] == [
        "-p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.231.130.2:80",
        "-d 127.0.0.1/32 -p udp -m udp --dport 8081 -j DNAT --to-destination 10.231.130.2:80",
        "-p tcp -m tcp --dport 32779 -j DNAT --to-destination 10.231.130.2:9000"]
    assert rules.chains["nat"]["PT-POSTROUTING"][2:] == [
        "-s 10.231.130.2/32 -d 10.231.130.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE",
        "-s 10.231.130.2/32 -d 10.231.130.2/32 -p udp -m udp --dport 80 -j MASQUERADE",
        "-s 10.231.130.2/32 -d 10.231.130.2/32 -p tcp -m tcp --dport 9000 -j MASQUERADE"]


def test_loopback_is_dnatted_for_the_host_only() -> None:
    """A neighbour routing 127.0.0.1 to the host must not reach a port published there."""
    prerouting = next(h for h in hooks(C) if h.chain == "PREROUTING" and h.table == "nat")
    assert prerouting.rule == "! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j PT-DNAT"


def test_two_bindings_of_one_port_share_accept_and_hairpin_rules() -> None:
    ports = [PortSpec("pt-br0", CIP, "tcp", 80, LOOPBACK, 18001),
             PortSpec("pt-br0", CIP, "tcp", 80, None, 18002)]
    rules = render(C, [one()], ports, docker_stages=False)
    assert len(rules.chains["filter"]["PT-PORTS"]) == 1
    assert len(rules.chains["nat"]["PT-DNAT"]) == 2
    assert len([r for r in rules.chains["nat"]["PT-POSTROUTING"] if "/32" in r]) == 1


def test_sctp_port() -> None:
    rules = render(C, [one()], [PortSpec("pt-br0", CIP, "sctp", 7, None, 18007)], False)
    assert rules.chains["nat"]["PT-DNAT"] == [
        "-p sctp -m sctp --dport 18007 -j DNAT --to-destination 10.231.130.2:7"]


def test_oldest_network_comes_first_after_the_shared_head() -> None:
    """A bridge pynet named (pn-*) needs none of the rules the head has for all of them:
    no per-bridge reply accept or loopback drop, so established traffic never walks the
    networks' rules."""
    older = NetworkSpec("pt-br0", NET)
    newer = NetworkSpec("pn-0123456789ab", ipaddress.IPv4Network("10.231.131.0/24"))
    rules = render(C, [older, newer], [], docker_stages=False)
    assert rules.chains["filter"]["PT-FORWARD"] == [
        *FORWARD_HEAD, *FORWARD_RULES, "-o pn-0123456789ab -j PT-PORTS",
        "-i pn-0123456789ab -o pn-0123456789ab -j ACCEPT", "-o pn-0123456789ab -j DROP"]
    assert rules.chains["raw"]["PT-RAW"] == [
        *RAW_HEAD, *RAW_RULES,
        "-d 10.231.131.0/24 ! -i pn-0123456789ab -m addrtype ! --dst-type LOCAL -j DROP"]


@pytest.mark.parametrize("docker_stages", [True, False])
def test_no_networks_leave_every_chain_empty(docker_stages: bool) -> None:
    rules = render(C, [], [], docker_stages)
    heads = {"PT-FORWARD": FORWARD_HEAD, "PT-RAW": RAW_HEAD, "PT-ISOLATION": ISOLATION_HEAD}
    assert all(r == heads.get(chain, []) for table in rules.chains.values()
               for chain, r in table.items())
    assert rules.hooks == hooks(C, docker_stages)


# -- hook placement --------------------------------------------------------------------------

FORWARD_HOOK, EGRESS_HOOK = hooks(C)[:2]
USER, ISO1, DFWD = "-j DOCKER-USER", "-j DOCKER-ISOLATION-STAGE-1", "-j DOCKER-FORWARD"
DOCKER0 = ["-o docker0 -j DOCKER", "-i docker0 ! -o docker0 -j ACCEPT"]


@pytest.mark.parametrize("chain", [
    [USER, ISO1, "-j PT-FORWARD", *DOCKER0],
    [ISO1, USER, "-j PT-FORWARD", *DOCKER0],  # dockerd half-way through re-inserting
    [USER, ISO1, "-j OTHER-FORWARD", "-j PT-FORWARD", *DOCKER0],  # another instance above
    [USER, ISO1, "-j PT-FORWARD", *DOCKER0, USER],  # a stray duplicate further down
    [USER, ISO1, "-o br-new -j DOCKER", *DOCKER0, "-j PT-FORWARD"],  # a new 20.10 network
    [USER, "-j PT-FORWARD", DFWD],  # 28, 29
])
def test_hook_in_the_leading_jump_block_stays(chain: list[str]) -> None:
    assert hook_fix(FORWARD_HOOK, chain) == []


@pytest.mark.parametrize("chain,position", [
    ([USER, ISO1, *DOCKER0], 3),  # missing
    (["-j PT-FORWARD", USER, ISO1, *DOCKER0], 3),  # above DOCKER-USER
    ([USER, ISO1, "! -o br-new -j DROP", "-j PT-FORWARD"], 3),  # a rule that may match
    ([USER, ISO1, "-p tcp -j ACCEPT", "-j PT-FORWARD"], 3),  # a user's rule above
    ([USER, ISO1, "-j PT-FORWARD", "-j PT-FORWARD", *DOCKER0], 3),  # duplicated
    ([USER, ISO1, "-j OTHER-FORWARD", *DOCKER0], 4),  # below another instance's hook
    ([USER, DFWD, "-j PT-FORWARD"], 2),  # 29 restarted: DOCKER-FORWARD would accept first
    ([USER, DFWD, "-j OTHER-EGRESS"], 2),
    ([*DOCKER0], 1),  # no dockerd: at the top
])
def test_misplaced_hook_moves_right_below_the_jumps(chain: list[str], position: int) -> None:
    fix = hook_fix(FORWARD_HOOK, chain)
    assert fix[-1] == f"-I FORWARD {position} -j PT-FORWARD"
    assert fix[:-1] == ["-D FORWARD -j PT-FORWARD"] * chain.count("-j PT-FORWARD")


@pytest.mark.parametrize("chain,stays", [
    ([USER, "-j PT-FORWARD", DFWD, "-j PT-EGRESS"], True),
    ([USER, "-j PT-FORWARD", DFWD, "-j PT-EGRESS", "-j OTHER-EGRESS"], True),
    ([USER, ISO1, *DOCKER0, "-j PT-FORWARD", "-j PT-EGRESS"], True),
    ([USER, "-j PT-FORWARD", "-j PT-EGRESS", DFWD], False),  # dockerd appended its jump
    ([USER, "-j PT-EGRESS", "-j PT-FORWARD", DFWD], False),
    ([USER, "-j PT-FORWARD", DFWD], False),  # missing
    ([USER, "-j PT-FORWARD", DFWD, "-j REJECT --reject-with icmp-host-prohibited",
      "-j PT-EGRESS"], False),  # a catch-all above (firewalld, iptables-services)
])
def test_egress_hook_goes_right_below_dockerd_and_pynets_forward_jump(chain: list[str],
                                                                      stays: bool) -> None:
    fix = hook_fix(EGRESS_HOOK, chain)
    if stays:
        assert fix == []
    else:
        assert fix[-1] == "-I FORWARD 4 -j PT-EGRESS"  # [USER, PT-FORWARD, DFWD, here]
        assert fix[:-1] == ["-D FORWARD -j PT-EGRESS"] * chain.count("-j PT-EGRESS")


def test_an_earlier_releases_form_of_a_hook_is_replaced() -> None:
    prerouting = next(h for h in hooks(C) if h.chain == "PREROUTING" and h.table == "nat")
    old = "-m addrtype --dst-type LOCAL -j PT-DNAT"
    assert hook_fix(prerouting, ["-m addrtype --dst-type LOCAL -j DOCKER", old]) == [
        f"-D PREROUTING {old}", f"-I PREROUTING 1 {prerouting.rule}"]


# -- batches -----------------------------------------------------------------------------------

def ports_rules(stages: bool = True, chains: Chains = C) -> RuleSet:
    return render(chains, [one()], [PortSpec("pt-br0", CIP, "tcp", 80, None, 18080)], stages)


@pytest.mark.parametrize("text,stages,forward_at", [(BASELINE, True, 2), (ENGINE_29, False, 1),
                                                    (NO_DOCKER, False, 0)])
def test_first_apply_builds_chains_and_hooks_then_nothing_changes(text: str, stages: bool,
                                                                  forward_at: int) -> None:
    rules = ports_rules(stages)
    after = converge(rules, parse_save(text))
    for table, chains in rules.chains.items():
        for chain, wanted in chains.items():
            assert after.chain(table, chain) == wanted
    forward = after.chain("filter", "FORWARD") or []
    assert forward.index("-j PT-FORWARD") == forward_at  # below DOCKER-USER (and 20.10's
    # drop-only stage 1), above DOCKER-FORWARD
    dockers = [i for i, r in enumerate(forward) if r in (DFWD, "-j PT-FORWARD")]
    assert forward.index("-j PT-EGRESS") == max(dockers) + 1  # right below dockerd's say
    assert ("-j PT-ISOLATION" in (after.chain("filter", "DOCKER-ISOLATION-STAGE-1") or [])) \
        == stages
    assert "-j PT-RAW" in (after.chain("raw", "PREROUTING") or [])
    assert (after.chain("nat", "PREROUTING") or [])[0] == \
        "! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j PT-DNAT"


def test_removing_ports_deletes_only_their_rules() -> None:
    before = converge(ports_rules(), parse_save(BASELINE))
    batch = build_batch(render(C, [one()], [], True), before) or ""
    assert ":PT-" not in batch  # no chain is flushed and rewritten
    assert {line.split()[1] for line in batch.splitlines() if line.startswith("-D ")} == {
        "PT-PORTS", "PT-DNAT", "PT-POSTROUTING"}
    assert "-I " not in batch and "-A " not in batch


def test_a_new_network_only_appends_rules() -> None:
    """Deleting costs ~15 ms per nft transaction; adding a network must not delete."""
    other = NetworkSpec("pt-br1", ipaddress.IPv4Network("10.231.129.0/24"))
    before = converge(render(C, [one()], [], False), parse_save(ENGINE_29))
    batch = build_batch(render(C, [one(), other], [], False), before) or ""
    assert "-D " not in batch and ":PT-" not in batch
    assert "-A PT-FORWARD -o pt-br1" in batch
    # At the top or appended: iptables-nft reads a whole chain to insert at rule N > 1.
    assert not re.search(r"^-I \S+ ([2-9]|\d\d)", batch, re.M), batch
    converge(render(C, [one(), other], [], False), before)


def test_a_create_during_pending_deletes_adds_and_leaves_the_deletes() -> None:
    """CreateNetwork applies with ``keep``: the rules of a network and of ports being deleted
    stay for the reaper's batch, which then removes exactly those."""
    other = NetworkSpec("pt-br1", ipaddress.IPv4Network("10.231.129.0/24"))
    newer = NetworkSpec("pt-br2", ipaddress.IPv4Network("10.231.128.0/24"))
    before = converge(render(C, [one(), other], [PortSpec("pt-br0", CIP, "tcp", 80, None,
                                                          18080)], True), parse_save(BASELINE))
    rules = render(C, [one(), newer], [], True)  # pt-br1 and the port are being deleted
    batch = build_batch(keeping_leftovers(rules, before), before) or ""
    assert "-D " not in batch and "-A PT-FORWARD -o pt-br2" in batch
    during = converge(keeping_leftovers(rules, before), before)
    assert any("pt-br1" in r for r in during.chain("filter", "PT-FORWARD") or [])
    assert any("18080" in r for r in during.chain("nat", "PT-DNAT") or [])
    reaped = converge(rules, during)
    assert reaped.tables == converge(rules, parse_save(BASELINE)).tables


def test_new_docker_network_above_the_hook_is_left_alone() -> None:
    """dockerd 20.10 inserts a new network's rules at the top, then re-inserts its jumps
    above: rules bound to its bridge cannot match pynet's traffic (its raw rules drop what
    Docker's bridges route to pynet's subnets), so nothing is rewritten."""
    rules = ports_rules()
    dump = converge(rules, parse_save(BASELINE))
    forward = dump.tables["filter"]["FORWARD"]
    forward[2:2] = ["-o br-new -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                    "-o br-new -j DOCKER"]
    assert build_batch(rules, dump) is None


def test_dockerd_29_restart_reinserting_its_jumps_is_repaired() -> None:
    rules = ports_rules(False)
    dump = converge(rules, parse_save(ENGINE_29))
    forward = dump.tables["filter"]["FORWARD"]
    forward[:] = [USER, DFWD, *[r for r in forward if r not in (USER, DFWD)]]
    after = converge(rules, dump)
    assert after.tables["filter"]["FORWARD"] == [USER, "-j PT-FORWARD", DFWD, "-j PT-EGRESS"]


def test_two_instances_settle_without_moving_each_other() -> None:
    mine, theirs = ports_rules(False), ports_rules(False, Chains("OT"))
    dump = converge(mine, parse_save(ENGINE_29))
    dump = converge(theirs, dump)
    assert build_batch(mine, dump) is None
    assert dump.tables["filter"]["FORWARD"] == [
        USER, "-j PT-FORWARD", "-j OT-FORWARD", DFWD, "-j OT-EGRESS", "-j PT-EGRESS"]


def test_an_earlier_releases_chains_and_hooks_are_removed() -> None:
    """Up to this release pynet hooked isolation chains into Docker's stages and DNATed
    loopback from every interface; an upgrade leaves neither behind."""
    old = parse_save(BASELINE)
    old.tables["filter"].update({"PT-ISOLATION-1": ["-j RETURN"], "PT-ISOLATION-2": []})
    old.tables["filter"]["DOCKER-ISOLATION-STAGE-1"].insert(0, "-j PT-ISOLATION-1")
    old.tables["filter"]["DOCKER-ISOLATION-STAGE-2"].insert(0, "-j PT-ISOLATION-2")
    old.tables["nat"]["PT-DNAT"] = []
    old.tables["nat"]["PREROUTING"].append("-m addrtype --dst-type LOCAL -j PT-DNAT")
    after = converge(ports_rules(), old)
    assert after.tables == converge(ports_rules(), parse_save(BASELINE)).tables


@pytest.mark.parametrize("text", [BASELINE, ENGINE_29, NO_DOCKER])
def test_teardown_removes_every_hook_and_chain(text: str) -> None:
    before = parse_save(text)
    installed = converge(ports_rules("STAGE" in text), before)
    after = restore(installed, teardown_batch(C, installed))
    for table in ("filter", "nat"):
        assert after.tables[table] == before.tables[table]
    assert {c: r for c, r in after.tables["raw"].items() if r} == \
        {c: r for c, r in before.tables.get("raw", {}).items() if r}
    assert teardown_batch(C, after) is None


@pytest.mark.parametrize("text,layout", [
    (BASELINE, "Docker 20.10 iptables"), (ENGINE_29, "Docker 29 iptables"),
    (ENGINE_29.replace("-A DOCKER-FORWARD -j DOCKER-INTERNAL",
                       "-A DOCKER-FORWARD -j DOCKER-ISOLATION-STAGE-1"), "Docker 28 iptables"),
    (BASELINE.replace("-A FORWARD -j DOCKER-USER\n", ":DOCKER-FORWARD - [0:0]\n"
                      "-A FORWARD -j DOCKER-USER\n-A FORWARD -j DOCKER-FORWARD\n"),
     "Docker 20.10 iptables"),  # 20.10 after 28 on one host: 28's jump left behind
    (NO_DOCKER, "no Docker iptables chains (Docker's nftables backend, or dockerd's "
                "iptables off)"),
])
def test_dockers_layout_is_told_from_its_chains(text: str, layout: str) -> None:
    assert docker_layout(parse_save(text).tables["filter"]) == layout


def test_an_earlier_releases_chains_are_removed_where_docker_had_no_stages() -> None:
    """Without Docker's stages the earlier release jumped to its isolation chain from its own
    FORWARD chain: the rewrite of that chain and the removal must not both delete the jump."""
    old = parse_save(NO_DOCKER)
    old.tables["filter"].update({
        "PT-FORWARD": ["-j PT-ISOLATION-1", "-o pt-br0 -j PT-PORTS",
                       "-i pt-br0 ! -o pt-br0 -j ACCEPT"],
        "PT-ISOLATION-1": ["-i pt-br0 ! -o pt-br0 -j PT-ISOLATION-2"],
        "PT-ISOLATION-2": ["-o pt-br0 -j DROP"], "PT-PORTS": []})
    old.tables["filter"]["FORWARD"] = ["-j PT-FORWARD"]
    after = converge(ports_rules(False), old)
    assert after.tables == converge(ports_rules(False), parse_save(NO_DOCKER)).tables


def test_an_internal_networks_drops_come_before_every_accept() -> None:
    """Its containers' packets to their gateway address are DNATed to other networks'
    published ports: no port accept or reply accept may come first, whichever network is
    older."""
    internal = NetworkSpec("pn-0123456789ab", ipaddress.IPv4Network("10.231.131.0/24"),
                           internal=True)
    port = PortSpec("pt-br0", CIP, "tcp", 80, None, 18080)
    forward = render(C, [one(), internal], [port], False).chains["filter"]["PT-FORWARD"]
    assert forward[:3] == ["-i pn-0123456789ab ! -o pn-0123456789ab -j DROP",
                           "! -i pn-0123456789ab -o pn-0123456789ab -j DROP", *FORWARD_HEAD]


def test_dockerd_iptables_is_told_by_its_forward_jumps() -> None:
    assert docker_iptables(parse_save(BASELINE).tables["filter"])  # 20.10
    assert docker_iptables(parse_save(ENGINE_29).tables["filter"])
    assert not docker_iptables({"FORWARD": ["-j PT-FORWARD"], "DOCKER-USER": []})


NET6 = ipaddress.IPv6Network("fd7e:231:0:82::/64")
CIP6 = ipaddress.IPv6Address("fd7e:231:0:82::2")


def test_ipv6_rules_are_the_twins_of_the_ipv4_ones() -> None:
    nets = [NetworkSpec("pn-a", NET, subnet_v6=NET6),
            NetworkSpec("pn-b", ipaddress.IPv4Network("10.231.131.0/24"), icc=False),
            NetworkSpec("pn-c", ipaddress.IPv4Network("10.231.132.0/24"), internal=True,
                        subnet_v6=ipaddress.IPv6Network("fd7e:231:0:84::/64")),
            # IPv4 only, icc on: IPv6 is off on its bridge, it has no IPv6 rules
            NetworkSpec("pn-d", ipaddress.IPv4Network("10.231.133.0/24"))]
    ports = [PortSpec("pn-a", CIP, "tcp", 80, None, 8080),
             PortSpec("pn-a", CIP6, "tcp", 80, None, 8080),
             PortSpec("pn-a", CIP6, "udp", 53, ipaddress.IPv6Address("fd00::2"), 5353)]
    rules = render(C, nets, ports, docker_stages=False, family=6)
    f, nat = rules.chains["filter"], rules.chains["nat"]
    assert f["PT-FORWARD"] == [
        "-i pn-c ! -o pn-c -j DROP", "! -i pn-c -o pn-c -j DROP", *FORWARD_HEAD,
        "-o pn-a -j PT-PORTS", "-i pn-a -o pn-a -j ACCEPT", "-o pn-a -j DROP",
        # icc off: neighbour discovery still passes between the bridge's ports
        "-o pn-b -j PT-PORTS",
        "-i pn-b -o pn-b -p ipv6-icmp -m icmp6 --icmpv6-type 135 -j ACCEPT",
        "-i pn-b -o pn-b -p ipv6-icmp -m icmp6 --icmpv6-type 136 -j ACCEPT",
        "-o pn-b -j DROP",
        "-i pn-c -o pn-c -j ACCEPT", "-o pn-c -j DROP", "-i pn-c -j DROP"]
    assert f["PT-PORTS"] == [
        "-d fd7e:231:0:82::2/128 ! -i pn-a -o pn-a -p tcp -m tcp --dport 80 "
        "-m conntrack --ctstate DNAT -j ACCEPT",
        "-d fd7e:231:0:82::2/128 ! -i pn-a -o pn-a -p udp -m udp --dport 53 "
        "-m conntrack --ctstate DNAT -j ACCEPT"]
    assert rules.chains["raw"]["PT-RAW"] == [
        "-s ::1/128 -i pn-+ -j DROP", "-d ::1/128 -i pn-+ -j DROP", "-i pn-+ -j RETURN",
        "-d fd7e:231:0:82::/64 ! -i pn-a -m addrtype ! --dst-type LOCAL -j DROP",
        "-d fd7e:231:0:84::/64 ! -i pn-c -m addrtype ! --dst-type LOCAL -j DROP"]
    assert nat["PT-DNAT"] == [
        "! -s fe80::/10 -p tcp -m tcp --dport 8080 -j DNAT "
        "--to-destination [fd7e:231:0:82::2]:80",
        "! -s fe80::/10 -d fd00::2/128 -p udp -m udp --dport 5353 -j DNAT "
        "--to-destination [fd7e:231:0:82::2]:53"]
    # no loopback masquerade (::1 never leaves the host); a network without IPv6 has none
    assert nat["PT-POSTROUTING"] == [
        "-s fd7e:231:0:82::/64 ! -o pn-a -j MASQUERADE",
        "-s fd7e:231:0:82::2/128 -d fd7e:231:0:82::2/128 -p tcp -m tcp --dport 80 "
        "-j MASQUERADE",
        "-s fd7e:231:0:82::2/128 -d fd7e:231:0:82::2/128 -p udp -m udp --dport 53 "
        "-j MASQUERADE"]
    dnat_hooks = [(h.chain, h.rule) for h in rules.hooks if h.table == "nat"
                  and h.target == "PT-DNAT"]
    assert dnat_hooks == [
        ("PREROUTING", "! -d ::1/128 -m addrtype --dst-type LOCAL -j PT-DNAT"),
        ("OUTPUT", "! -d ::1/128 -m addrtype --dst-type LOCAL -j PT-DNAT")]
    assert not any("pn-d" in rule for chain in [*f.values(), *nat.values()] for rule in chain)
    assert rules.chains["filter"]["PT-EGRESS"] == ["-i pn-a -j ACCEPT", "-i pn-b -j ACCEPT"]
    ipv4 = render(C, nets, ports, docker_stages=False)
    assert ipv4.chains["nat"]["PT-DNAT"] == [
        "-p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.231.130.2:80"]
    assert "-i pn-d -j ACCEPT" in ipv4.chains["filter"]["PT-EGRESS"]


def test_gateway_modes_are_per_family() -> None:
    """routed IPv4, nat-unprotected IPv6 on one network, -p 8080:80 on both families: IPv4
    has no NAT (no masquerade, no DNAT, no hairpin; the container's port and ICMP are open to
    direct routing, the rest dropped), IPv6 keeps its NAT and lets everything in; neither has
    the direct-routing drop. A nat network beside it is unchanged."""
    net = NetworkSpec("pn-a", NET, subnet_v6=NET6, modes=("routed", "nat-unprotected"))
    nat = NetworkSpec("pn-b", ipaddress.IPv4Network("10.231.131.0/24"))
    ports = [PortSpec("pn-a", CIP, "tcp", 80, None, 0, routed=True),
             PortSpec("pn-a", CIP6, "tcp", 80, None, 8080)]
    v4 = render(C, [net, nat], ports, docker_stages=False)
    assert v4.chains["filter"]["PT-FORWARD"] == [
        *FORWARD_HEAD,
        "-o pn-a -j PT-PORTS", "! -i pn-a -o pn-a -p icmp -j ACCEPT",
        "-i pn-a -o pn-a -j ACCEPT", "-o pn-a -j DROP",
        "-o pn-b -j PT-PORTS", "-i pn-b -o pn-b -j ACCEPT", "-o pn-b -j DROP"]
    assert v4.chains["filter"]["PT-PORTS"] == [
        "-d 10.231.130.2/32 ! -i pn-a -o pn-a -p tcp -m tcp --dport 80 -j ACCEPT"]
    assert v4.chains["raw"]["PT-RAW"] == [
        *RAW_HEAD, "-d 10.231.131.0/24 ! -i pn-b -m addrtype ! --dst-type LOCAL -j DROP"]
    assert v4.chains["nat"] == {"PT-DNAT": [], "PT-POSTROUTING": [
        "-s 10.231.131.0/24 ! -o pn-b -j MASQUERADE", "-s 127.0.0.0/8 -o pn-b -j MASQUERADE"]}
    assert v4.chains["filter"]["PT-EGRESS"] == ["-i pn-a -j ACCEPT", "-i pn-b -j ACCEPT"]
    v6 = render(C, [net, nat], ports, docker_stages=False, family=6)
    assert v6.chains["filter"]["PT-FORWARD"] == [
        *FORWARD_HEAD,
        "-o pn-a -j PT-PORTS", "! -i pn-a -o pn-a -j ACCEPT",
        "-i pn-a -o pn-a -j ACCEPT", "-o pn-a -j DROP"]
    assert v6.chains["raw"]["PT-RAW"] == ["-s ::1/128 -i pn-+ -j DROP",
                                          "-d ::1/128 -i pn-+ -j DROP", "-i pn-+ -j RETURN"]
    assert v6.chains["nat"]["PT-DNAT"] == [
        "! -s fe80::/10 -p tcp -m tcp --dport 8080 -j DNAT "
        "--to-destination [fd7e:231:0:82::2]:80"]
    assert v6.chains["nat"]["PT-POSTROUTING"][0] == "-s fd7e:231:0:82::/64 ! -o pn-a -j MASQUERADE"


def test_routed_ipv6_has_no_nat_and_opens_icmpv6() -> None:
    net = NetworkSpec("pn-a", NET, subnet_v6=NET6, masquerade=True, modes=("nat", "routed"))
    v6 = render(C, [net], [PortSpec("pn-a", CIP6, "udp", 53, None, 0, routed=True)],
                docker_stages=False, family=6)
    assert "! -i pn-a -o pn-a -p ipv6-icmp -j ACCEPT" in v6.chains["filter"]["PT-FORWARD"]
    assert v6.chains["filter"]["PT-PORTS"] == [
        "-d fd7e:231:0:82::2/128 ! -i pn-a -o pn-a -p udp -m udp --dport 53 -j ACCEPT"]
    assert v6.chains["nat"] == {"PT-DNAT": [], "PT-POSTROUTING": []}
