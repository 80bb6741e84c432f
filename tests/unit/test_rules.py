"""rules.py and the pure half of iptables.py: rendered rule sets, hook placement, batches.

Expected rules are written out as the reference shows them (bridge-driver.md §2.4, with
Docker's DOCKER chain read as pynet's PORTS/DNAT chains). Batches are checked by applying them
to a model of ``iptables-restore --noflush``, so convergence and idempotence are tested for the
chain states dockerd really leaves behind (reordered jumps, duplicates, other pynet instances).
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
from plugin.firewall.rules import Chains, Hook, NetworkSpec, PortSpec, RuleSet, hooks, render

C = Chains("PT")
NET = ipaddress.IPv4Network("10.231.130.0/24")
CIP = ipaddress.IPv4Address("10.231.130.2")
LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
EXCEPTION = "-m conntrack --ctstate DNAT -j RETURN"

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
            rules = table[chain]
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

def test_plain_network_has_the_bridge_drivers_rules() -> None:
    rules = render(C, [one()], [], docker_chains=True)
    assert rules.chains["filter"] == {
        "PT-FORWARD": ["-o pt-br0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                       "-o pt-br0 -j PT-PORTS",
                       "-i pt-br0 ! -o pt-br0 -j ACCEPT",
                       "-i pt-br0 -o pt-br0 -j ACCEPT"],
        "PT-ISOLATION-1": [EXCEPTION, "-i pt-br0 ! -o pt-br0 -j DOCKER-ISOLATION-STAGE-2"],
        "PT-ISOLATION-2": [EXCEPTION, "-o pt-br0 -j DROP"],
        "PT-PORTS": [],
    }
    assert rules.chains["nat"] == {
        "PT-DNAT": [],
        "PT-POSTROUTING": ["-s 10.231.130.0/24 ! -o pt-br0 -j MASQUERADE",
                           "-s 127.0.0.0/8 -o pt-br0 -j MASQUERADE"],
    }


@pytest.mark.parametrize("internal,icc,masquerade,docker_chains",
                         list(itertools.product([False, True], repeat=4)))
def test_every_option_combination(internal: bool, icc: bool, masquerade: bool,
                                  docker_chains: bool) -> None:
    port = PortSpec("pt-br0", CIP, "tcp", 80, None, 18080, icc=icc)
    rules = render(C, [one(internal=internal, icc=icc, masquerade=masquerade)],
                   [] if internal else [port], docker_chains)
    f, nat = rules.chains["filter"], rules.chains["nat"]
    verdict = "ACCEPT" if icc else "DROP"
    outbound = "DOCKER-ISOLATION-STAGE-2" if docker_chains else "PT-ISOLATION-2"
    lead = [] if docker_chains else ["-j PT-ISOLATION-1"]
    if internal:
        assert f["PT-FORWARD"] == lead + [f"-i pt-br0 -o pt-br0 -j {verdict}"]
        assert f["PT-ISOLATION-1"] == ["! -s 10.231.130.0/24 -o pt-br0 -j DROP",
                                       "! -d 10.231.130.0/24 -i pt-br0 -j DROP"]
        assert f["PT-ISOLATION-2"] == []
        assert nat == {"PT-DNAT": [], "PT-POSTROUTING": []}
    else:
        assert f["PT-FORWARD"] == lead + [
            "-o pt-br0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-o pt-br0 -j PT-PORTS", "-i pt-br0 ! -o pt-br0 -j ACCEPT",
            f"-i pt-br0 -o pt-br0 -j {verdict}"]
        assert f["PT-ISOLATION-1"] == [EXCEPTION, f"-i pt-br0 ! -o pt-br0 -j {outbound}"]
        assert f["PT-ISOLATION-2"] == [EXCEPTION, "-o pt-br0 -j DROP"]
        masq = "-s 10.231.130.0/24 ! -o pt-br0 -j MASQUERADE"
        assert (masq in nat["PT-POSTROUTING"]) == masquerade
        peer = ("-d 10.231.130.2/32 -i pt-br0 -o pt-br0 -p tcp -m tcp --dport 80 "
                "-m conntrack --ctstate DNAT -j ACCEPT")
        assert (peer in f["PT-PORTS"]) == (not icc)
        assert nat["PT-DNAT"] == [
            "-p tcp -m tcp --dport 18080 -j DNAT --to-destination 10.231.130.2:80"]
    assert [h.chain for h in rules.hooks] == (
        ["FORWARD", "PREROUTING", "OUTPUT", "POSTROUTING"]
        + (["DOCKER-ISOLATION-STAGE-1", "DOCKER-ISOLATION-STAGE-2"] if docker_chains else []))


def test_published_ports_are_docker_rules_without_the_proxy_exemption() -> None:
    """-p 8080:80 -p 127.0.0.1:8081:80/udp -P --expose 9000 (reference §3.6), minus the
    ``! -i BR`` docker-proxy needed."""
    ports = [PortSpec("pt-br0", CIP, "tcp", 80, None, 8080),
             PortSpec("pt-br0", CIP, "udp", 80, LOOPBACK, 8081),
             PortSpec("pt-br0", CIP, "tcp", 9000, None, 32779)]
    rules = render(C, [one()], ports, docker_chains=True)
    assert rules.chains["filter"]["PT-PORTS"] == [
        "-d 10.231.130.2/32 ! -i pt-br0 -o pt-br0 -p tcp -m tcp --dport 80 -j ACCEPT",
        "-d 10.231.130.2/32 ! -i pt-br0 -o pt-br0 -p udp -m udp --dport 80 -j ACCEPT",
        "-d 10.231.130.2/32 ! -i pt-br0 -o pt-br0 -p tcp -m tcp --dport 9000 -j ACCEPT"]
    assert rules.chains["nat"]["PT-DNAT"] == [
        "-p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.231.130.2:80",
        "-d 127.0.0.1/32 -p udp -m udp --dport 8081 -j DNAT --to-destination 10.231.130.2:80",
        "-p tcp -m tcp --dport 32779 -j DNAT --to-destination 10.231.130.2:9000"]
    assert rules.chains["nat"]["PT-POSTROUTING"][2:] == [
        "-s 10.231.130.2/32 -d 10.231.130.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE",
        "-s 10.231.130.2/32 -d 10.231.130.2/32 -p udp -m udp --dport 80 -j MASQUERADE",
        "-s 10.231.130.2/32 -d 10.231.130.2/32 -p tcp -m tcp --dport 9000 -j MASQUERADE"]


def test_two_bindings_of_one_port_share_accept_and_hairpin_rules() -> None:
    ports = [PortSpec("pt-br0", CIP, "tcp", 80, LOOPBACK, 18001),
             PortSpec("pt-br0", CIP, "tcp", 80, None, 18002)]
    rules = render(C, [one()], ports, docker_chains=True)
    assert len(rules.chains["filter"]["PT-PORTS"]) == 1
    assert len(rules.chains["nat"]["PT-DNAT"]) == 2
    assert len([r for r in rules.chains["nat"]["PT-POSTROUTING"] if "/32" in r]) == 1


def test_sctp_port() -> None:
    rules = render(C, [one()], [PortSpec("pt-br0", CIP, "sctp", 7, None, 18007)], True)
    assert rules.chains["nat"]["PT-DNAT"] == [
        "-p sctp -m sctp --dport 18007 -j DNAT --to-destination 10.231.130.2:7"]


def test_newest_network_comes_first_and_internal_drops_precede_the_exception() -> None:
    older = NetworkSpec("pt-br0", NET)
    newer = NetworkSpec("pt-br1", ipaddress.IPv4Network("10.231.131.0/24"), internal=True)
    rules = render(C, [newer, older], [], docker_chains=True)
    forward = rules.chains["filter"]["PT-FORWARD"]
    assert forward[0] == "-i pt-br1 -o pt-br1 -j ACCEPT"
    assert forward[1:] == render(C, [older], [], True).chains["filter"]["PT-FORWARD"]
    assert rules.chains["filter"]["PT-ISOLATION-1"] == [
        "! -s 10.231.131.0/24 -o pt-br1 -j DROP", "! -d 10.231.131.0/24 -i pt-br1 -j DROP",
        EXCEPTION, "-i pt-br0 ! -o pt-br0 -j DOCKER-ISOLATION-STAGE-2"]


@pytest.mark.parametrize("docker_chains", [True, False])
def test_no_networks_leave_every_chain_empty(docker_chains: bool) -> None:
    rules = render(C, [], [], docker_chains)
    assert all(not r for table in rules.chains.values() for r in table.values())
    assert rules.hooks == hooks(C, docker_chains)


# -- hook placement --------------------------------------------------------------------------

FORWARD_HOOK = Hook("filter", "FORWARD", "-j PT-FORWARD",
                    after=("DOCKER-USER", "DOCKER-ISOLATION-STAGE-1"))
USER, ISO1 = "-j DOCKER-USER", "-j DOCKER-ISOLATION-STAGE-1"
DOCKER0 = ["-o docker0 -j DOCKER", "-i docker0 ! -o docker0 -j ACCEPT"]


@pytest.mark.parametrize("chain", [
    [USER, ISO1, "-j PT-FORWARD", *DOCKER0],
    [ISO1, USER, "-j PT-FORWARD", *DOCKER0],  # dockerd half-way through re-inserting
    [USER, ISO1, "-j OTHER-FORWARD", "-j PT-FORWARD", *DOCKER0],  # another instance above
    [USER, ISO1, "-j PT-FORWARD", *DOCKER0, USER],  # a stray duplicate further down
    [USER, ISO1, "-o br-new -j DOCKER", *DOCKER0, "-j PT-FORWARD"],  # a new Docker network
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
    ([*DOCKER0], 1),  # no dockerd: at the top
])
def test_misplaced_hook_moves_right_below_the_jumps(chain: list[str], position: int) -> None:
    fix = hook_fix(FORWARD_HOOK, chain)
    assert fix[-1] == f"-I FORWARD {position} -j PT-FORWARD"
    assert fix[:-1] == ["-D FORWARD -j PT-FORWARD"] * chain.count("-j PT-FORWARD")


def test_isolation_hook_must_precede_return() -> None:
    hook = Hook("filter", "DOCKER-ISOLATION-STAGE-1", "-j PT-ISOLATION-1")
    assert hook_fix(hook, ["-j PT-ISOLATION-1", "-i docker0 -j X", "-j RETURN"]) == []
    assert hook_fix(hook, ["-i docker0 -j X", "-j PT-ISOLATION-1", "-j RETURN"]) == []
    assert hook_fix(hook, ["-j RETURN", "-j PT-ISOLATION-1"]) == [
        "-D DOCKER-ISOLATION-STAGE-1 -j PT-ISOLATION-1",
        "-I DOCKER-ISOLATION-STAGE-1 1 -j PT-ISOLATION-1"]


# -- batches -----------------------------------------------------------------------------------

def ports_rules(docker: bool = True) -> RuleSet:
    return render(C, [one()], [PortSpec("pt-br0", CIP, "tcp", 80, None, 18080)], docker)


@pytest.mark.parametrize("text,docker", [(BASELINE, True), (NO_DOCKER, False)])
def test_first_apply_builds_chains_and_hooks_then_nothing_changes(text: str,
                                                                  docker: bool) -> None:
    rules = ports_rules(docker)
    after = converge(rules, parse_save(text))
    for table, chains in rules.chains.items():
        for chain, wanted in chains.items():
            assert after.chain(table, chain) == wanted
    forward = after.chain("filter", "FORWARD") or []
    assert forward.index("-j PT-FORWARD") == (2 if docker else 0)
    assert (after.chain("nat", "PREROUTING") or [])[0] == \
        "-m addrtype --dst-type LOCAL -j PT-DNAT"
    if docker:
        assert (after.chain("filter", "DOCKER-ISOLATION-STAGE-1") or [])[0] == \
            "-j PT-ISOLATION-1"


def test_removing_ports_deletes_only_their_rules() -> None:
    before = converge(ports_rules(), parse_save(BASELINE))
    batch = build_batch(render(C, [one()], [], True), before) or ""
    assert ":PT-" not in batch  # no chain is flushed and rewritten
    assert {line.split()[1] for line in batch.splitlines() if line.startswith("-D ")} == {
        "PT-PORTS", "PT-DNAT", "PT-POSTROUTING"}
    assert "-I " not in batch and "-A " not in batch


def test_a_new_network_only_inserts_rules() -> None:
    """Deleting costs ~15 ms per nft transaction; adding a network must not delete."""
    other = NetworkSpec("pt-br1", ipaddress.IPv4Network("10.231.129.0/24"))
    before = converge(render(C, [one()], [], True), parse_save(BASELINE))
    batch = build_batch(render(C, [other, one()], [], True), before) or ""
    assert "-D " not in batch and ":PT-" not in batch
    assert "-I PT-FORWARD 1 -o pt-br1" in batch
    # At the top or appended: iptables-nft reads a whole chain to insert at rule N > 1.
    assert not re.search(r"^-I \S+ ([2-9]|\d\d)", batch, re.M), batch
    converge(render(C, [other, one()], [], True), before)


def test_a_create_during_pending_deletes_adds_and_leaves_the_deletes() -> None:
    """CreateNetwork applies with ``keep``: the rules of a network and of ports being deleted
    stay for the reaper's batch, which then removes exactly those."""
    other = NetworkSpec("pt-br1", ipaddress.IPv4Network("10.231.129.0/24"))
    newer = NetworkSpec("pt-br2", ipaddress.IPv4Network("10.231.128.0/24"))
    before = converge(render(C, [other, one()], [PortSpec("pt-br0", CIP, "tcp", 80, None,
                                                          18080)], True), parse_save(BASELINE))
    rules = render(C, [newer, one()], [], True)  # pt-br1 and the port are being deleted
    batch = build_batch(keeping_leftovers(rules, before), before) or ""
    assert "-D " not in batch and "-I PT-FORWARD 1 -o pt-br2" in batch
    during = converge(keeping_leftovers(rules, before), before)
    assert any("pt-br1" in r for r in during.chain("filter", "PT-FORWARD") or [])
    assert any("18080" in r for r in during.chain("nat", "PT-DNAT") or [])
    reaped = converge(rules, during)
    assert reaped.tables == converge(rules, parse_save(BASELINE)).tables


def test_new_docker_network_above_the_hook_is_left_alone() -> None:
    """dockerd inserts a new network's rules at the top, then re-inserts its jumps above:
    rules bound to its bridge cannot match pynet's traffic, so nothing is rewritten."""
    rules = ports_rules()
    dump = converge(rules, parse_save(BASELINE))
    forward = dump.tables["filter"]["FORWARD"]
    forward[2:2] = ["-o br-new -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                    "-o br-new -j DOCKER"]
    assert build_batch(rules, dump) is None


def test_dockerd_restart_flushing_its_chains_is_repaired() -> None:
    rules = ports_rules()
    dump = converge(rules, parse_save(BASELINE))
    dump.tables["filter"]["DOCKER-ISOLATION-STAGE-1"] = ["-j RETURN"]
    dump.tables["filter"]["DOCKER-ISOLATION-STAGE-2"] = ["-j RETURN"]
    after = converge(rules, dump)
    assert after.tables["filter"]["DOCKER-ISOLATION-STAGE-2"] == ["-j PT-ISOLATION-2",
                                                                  "-j RETURN"]


def test_two_instances_settle_without_moving_each_other() -> None:
    mine, theirs = ports_rules(), render(Chains("OT"), [NetworkSpec("ot-br0", NET)], [], True)
    dump = converge(mine, parse_save(BASELINE))
    dump = converge(theirs, dump)
    assert build_batch(mine, dump) is None
    forward = dump.tables["filter"]["FORWARD"]
    assert forward[:4] == [USER, ISO1, "-j PT-FORWARD", "-j OT-FORWARD"]


def test_teardown_removes_every_hook_and_chain() -> None:
    before = parse_save(BASELINE)
    installed = converge(ports_rules(), before)
    after = restore(installed, teardown_batch(C, hooks(C, True), installed))
    assert after.tables == before.tables
    assert teardown_batch(C, hooks(C, True), after) is None


def test_icc_drops_go_to_the_end_oldest_first() -> None:
    """The bridge driver appends each icc=false DROP to FORWARD when the network is made."""
    oldest = NetworkSpec("pt-br0", NET, icc=False)
    middle = NetworkSpec("pt-br1", ipaddress.IPv4Network("10.231.131.0/24"))
    newest = NetworkSpec("pt-br2", ipaddress.IPv4Network("10.231.132.0/24"), internal=True,
                         icc=False)
    forward = render(C, [newest, middle, oldest], [], True).chains["filter"]["PT-FORWARD"]
    assert forward[-2:] == ["-i pt-br0 -o pt-br0 -j DROP", "-i pt-br2 -o pt-br2 -j DROP"]
    assert forward[:4] == render(C, [middle], [], True).chains["filter"]["PT-FORWARD"]
