"""pynet against Docker's own bridge driver, scenario by scenario, on the same dockerd.

Each scenario runs once with ``-d bridge`` and once with ``-d <pynet instance>``; the rules of
its networks (normalized, ruleview.py) and a connectivity matrix (netcheck.py) must agree. The
matrix cells carry what the built-in driver does according to the reference
(/work/shared/reference/bridge-driver.md §3), so Docker's run also checks the harness.

pynet differs on purpose where it publishes ports in the kernel instead of running docker-proxy.
Those differences are listed below, each with its reason; README's "Differences from the
built-in driver" tells users the same. Nothing else may differ.
"""

import json
import secrets
import socket
from collections.abc import Callable

import pytest

from lab import (
    IMAGE,
    Instance,
    docker,
    engine,
    iptables_save,
    link,
    links,
    new_instance,
    purge_instance,
    pynet_firewall,
    restart_dockerd,
    run,
    stable_iptables_save,
    wait_for,
)
from plugin.config import Settings
from plugin.firewall.rules import FORWARD_HEAD, ISOLATION_HEAD, RAW_HEAD, Chains
from tests.e2e.consistency import wait_reaped
from tests.e2e.differential import (
    DOCKER,
    PYNET,
    Cell,
    CellDifference,
    Lab,
    RuleDifference,
    World,
    compare,
    run_both,
)
from tests.e2e.netcheck import SERVER
from tests.e2e.ruleview import canonical, changes, hook_problems, someone_elses

# -- the documented differences ------------------------------------------------------------

NO_PROXY = ("pynet publishes ports with DNAT for every source instead of starting docker-proxy, "
            "so traffic from the bridge itself (hairpin, same-network peers, other networks "
            "via the host address) is DNATed too")

RULE_DIFFERENCES = [
    RuleDifference("DNAT", r"(.*)! -i br:\w+ (.*-j DNAT .*)", r"\1\2", NO_PROXY),
    RuleDifference("DNAT", r"-i br:\w+ -j RETURN", None,
                   "Docker returns bridge traffic early so that it reaches docker-proxy; "
                   + NO_PROXY),
    RuleDifference("POSTROUTING", None,
                   r"-s 127\.0\.0\.0/8 -o br:\w+ -j MASQUERADE",
                   "host 127.0.0.1 -> published port: the DNATed packet leaves on the bridge "
                   "and needs a source the container can answer (docker-proxy connected from "
                   "the bridge address)"),
]
if engine() >= 28:
    RULE_DIFFERENCES.append(RuleDifference(
        "POSTROUTING", None, r"-s (\S+)/32 -d \1/32 -p (\w+) -m \2 --dport \d+ -j MASQUERADE",
        "hairpin (a container to its own published port via the host address) needs the "
        "source rewritten; Docker 28+ sends that through docker-proxy instead"))

PEER_SOURCE = ("the container sees the real client address of a same-network peer; "
               "docker-proxy made every such connection come from the bridge address")
NEWER = ("pynet blocks what the newest bridge driver (Docker 28+) blocks, on every engine; "
         "20.10's bridge driver let this through")

MASQUERADE_OFF_PORT = (
    "a container of a masquerade-off network reaches another network's published port via the "
    "host address, as containers of every other network do: the reply is part of a DNATed "
    "connection and comes back over pynet's bridges, which pynet's iptables backend accepts "
    "(its direct-routing drop is for the host's other interfaces); Docker treats that reply "
    "as traffic between its networks (20.10: isolation stage 2, 28+: the raw drop per "
    "container address) and drops it, so the connection times out")
CELL_DIFFERENCES = [
    CellDifference("icc-off", "c1 -> host:H1/tcp", "ok gw:n0", "ok c1@n0", PEER_SOURCE),
    CellDifference("ports", "c1 -> host:H1/tcp", "ok gw:n0", "ok c1@n0", PEER_SOURCE),
]
if pynet_firewall() == "iptables":  # its nftables backend drops that reply in raw, as Docker
    CELL_DIFFERENCES.append(CellDifference("masquerade-off", "c0 -> host:H2/tcp", "timeout",
                                           "ok c0@n0", MASQUERADE_OFF_PORT))


def since_28(old: str, new: str, scenario: str, cell: str) -> str:
    """What Docker's driver gives for ``cell`` on this engine: ``old`` on 20.10, ``new`` since
    28; pynet gives ``new`` on every engine (a listed difference on 20.10)."""
    if engine() >= 28:
        return new
    difference = CellDifference(scenario, cell, old, new, NEWER)
    if difference not in CELL_DIFFERENCES:  # each run of the scenario asks
        CELL_DIFFERENCES.append(difference)
    return old


# -- fixtures (lab, port_pool: tests/e2e/conftest.py) ----------------------------------------

def differential(name: str, lab: Lab, pynet: Instance, scenario: Callable[[World], None]) -> None:
    """Run ``scenario`` with both drivers and fail with every disagreement at once."""
    results = run_both(lab, pynet.name, scenario)
    problems = compare(name, results, RULE_DIFFERENCES, CELL_DIFFERENCES)
    assert not problems, "\n\n".join(problems)


# -- scenarios -----------------------------------------------------------------------------

def plain(w: World) -> None:
    w.network("n0")
    w.container("c0", "n0")
    w.container("c1", "n0")
    w.observe("up", {
        Cell("c1", "c0@n0", 80): "ok c1@n0",
        Cell("c0", "host", "hostsrv"): "ok c0@n0",
        Cell("c0", "gw:n0", "hostsrv"): "ok c0@n0",
        Cell("host", "c0@n0", 80): "ok gw:n0",
        Cell("outside", "c0@n0", 80): "timeout",
        Cell("c0", "outside", "outsrv"): "ok host",
    })


def test_plain_network(lab: Lab, pynet: Instance) -> None:
    differential("plain", lab, pynet, plain)


def two_networks(w: World) -> None:
    w.network("n0")
    w.network("n1")
    w.container("c0", "n0")
    w.container("c1", "n1")
    w.observe("up", {
        Cell("c0", "c1@n1", 80): "timeout",
        Cell("c1", "c0@n0", 80): "timeout",
        Cell("c0", "gw:n1", "hostsrv"): "ok c0@n0",  # another bridge's address is the host's
        Cell("c1", "outside", "outsrv"): "ok host",
        Cell("host", "c1@n1", 80): "ok gw:n1",
        Cell("outside", "c1@n1", 80): "timeout",
    })


def test_two_networks_are_isolated(lab: Lab, pynet: Instance) -> None:
    differential("two-networks", lab, pynet, two_networks)


def icc_off(w: World) -> None:
    w.network("n0", "-o", "com.docker.network.bridge.enable_icc=false")
    w.container("c0", "n0", "-p", f"{w.lab.ports['H1']}:80")
    w.container("c1", "n0")
    w.observe("up", {
        Cell("c1", "c0@n0", 80): "timeout",
        Cell("c1", "gw:n0", "hostsrv"): "ok c1@n0",
        Cell("c1", "host", "H1"): "ok gw:n0",
        Cell("c0", "host", "H1"): "ok gw:n0",
        Cell("outside", "host", "H1"): "ok outside",
        Cell("c0", "outside", "outsrv"): "ok host",
    })


def test_icc_off(lab: Lab, pynet: Instance) -> None:
    differential("icc-off", lab, pynet, icc_off)


def masquerade_off(w: World) -> None:
    w.network("n0", "-o", "com.docker.network.bridge.enable_ip_masquerade=false")
    w.network("n1")
    w.container("c0", "n0", "-p", f"{w.lab.ports['H1']}:80")
    w.container("c1", "n1", "-p", f"{w.lab.ports['H2']}:80")
    w.observe("up", {
        # since 28 the outside host's replies to the container's own address are dropped
        Cell("c0", "outside", "outsrv"): since_28("ok c0@n0", "timeout", "masquerade-off",
                                                  "c0 -> outside:outsrv/tcp"),
        Cell("c1", "outside", "outsrv"): "ok host",
        Cell("c0", "host", "H2"): "timeout",
        Cell("c1", "host", "H1"): "ok gw:n0",
        Cell("outside", "host", "H1"): "ok outside",
        Cell("host", "loopback", "H1"): "ok gw:n0",
    })


def test_masquerade_off(lab: Lab, pynet: Instance) -> None:
    differential("masquerade-off", lab, pynet, masquerade_off)


def internal(w: World) -> None:
    w.network("n0", "--internal")
    w.container("c0", "n0", "-p", f"{w.lab.ports['H1']}:80")  # accepted and ignored
    w.container("c1", "n0")
    w.observe("up", {
        Cell("c1", "c0@n0", 80): "ok c1@n0",
        # 20.10: isolation is FORWARD-only; since 25 no default route leaves the subnet
        Cell("c0", "host", "hostsrv"): since_28("ok c0@n0", "enetunreach", "internal",
                                                "c0 -> host:hostsrv/tcp"),
        Cell("c0", "outside", "outsrv"): since_28("timeout", "enetunreach", "internal",
                                                  "c0 -> outside:outsrv/tcp"),
        Cell("outside", "c0@n0", 80): "timeout",
        Cell("outside", "host", "H1"): "refused",
        Cell("host", "loopback", "H1"): "refused",
        Cell("host", "c0@n0", 80): "ok gw:n0",
    })


def test_internal_network(lab: Lab, pynet: Instance) -> None:
    differential("internal", lab, pynet, internal)


def ports(w: World) -> None:
    p = w.lab.ports
    w.network("n0")
    w.network("n1")
    w.container("c0", "n0", "-p", f"{p['H1']}:80", "-p", f"127.0.0.1:{p['H2']}:80/udp", "-P",
                "--expose", "9000")
    w.udp_server("c0", 80)
    w.container("c1", "n0")
    w.container("c2", "n1")
    w.observe("up", {
        Cell("outside", "host", "H1"): "ok outside",
        Cell("outside", "c0@n0", 80): since_28("ok outside", "timeout", "ports",
                                               "outside -> c0@n0:80/tcp"),
        Cell("outside", "c0@n0", 81): "timeout",
        Cell("outside", "host", "H3"): "refused",
        Cell("outside", "host", "eph:c0@n0:9000"): "ok outside",
        Cell("outside", "host", "H2", "udp"): "refused",  # bound to 127.0.0.1 only
        Cell("host", "loopback", "H1"): "ok gw:n0",
        Cell("host", "loopback", "H2", "udp"): "ok gw:n0",
        Cell("host", "host", "H1"): "ok host",  # DNAT keeps the source the host picked
        Cell("host", "c0@n0", 80): "ok gw:n0",
        Cell("c0", "host", "H1"): "ok gw:n0",  # hairpin
        Cell("c0", "gw:n0", "H1"): "ok gw:n0",  # hairpin via the gateway
        Cell("c1", "host", "H1"): "ok gw:n0",
        Cell("c2", "host", "H1"): "ok gw:n0",
        Cell("c2", "c0@n0", 80): "timeout",
        Cell("c0", "outside", "outsrv"): "ok host",
    })


def test_published_ports(lab: Lab, pynet: Instance) -> None:
    differential("ports", lab, pynet, ports)


def host_binding(w: World) -> None:
    p = w.lab.ports
    w.network("n0", "-o", "com.docker.network.bridge.host_binding_ipv4=127.0.0.1")
    w.container("c0", "n0", "-p", f"{p['H1']}:80", "-p", f"0.0.0.0:{p['H2']}:80")
    w.observe("up", {
        Cell("host", "loopback", "H1"): "ok gw:n0",
        Cell("host", "host", "H1"): "refused",
        Cell("outside", "host", "H1"): "refused",
        Cell("outside", "host", "H2"): "ok outside",  # an explicit 0.0.0.0 still binds all
        Cell("host", "loopback", "H2"): "ok gw:n0",
    })


def test_host_binding_ipv4(lab: Lab, pynet: Instance) -> None:
    differential("host-binding", lab, pynet, host_binding)


def trusted_interface(w: World) -> None:
    """The outside host's interface is trusted: it may route to published ports (Docker 28+;
    20.10 ignores the option and routes to published ports from anywhere)."""
    w.network("n0", "-o", "com.docker.network.bridge.trusted_host_interfaces="
              f"{w.lab.outside.host_end}")
    w.container("c0", "n0", "-p", f"{w.lab.ports['H1']}:80")
    w.observe("up", {
        Cell("outside", "c0@n0", 80): "ok outside",
        Cell("outside", "c0@n0", 9000): "timeout",
        Cell("outside", "host", "H1"): "ok outside",
    })


def test_trusted_host_interfaces(lab: Lab, pynet: Instance) -> None:
    differential("trusted", lab, pynet, trusted_interface)


def mtu_facts(w: World) -> dict[str, str]:
    """MTUs of the container interface, its host end and the bridge (which follows its ports
    in 20.10), and whether the bridge has the name asked for."""
    facts: dict[str, str] = {}
    for ctr in w.ctrs:
        inside = json.loads(run(["nsenter", f"--net=/proc/{w.pid(ctr)}/ns/net", "ip", "-j",
                                 "link", "show", "eth0"]).stdout)[0]
        host_end = next(item for item in links() if item["ifindex"] == inside["link_index"])
        facts[f"{ctr} eth0 mtu"] = str(inside["mtu"])
        facts[f"{ctr} host end mtu"] = str(host_end["mtu"])
    bridge = w.nets["n0"].bridge
    facts["bridge"] = "as named" if bridge == CUSTOM_BRIDGE else bridge
    facts["bridge mtu"] = str((link(bridge) or {}).get("mtu"))
    return facts


CUSTOM_BRIDGE = f"ptb{secrets.token_hex(3)}"


def custom_bridge(w: World) -> None:
    w.network("n0", "-o", f"com.docker.network.bridge.name={CUSTOM_BRIDGE}",
              "-o", "com.docker.network.driver.mtu=1400")
    w.container("c0", "n0")
    w.container("c1", "n0")
    w.observe("up", {
        Cell("c1", "c0@n0", 80): "ok c1@n0",
        Cell("c0", "outside", "outsrv"): "ok host",
        Cell("host", "c0@n0", 80): "ok gw:n0",
        Cell("outside", "c0@n0", 80): "timeout",
    }, mtu_facts)


def test_custom_bridge_name_and_mtu(lab: Lab, pynet: Instance) -> None:
    differential("custom-bridge", lab, pynet, custom_bridge)


def multi_homed(w: World) -> None:
    """c0 starts on n1 with a published port, then joins n0, whose name sorts first: the
    gateway endpoint, and with it the published port, moves to n0 (reference §1.6, §3.10)."""
    w.network("n0")
    w.network("n1")
    w.container("c0", "n1", "-p", f"{w.lab.ports['H1']}:80")
    w.container("p0", "n0")
    w.container("p1", "n1")
    on_n1 = {
        Cell("outside", "host", "H1"): "ok outside",
        Cell("host", "loopback", "H1"): "ok gw:n1",
        Cell("p0", "c0@n1", 80): "timeout",
        Cell("p1", "c0@n1", 80): "ok p1@n1",
        Cell("c0", "outside", "outsrv"): "ok host",
    }
    w.observe("started", on_n1)
    w.connect("c0", "n0")
    w.observe("connected", {
        Cell("outside", "host", "H1"): "ok outside",
        Cell("host", "loopback", "H1"): "ok gw:n0",
        Cell("p0", "c0@n0", 80): "ok p0@n0",
        Cell("p0", "c0@n1", 80): "timeout",
        Cell("p1", "c0@n1", 80): "ok p1@n1",
        Cell("c0", "outside", "outsrv"): "ok host",
    })
    w.disconnect("c0", "n0")
    w.observe("disconnected", on_n1)


def test_multi_homed_container_moves_its_ports(lab: Lab, pynet: Instance) -> None:
    differential("multi-homed", lab, pynet, multi_homed)


# -- full clean-up -----------------------------------------------------------------------------

def everything(w: World) -> None:
    """One of each: plain with ports, icc off, internal, custom name and MTU, multi-homed."""
    p = w.lab.ports
    w.network("n0")
    w.network("n1", "-o", "com.docker.network.bridge.enable_icc=false")
    w.network("n2", "--internal")
    w.network("n3", "-o", f"com.docker.network.bridge.name={CUSTOM_BRIDGE}",
              "-o", "com.docker.network.driver.mtu=1400")
    w.container("c0", "n0", "-p", f"{p['H1']}:80", "-p", f"127.0.0.1:{p['H2']}:80/udp", "-P",
                "--expose", "9000")
    w.container("c1", "n1", "-p", f"{p['H3']}:80")
    w.container("c2", "n2")
    w.container("c3", "n3")
    w.connect("c1", "n0")  # its gateway endpoint and port move to n0
    w.observe("up", {
        Cell("outside", "host", "H1"): "ok outside",
        Cell("outside", "host", "H3"): "ok outside",
        Cell("outside", "host", "eph:c0@n0:9000"): "ok outside",
        Cell("c3", "outside", "outsrv"): "ok host",
    })


def unexplained(before: str, after: str, ours: Callable[[str], bool]) -> list[str]:
    """Changes between two iptables-save texts that are not somebody else's (other people's
    networks come and go on the same host meanwhile); ``ours`` claims a line for the test."""
    return [c for c in changes(canonical(before), canonical(after))
            if ours(c) or not someone_elses(c)]


def installed_lines(prefix: str, stages: bool) -> set[str]:
    """What an idle pynet keeps in the tables: its chains (empty but for the rules that cover
    every pynet-named bridge) and the jumps into them
    (``stages``: dockerd keeps isolation stage chains, which pynet hooks into)."""
    c = Chains(prefix)
    stage = {f"+ filter :{c.isolation} -",
             f"+ filter -A DOCKER-ISOLATION-STAGE-1 -j {c.isolation}",
             *(f"+ filter -A {c.isolation} {rule}" for rule in ISOLATION_HEAD)} if stages else set()
    heads = {f"+ filter -A {c.forward} {rule}" for rule in FORWARD_HEAD} | \
        {f"+ raw -A {c.raw} {rule}" for rule in RAW_HEAD}
    return stage | heads | {
            f"+ filter :{c.forward} -", f"+ filter :{c.egress} -", f"+ filter :{c.ports} -",
            f"+ filter -A FORWARD -j {c.forward}", f"+ filter -A FORWARD -j {c.egress}",
            f"+ nat :{c.dnat} -", f"+ nat :{c.postrouting} -",
            f"+ nat -A PREROUTING ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j {c.dnat}",
            f"+ nat -A OUTPUT -m addrtype --dst-type LOCAL -j {c.dnat}",
            f"+ nat -A POSTROUTING -j {c.postrouting}",
            f"+ raw :{c.raw} -", f"+ raw -A PREROUTING -j {c.raw}"}


def test_everything_removed_leaves_iptables_as_found(lab: Lab, dockerd: None,
                                                     pynet_iptables: None) -> None:
    """Reference §3.11 for Docker; for pynet the same, except its empty chains and jumps,
    which ``pynet uninstall`` removes. A fresh instance, so "before" has none of its lines."""
    inst = new_instance()
    prefix = Settings(name=inst.name).chain_prefix
    try:
        before = stable_iptables_save(30)
        inst.start()
        wait_for("pynet's jumps", lambda: not hook_problems(iptables_save(), prefix), 15)
        installed = stable_iptables_save(30)
        assert sorted(unexplained(before, installed, lambda c: prefix in c)) == \
            sorted(installed_lines(prefix, ":DOCKER-ISOLATION-STAGE-1 " in before))
        results = {}
        for label, driver in ((DOCKER, "bridge"), (PYNET, inst.name)):
            world = World(lab, label, driver)
            try:
                everything(world)
            finally:
                world.close()
            if label == PYNET:
                wait_reaped(inst)  # its deletes finish just after dockerd hears back
            results[label] = world.steps
            tokens = world.tokens()
            left = unexplained(installed, stable_iptables_save(30),
                               lambda c, t=tokens: t.mentions(c) or prefix in c)
            assert not left, f"{label} left rules behind:\n" + "\n".join(left)
            bridges = [n.bridge for n in world.nets.values() if link(n.bridge) is not None]
            assert not bridges, f"{label} left bridges behind: {bridges}"
        problems = compare("everything", results, RULE_DIFFERENCES, CELL_DIFFERENCES)
        assert not problems, "\n\n".join(problems)
        inst.stop()
        assert "removed" in run(inst.argv("uninstall")).stdout
        left = unexplained(before, stable_iptables_save(30), lambda c: prefix in c)
        assert not left, "left after uninstall:\n" + "\n".join(left)
    finally:
        leftovers = purge_instance(inst)
    assert not leftovers, f"left behind: {leftovers}"


# -- pynet keeps its rules when others touch the tables ---------------------------------------

PORTS_SCENARIO_CELLS = {  # the ports scenario's TCP paths, as pynet serves them
    Cell("outside", "host", "H1"): "ok outside",
    Cell("outside", "c0@n0", 81): "timeout",
    Cell("host", "loopback", "H1"): "ok gw:n0",
    Cell("c0", "host", "H1"): "ok gw:n0",
    Cell("c1", "host", "H1"): "ok c1@n0",
    Cell("c2", "host", "H1"): "ok gw:n0",
    Cell("c2", "c0@n0", 80): "timeout",
    Cell("c0", "outside", "outsrv"): "ok host",
}


def two_networks_with_a_port(w: World, *extra: str) -> None:
    w.network("n0")
    w.network("n1")
    w.container("c0", "n0", "-p", f"{w.lab.ports['H1']}:80", *extra)
    w.container("c1", "n0", *extra)
    w.container("c2", "n1", *extra)


def repairs(inst: Instance) -> int:
    """How often the instance's reconcile repaired its firewall."""
    return inst.log().count(f"reconcile: repair {pynet_firewall()}")


def test_flushed_chains_and_a_deleted_jump_are_restored(pynet_world: World, pynet: Instance,
                                                       pynet_iptables: None) -> None:
    w = pynet_world
    two_networks_with_a_port(w)
    before = w.observe("before", PORTS_SCENARIO_CELLS)
    assert before.matrix == before.expected
    prefix = str(w.prefix)
    repaired = repairs(pynet)
    c = Chains(prefix)
    present = iptables_save()  # the isolation chain exists only beside Docker's stages
    run(["iptables-restore", "--noflush"], input="\n".join([
        "*filter", *(f"-F {chain}" for chain in c.owned()["filter"]
                     if f":{chain} " in present),
        f"-D FORWARD -j {c.forward}", "COMMIT",
        "*nat", f"-F {c.dnat}", f"-F {c.postrouting}", "COMMIT",
        "*raw", f"-F {c.raw}", "COMMIT", ""]))
    wait_for("pynet to repair its rules", lambda: repairs(pynet) > repaired, timeout=15)
    wait_for_rules(w, before.rules, timeout=15)
    after = w.observe("after", PORTS_SCENARIO_CELLS)
    assert after.matrix == before.matrix


def test_new_docker_network_above_pynets_jump_is_left_alone(lab: Lab, pynet_world: World,
                                                           pynet: Instance,
                                                           pynet_iptables: None) -> None:
    """dockerd puts a new bridge network's rules right below its own jumps, above pynet's.
    Those rules are bound to dockerd's bridge and cannot match pynet's traffic, so pynet
    leaves its jump where it is (moving it would cost an nft deletion per docker network
    create) and its containers work as before."""
    w = pynet_world
    w.network("n0")
    w.container("c0", "n0")
    prefix = str(w.prefix)
    docker_world = World(lab, DOCKER, "bridge")
    repaired = repairs(pynet)
    try:
        bridge = docker_world.network("n0").bridge
        save = iptables_save()
        if engine() < 28:  # 28+ keeps its per-bridge rules in its own chains
            forward = [r.split() for r in iptables_forward(save)]
            theirs = next(i for i, r in enumerate(forward) if bridge in r)
            assert forward.index(["-j", f"{prefix}-FORWARD"]) > theirs, \
                "dockerd's layout changed"
        assert not hook_problems(save, prefix)
        after = w.observe("after", {Cell("c0", "outside", "outsrv"): "ok host",
                                    Cell("host", "c0@n0", 80): "ok gw:n0"})
        assert after.matrix == after.expected
        assert repairs(pynet) == repaired, "pynet moved its jump although nothing required it"
    finally:
        docker_world.close()


def iptables_forward(save: str) -> list[str]:
    return [line[len("-A FORWARD "):] for line in save.splitlines()
            if line.startswith("-A FORWARD ")]


def test_port_conflicts_are_refused_and_leave_nothing(pynet_world: World,
                                                      pynet: Instance) -> None:
    w = pynet_world
    p = w.lab.ports
    net = w.network("n0")
    w.container("c0", "n0", "-p", f"{p['H1']}:80")
    rules = w.rules()

    def refused(name: str, *publish: str) -> str:
        w.res.containers.append(name)  # docker run leaves a created container behind
        done = docker("run", "-d", "--name", name, "--network", net.name, *publish, IMAGE,
                      *SERVER, check=False)
        assert done.returncode != 0, f"{name} started despite the conflict"
        return done.stderr

    def nothing_left() -> None:
        wait_for("the refused endpoint to be gone",
                 lambda: len(endpoints(pynet, net.name)) == 1, timeout=15)
        assert w.rules() == rules

    taken = refused(w.name("twin"), "-p", f"{p['H1']}:80")
    assert "Error response from daemon" in taken
    assert f"remote: host port {p['H1']}/tcp on 0.0.0.0 is already in use" in taken
    nothing_left()
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", p["H2"]))
        listener.listen(1)
        held = refused(w.name("late"), "-p", f"{p['H3']}:80", "-p", f"{p['H2']}:9000")
        assert f"remote: host port {p['H2']}/tcp on 0.0.0.0 is already in use" in held
        nothing_left()
        with socket.socket() as probe:  # the binding that did succeed was given back
            probe.bind(("0.0.0.0", p["H3"]))
    # The host program is gone: the same bindings work now. A new container rather than
    # `docker start`: dockerd 29 starts a container whose first start failed in its network
    # setup without any network (with -d bridge too).
    docker("rm", "-f", w.name("late"))
    w.container("late", "n0", "-p", f"{p['H3']}:80", "-p", f"{p['H2']}:9000")
    after = w.observe("after", {Cell("outside", "host", "H2"): "ok outside",
                                Cell("outside", "host", "H1"): "ok outside"})
    assert after.matrix == after.expected


def endpoints(inst: Instance, network: str) -> list[dict]:
    """pynet's endpoint records of a network, from ``pynet status``."""
    net_id = docker("network", "inspect", "--format", "{{.Id}}", network).stdout.strip()
    status = json.loads(run(inst.argv("status")).stdout)
    return next((n["endpoints"] for n in status if n["network"] == net_id), [])


# -- dockerd restart ---------------------------------------------------------------------------



@pytest.mark.dockerd_restart
def test_dockerd_restart_brings_rules_and_connectivity_back(pynet_world: World,
                                                            pynet: Instance) -> None:
    w = pynet_world
    two_networks_with_a_port(w, "--restart", "always")
    before = w.observe("before", PORTS_SCENARIO_CELLS)
    assert before.matrix == before.expected
    restart_dockerd()
    try:
        for ctr in w.ctrs:  # dockerd restarts them once it has restored every network
            w.wait_serving(ctr, timeout=90)
        wait_for_rules(w, before.rules)
        after = w.observe("after", PORTS_SCENARIO_CELLS)
        assert after.matrix == before.matrix
    except AssertionError:
        print(pynet.log()[-6000:])  # an expensive test to repeat: keep what pynet saw
        raise


def wait_for_rules(w: World, rules: dict[str, list[str]], timeout: float = 30) -> None:
    """Until pynet's chains hold ``rules`` and its jumps are in place; say what differs if
    they never do."""
    prefix = str(w.prefix)

    def settled() -> bool:
        save = iptables_save()
        hooked = pynet_firewall() == "nftables" or not hook_problems(save, prefix)
        return w.rules(save) == rules and hooked
    try:
        wait_for("pynet's rules and jumps as before", settled, timeout=timeout)
    except AssertionError as exc:
        save = iptables_save()
        raise AssertionError(f"{exc}\nrules now: {w.rules(save)}\nbefore: {rules}\n"
                             f"jumps: {hook_problems(save, prefix)}") from None
