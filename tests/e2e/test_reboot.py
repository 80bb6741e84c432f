"""Reboot: the kernel forgets every bridge, veth and rule; pynet's records must bring it back.

dockerd never re-sends CreateNetwork, so after a reboot pynet alone knows its networks. The test
stops dockerd as a shutdown would (containers stop, dockerd tells pynet), wipes what a reboot
wipes (pynet's links and chains), starts pynet first - a legacy socket plugin has to be up before
dockerd restarts containers - and then dockerd, whose ``--restart=always`` container must come
back on its pynet network with working connectivity and its published port.

It restarts the host's dockerd, which other work on the machine shares: one test, marked.
"""

from collections.abc import Iterator

import pytest

from lab import (
    Instance,
    addresses,
    docker,
    ensure_dockerd,
    free_port,
    link,
    new_instance,
    purge_instance,
    run,
    start_dockerd,
    stop_dockerd,
    wait_for,
)
from plugin.firewall.iptables import IPTables
from plugin.firewall.rules import Chains
from tests.conftest import Resources
from tests.e2e.consistency import (
    assert_consistent,
    chain_prefix,
    ip_in,
    own_rules,
    owned_links,
)

HTTPD = ("sh", "-c", "mkdir -p /w && echo pynet-ok > /w/index.html && httpd -f -p 80 -h /w")
@pytest.fixture
def inst(dockerd: None) -> Iterator[Instance]:
    inst = new_instance()
    inst.start()
    yield inst
    ensure_dockerd()  # whatever happened, leave the machine with a dockerd
    leftovers = purge_instance(inst)
    assert not leftovers, f"reboot test left these behind: {leftovers}"


def answers_http(port: int) -> bool:
    return "pynet-ok" in run(["curl", "-sf", "--max-time", "2", f"http://127.0.0.1:{port}/"],
                             check=False).stdout


@pytest.mark.dockerd_restart
def test_networks_and_restart_always_containers_survive_a_reboot(inst: Instance,
                                                                 res: Resources) -> None:
    subnet = str(res.subnets.take())
    gateway = ip_in(subnet, 1)
    bridge = f"pb{inst.name[-6:]}"
    net = res.network(inst.name, "--subnet", subnet, "--gateway", gateway,
                      "-o", f"com.docker.network.bridge.name={bridge}")
    port = free_port()
    web = res.run("--network", net, "--restart=always", "--stop-timeout", "1",
                  "-p", f"127.0.0.1:{port}:80", command=HTTPD)
    wait_for("the published port before the reboot", lambda: answers_http(port), timeout=20)
    rules_before = sorted(r for r in own_rules(inst) if f"-A {chain_prefix(inst)}-" in r
                          and "DNAT" not in r and "--dport" not in r)

    dockerd = stop_dockerd()
    inst.stop()
    for name in owned_links(inst):  # what a reboot wipes
        run(["ip", "link", "del", name], check=False)
    chains = Chains(chain_prefix(inst))
    IPTables(chains).remove_all()
    assert link(bridge) is None and not own_rules(inst)

    inst.start()
    # Any call waits for the start-up restore: when it returns, the network must be back.
    assert inst.call("NetworkDriver.EndpointOperInfo",
                     {"NetworkID": "0" * 64, "EndpointID": "0" * 64}) == {"Value": {}}
    assert link(bridge) is not None and f"{gateway}/24" in addresses(bridge)
    assert sorted(r for r in own_rules(inst) if f"-A {chain_prefix(inst)}-" in r
                  and "DNAT" not in r and "--dport" not in r) == rules_before
    assert "restore network" in inst.log() and f"bridge {bridge} is missing" in inst.log()

    start_dockerd(dockerd)
    wait_for("the restart=always container to run again", lambda: docker(
        "inspect", "-f", "{{.State.Running}}", web, check=False).stdout.strip() == "true",
        timeout=120, interval=0.5)
    wait_for("its published port to answer", lambda: answers_http(port), timeout=30)
    docker("exec", web, "ping", "-c1", "-W3", gateway)
    assert_consistent(inst)
