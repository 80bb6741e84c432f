"""Reconcile: what someone (or something) breaks behind pynet's back is repaired within the
interval and logged by name; orphans of containers stopped while pynet was down are removed;
``pynet reconcile --dry-run`` prints the plan and changes nothing.
"""

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import (
    DOCKER,
    Instance,
    addresses,
    docker,
    link,
    run,
    serving,
    wait_for,
)
from tests.conftest import Resources
from tests.e2e.consistency import (
    assert_consistent,
    chain_prefix,
    dry_run,
    ip_in,
    own_rules,
    owned_links,
    records,
    repairs,
    wait_exit,
)

INTERVAL = 1.0  # seconds, the tests' PYNET_RECONCILE_INTERVAL
# A repair must land within a few intervals even on a loaded 2-core machine.
REPAIR_TIMEOUT = 10 * INTERVAL


@dataclass
class Setup:
    """An instance with one network and one running container on it."""

    inst: Instance
    network_id: str
    bridge: str
    gateway: str
    container: str
    endpoint_id: str
    host_veth: str


def instance(env: dict[str, str] | None = None) -> Iterator[Instance]:
    yield from serving({"PYNET_RECONCILE_INTERVAL": str(INTERVAL), **(env or {})})


@pytest.fixture
def inst(dockerd: None) -> Iterator[Instance]:
    """A fresh instance reconciling every second, so its log is this test's alone."""
    yield from instance()


@pytest.fixture
def idle(dockerd: None) -> Iterator[Instance]:
    """An instance that never reconciles on its own: the dry run must see the damage."""
    yield from instance({"PYNET_RECONCILE_INTERVAL": "3600"})


@pytest.fixture
def crashing(dockerd: None, tmp_path: Path) -> Iterator[tuple[Instance, Path]]:
    """An instance that dies at the checkpoint written into the returned file."""
    crash_file = tmp_path / "crash-at"
    for inst in instance({"PYNET_CRASH_FILE": str(crash_file)}):
        yield inst, crash_file


def populate(inst: Instance, res: Resources) -> Setup:
    subnet = str(res.subnets.take())
    bridge = f"pr{secrets.token_hex(3)}"
    net = res.network(inst.name, "--subnet", subnet, "--gateway", ip_in(subnet, 1),
                      "-o", f"com.docker.network.bridge.name={bridge}")
    container = res.run("--network", net)
    rec = records(inst)
    (network_id,) = rec.networks
    (endpoint_id, endpoint), = rec.endpoints.items()
    return Setup(inst, network_id, bridge, f"{ip_in(subnet, 1)}/24", container, endpoint_id,
                 endpoint["host_veth"])


def logged(inst: Instance, text: str) -> bool:
    return any(text in line and "reconcile:" in line for line in inst.log().splitlines())


def test_deleted_bridge_is_rebuilt_with_its_address_and_ports(inst: Instance,
                                                              res: Resources) -> None:
    s = populate(inst, res)
    run(["ip", "link", "del", s.bridge])
    wait_for("the bridge to be rebuilt with its veth on it", lambda: (
        (veth := link(s.host_veth)) is not None and veth.get("master") == s.bridge
        and s.gateway in addresses(s.bridge)), timeout=REPAIR_TIMEOUT)
    # The log line follows the repair's last step: wait for it rather than race it.
    wait_for("the repair to be logged", lambda: logged(
        inst, f"restore network {s.network_id[:12]}: bridge {s.bridge} is missing"))
    docker("exec", s.container, "ping", "-c1", "-W3", s.gateway.split("/")[0])
    assert_consistent(inst)


def test_removed_bridge_address_is_put_back(inst: Instance, res: Resources) -> None:
    s = populate(inst, res)
    run(["ip", "addr", "del", s.gateway, "dev", s.bridge])
    wait_for("the gateway address to return", lambda: s.gateway in addresses(s.bridge),
             timeout=REPAIR_TIMEOUT)
    wait_for("the repair to be logged",
             lambda: logged(inst, f"bridge {s.bridge} lacks its address {s.gateway}"))
    docker("exec", s.container, "ping", "-c1", "-W3", s.gateway.split("/")[0])


@pytest.mark.usefixtures("ipv6_forwarding")
def test_removed_ipv6_gateway_is_put_back(inst: Instance, res: Resources) -> None:
    subnet = res.subnets.take()
    subnet6 = res.subnets.v6(subnet)
    gateway6 = f"{subnet6[1]}/64"
    bridge = f"pr{secrets.token_hex(3)}"
    net = res.network(inst.name, "--ipv6", "--subnet", str(subnet), "--subnet", str(subnet6),
                      "-o", f"com.docker.network.bridge.name={bridge}")
    container = res.run("--network", net)
    run(["ip", "addr", "del", gateway6, "dev", bridge])
    wait_for("the IPv6 gateway address to return", lambda: gateway6 in addresses(bridge),
             timeout=REPAIR_TIMEOUT)
    wait_for("the repair to be logged",
             lambda: logged(inst, f"bridge {bridge} lacks its address {gateway6}"))
    docker("exec", container, "ping", "-6", "-c1", "-W3", str(subnet6[1]))


def test_deleted_veth_retires_its_endpoint(inst: Instance, res: Resources) -> None:
    s = populate(inst, res)
    run(["ip", "link", "del", s.host_veth])
    wait_for("the endpoint record to go", lambda: not records(inst).endpoints,
             timeout=REPAIR_TIMEOUT)
    wait_for("the repair to be logged", lambda: logged(
        inst, f"remove endpoint {s.endpoint_id[:12]}: its veth {s.host_veth} is gone"))
    docker("rm", "-f", s.container)  # dockerd's Leave/DeleteEndpoint for a retired endpoint
    assert_consistent(inst)


def test_flushed_chains_are_rewritten(inst: Instance, res: Resources) -> None:
    populate(inst, res)
    prefix = chain_prefix(inst)

    def chain_rules() -> list[str]:
        return sorted(r for r in own_rules(inst) if r.startswith(f"-A {prefix}-"))
    before = chain_rules()
    assert any("MASQUERADE" in r for r in before) and any("FORWARD" in r for r in before)
    run(["iptables", "-F", f"{prefix}-FORWARD"])
    run(["iptables", "-t", "nat", "-F", f"{prefix}-POSTROUTING"])
    run(["iptables", "-D", "FORWARD", "-j", f"{prefix}-FORWARD"])
    assert chain_rules() != before
    wait_for("pynet's chains to be rewritten", lambda: chain_rules() == before,
             timeout=REPAIR_TIMEOUT)
    wait_for("the FORWARD jump to return", lambda: f"-A FORWARD -j {prefix}-FORWARD"
             in own_rules(inst), timeout=REPAIR_TIMEOUT)
    wait_for("the repairs to be logged", lambda: logged(
        inst, f"repair iptables: repaired chain(s) filter {prefix}-FORWARD")
        and logged(inst, f"nat {prefix}-POSTROUTING"))
    assert_consistent(inst)


def test_container_removed_while_pynet_was_down_leaves_no_orphan(
        crashing: tuple[Instance, Path], res: Resources) -> None:
    """pynet is "down" exactly when dockerd sends DeleteEndpoint (it dies on arrival): dockerd
    has already moved the container end back to the host, gives up on pynet and forgets the
    endpoint. The restarted pynet must find and remove that orphan by itself."""
    inst, crash_file = crashing
    s = populate(inst, res)
    wait_for("reconcile to see the container end inside the container",
             lambda: records(inst).endpoints[s.endpoint_id].get("in_container"),
             timeout=REPAIR_TIMEOUT)
    crash_file.write_text("received.DeleteEndpoint")
    user = subprocess.Popen([DOCKER, "rm", "-f", s.container], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert inst.proc is not None
    inst.proc.wait(timeout=30)
    inst.proc = None
    peer = s.host_veth.replace("pnh", "pnc", 1)
    assert link(peer) is not None, "the container end should be back on the host"
    inst.start()
    assert wait_exit(user, timeout=60) == 0
    assert link(s.host_veth) is None and link(peer) is None
    assert not records(inst).endpoints
    wait_for("the repair to be logged", lambda: logged(
        inst, f"remove endpoint {s.endpoint_id[:12]}: its container end {peer} "
        "is back on the host"))
    assert_consistent(inst)


def test_dry_run_prints_the_plan_and_changes_nothing(idle: Instance, res: Resources) -> None:
    s = populate(idle, res)
    prefix = chain_prefix(idle)
    run(["ip", "addr", "del", s.gateway, "dev", s.bridge])
    run(["iptables", "-t", "nat", "-F", f"{prefix}-POSTROUTING"])
    orphan = f"pnh{secrets.token_hex(6)}"  # a veth marked as the instance's, with no record
    run(["ip", "link", "add", orphan, "type", "veth", "peer", "name",
         orphan.replace("pnh", "pnc", 1)])
    run(["ip", "link", "set", orphan, "alias", f"pynet:{idle.name}:{'0' * 64}"])

    def snapshot() -> tuple[object, ...]:
        return (sorted(owned_links(idle).items()), addresses(s.bridge),
                sorted(own_rules(idle)), records(idle))
    before = snapshot()
    plan = dry_run(idle)
    assert f"would restore network {s.network_id[:12]}: bridge {s.bridge} lacks its address" \
        in plan
    assert f"would delete veth {orphan}" in plan
    assert f"would repair iptables: repaired chain(s) nat {prefix}-POSTROUTING" in plan
    assert snapshot() == before, "a dry run changed something"

    idle.stop()  # only a stopped server's kernel objects may be repaired from outside
    done = run(idle.argv("reconcile")).stdout
    idle.start()
    assert f"did: delete veth {orphan}" in done
    assert link(orphan) is None and s.gateway in addresses(s.bridge)
    assert not repairs(dry_run(idle))
    docker("exec", s.container, "ping", "-c1", "-W3", s.gateway.split("/")[0])


def test_the_running_server_is_the_only_owner(pynet: Instance, res: Resources) -> None:
    """While pynet serves, a command-line reconcile or uninstall, or a second server of the
    same instance, would work on the same kernel objects: each refuses and changes nothing.
    A dry run only looks, so it may."""
    net = res.network(pynet.name)
    res.run("--network", net)
    before = records(pynet).networks, records(pynet).endpoints.keys()
    for command in (("reconcile",), ("uninstall",)):
        done = run(pynet.argv(*command), check=False)
        assert done.returncode == 2, done
        assert "pynet serve is running" in done.stderr and "only while it is stopped" in \
            done.stderr, done.stderr
    second = subprocess.run(pynet.argv("serve"), capture_output=True, text=True, timeout=30,
                            env={**os.environ, "PYNET_CALL_DEADLINE": "1"})
    assert second.returncode == 2 and "another server can start only while it is stopped" \
        in second.stderr, second
    assert pynet.answers()
    run(pynet.argv("reconcile", "--dry-run"))
    after = records(pynet)
    assert (after.networks, after.endpoints.keys()) == before


def test_network_removed_while_pynet_was_down_is_shown_and_forgotten(
        crashing: tuple[Instance, Path], res: Resources) -> None:
    """pynet is "down" when dockerd sends DeleteNetwork: dockerd drops the network anyway and
    never names it again. ``pynet status`` shows it unconfirmed; ``pynet forget`` removes its
    bridge and records while the server runs."""
    inst, crash_file = crashing
    gone = res.network(inst.name)
    kept = res.network(inst.name)
    res.run("--network", kept)  # dockerd names it again when the container restarts
    gone_id, kept_id = (docker("network", "inspect", "-f", "{{.Id}}", n).stdout.strip()
                        for n in (gone, kept))
    bridge = f"pn-{gone_id[:12]}"
    crash_file.write_text("received.DeleteNetwork")
    docker("network", "rm", gone)
    assert inst.proc is not None
    inst.proc.wait(timeout=30)
    inst.proc = None
    inst.start()
    docker("restart", "-t", "1", res.containers[0])

    def confirmed() -> dict[str, bool | None]:
        return {n["network"]: n["confirmed"] for n in json.loads(run(inst.argv("status")).stdout)}
    wait_for("dockerd to name the network it has", lambda: confirmed().get(kept_id))
    assert confirmed() == {gone_id: False, kept_id: True}
    assert link(bridge) is not None
    said = run(inst.argv("forget", gone_id[:12])).stdout
    assert f"network {gone_id[:12]} (bridge {bridge}) marked for removal" in said
    wait_for("the forgotten network's bridge to go", lambda: link(bridge) is None,
             timeout=REPAIR_TIMEOUT)
    assert confirmed() == {kept_id: True}
    refused = run(inst.argv("forget", "0123"), check=False)
    assert refused.returncode == 2 and "give at least 12 characters" in refused.stderr
