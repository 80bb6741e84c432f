"""The core driver under a real dockerd: what a user of `-d pynet` sees."""

import ipaddress
import json
import subprocess

import pytest

from lab import (
    Instance,
    addresses,
    docker,
    engine,
    instance_firewall,
    iptables_save,
    link,
    links,
    new_instance,
    nft_objects,
    purge_instance,
    run,
    wait_for,
)
from tests.conftest import Resources
from tests.e2e.consistency import wait_reaped, wait_settled


def inspect(obj: str, fmt: str) -> str:
    return docker("inspect", obj, "--format", fmt).stdout.strip()


def container_ip(name: str, network: str) -> str:
    return inspect(name, f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}')


def pings(src: str, target: str) -> bool:
    return docker("exec", src, "ping", "-c1", "-W2", target, check=False).returncode == 0


def gateway(network: str) -> str:
    """The gateway dockerd's IPAM gave the network (the subnet's first address by default)."""
    subnet = ipaddress.ip_network(inspect(network, "{{(index .IPAM.Config 0).Subnet}}"))
    return inspect(network, "{{(index .IPAM.Config 0).Gateway}}") or str(subnet[1])


def bridge_of(network: str) -> str:
    """pynet's bridge of a network: pynet names it pn-<id12> unless told otherwise."""
    opts = json.loads(inspect(network, "{{json .Options}}"))
    return opts.get("com.docker.network.bridge.name") or "pn-" + inspect(network, "{{.Id}}")[:12]


def test_activate_and_capabilities_accept_empty_bodies(pynet: Instance) -> None:
    assert pynet.call("Plugin.Activate", "") == {"Implements": ["NetworkDriver"]}
    assert pynet.call("NetworkDriver.GetCapabilities", "") == {
        "Scope": "local", "ConnectivityScope": "local", "GwAllocChecker": True}


def test_gateway_is_left_unallocated_only_for_internal_networks_without_ipv4(
        pynet: Instance, res: Resources) -> None:
    """Docker 28+ asks GwAllocCheck before allocating; the answer is the bridge driver's."""
    generic = "com.docker.network.generic"
    inhibit = {"com.docker.network.bridge.inhibit_ipv4": "true"}
    assert pynet.call("NetworkDriver.GwAllocCheck", {"Options": {}}) == {
        "SkipIPv4": False, "SkipIPv6": False}
    assert pynet.call("NetworkDriver.GwAllocCheck", {"Options": {generic: inhibit}}) == {
        "SkipIPv4": False, "SkipIPv6": False}
    assert pynet.call("NetworkDriver.GwAllocCheck", {"Options": {
        generic: inhibit, "com.docker.network.internal": True}}) == {
        "SkipIPv4": True, "SkipIPv6": False}
    if engine() >= 28:  # dockerd then creates the network without a gateway address
        net = res.network(pynet.name, "--internal", "-o",
                          "com.docker.network.bridge.inhibit_ipv4=true")
        assert inspect(net, "{{range .IPAM.Config}}{{.Gateway}}{{end}}") == ""


def test_unknown_method_is_a_json_404(pynet: Instance) -> None:
    done = run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket",
                pynet.socket, "-X", "POST", "http://x/NetworkDriver.Bogus"])
    assert done.stdout == "404"
    assert "unknown method NetworkDriver.Bogus" in pynet.call("NetworkDriver.Bogus", {})["Err"]


def test_unknown_ids_are_deleted_without_complaint(pynet: Instance) -> None:
    ids = {"NetworkID": "a" * 64, "EndpointID": "b" * 64}
    for method in ("Leave", "DeleteEndpoint", "DeleteNetwork", "RevokeExternalConnectivity"):
        assert pynet.call(f"NetworkDriver.{method}", ids) == {}


def test_demo_create_run_ping_by_name_and_remove(pynet: Instance, res: Resources) -> None:
    subnet = res.subnets.take()
    gw = str(subnet.network_address + 1)
    br = f"pn-{res.tag}"
    net = res.network(pynet.name, "--subnet", str(subnet), "--gateway", gw,
                      "--ip-range", str(list(subnet.subnets(new_prefix=25))[1]),
                      "-o", f"com.docker.network.bridge.name={br}",
                      "-o", "com.docker.network.driver.mtu=1400")
    assert addresses(br) == [f"{gw}/24"]
    web = res.run("--network", net)
    ip = container_ip(web, net)
    assert ip == str(subnet.network_address + 128)  # first address of --ip-range
    eth0 = docker("exec", web, "ip", "link", "show", "eth0").stdout
    assert "mtu 1400" in eth0
    mac = "02:42:" + ":".join(f"{int(b):02x}" for b in ip.split("."))
    assert mac in eth0
    assert inspect(web, f'{{{{(index .NetworkSettings.Networks "{net}").MacAddress}}}}') == mac
    route = docker("exec", web, "ip", "route").stdout
    assert f"default via {gw} dev eth0" in route
    client = docker("run", "--rm", "--network", net, "busybox:local", "ping", "-c1", "-W2",
                    web, check=False)
    assert client.returncode == 0, client.stdout + client.stderr
    def web_veth_only() -> list[str]:  # the client's goes once its delete is reaped
        veths = [v["ifname"] for v in links("veth") if v.get("master") == br]
        return veths if len(veths) == 1 else []
    veth, = wait_for("the --rm client's veth to go", web_veth_only)
    assert link(veth)["mtu"] == 1400

    docker("rm", "-f", web)
    assert wait_for("veth removal", lambda: not [v for v in links("veth")
                                                 if v.get("master") == br])
    docker("network", "rm", net)
    res.networks.remove(net)
    wait_reaped(pynet)  # the bridge goes just after the reply (see README, deletes)
    assert link(br) is None
    assert str(subnet) not in run(["ip", "route"]).stdout
    assert br not in iptables_save() + "".join(nft_objects(pynet.name))


def test_two_containers_talk_by_ip_and_name(pynet: Instance, res: Resources) -> None:
    net = res.network(pynet.name)
    a, b = res.run("--network", net), res.run("--network", net)
    assert pings(a, container_ip(b, net))
    assert pings(b, a)


def test_connect_and_disconnect(pynet: Instance, res: Resources) -> None:
    first, second = res.network(pynet.name), res.network(pynet.name)
    a = res.run("--network", first)
    b = res.run("--network", second)
    assert not pings(a, container_ip(b, second))
    docker("network", "connect", second, a)
    assert pings(a, container_ip(b, second))
    assert pings(b, a)
    docker("network", "disconnect", second, a)
    assert "eth1" not in docker("exec", a, "ip", "link").stdout
    assert not pings(a, container_ip(b, second))
    assert len([v for v in links("veth") if v.get("master") == bridge_of(second)]) == 1


def test_static_ip_and_mac_address(pynet: Instance, res: Resources) -> None:
    subnet = res.subnets.take()
    net = res.network(pynet.name, "--subnet", str(subnet))
    ip = str(subnet.network_address + 77)
    c = res.run("--network", net, "--ip", ip, "--mac-address", "02:00:00:00:30:05")
    shown = docker("exec", c, "ip", "addr", "show", "eth0").stdout
    assert f"inet {ip}/24" in shown
    assert "02:00:00:00:30:05" in shown


def test_container_on_two_pynet_networks(pynet: Instance, res: Resources) -> None:
    n1, n2 = res.network(pynet.name), res.network(pynet.name)
    peer1, peer2 = res.run("--network", n1), res.run("--network", n2)
    both = res.run("--network", n1)
    docker("network", "connect", n2, both)
    assert pings(both, container_ip(peer1, n1))
    assert pings(both, container_ip(peer2, n2))


def test_preexisting_bridge_is_reused_and_kept(pynet: Instance, res: Resources) -> None:
    br = f"pu-{res.tag}"
    run(["ip", "link", "add", br, "type", "bridge"])
    try:
        net = res.network(pynet.name, "-o", f"com.docker.network.bridge.name={br}")
        c = res.run("--network", net)
        assert pings(c, gateway(net))
        docker("rm", "-f", c)
        docker("network", "rm", net)
        res.networks.remove(net)
        assert link(br) is not None
    finally:
        run(["ip", "link", "del", br], check=False)


def test_internal_network_still_connects_its_members(pynet: Instance, res: Resources) -> None:
    net = res.network(pynet.name, "--internal")
    a, b = res.run("--network", net), res.run("--network", net)
    assert pings(a, b)
    assert "eth1" not in docker("exec", a, "ip", "link").stdout  # no docker_gwbridge


@pytest.mark.parametrize("opts,message", [
    (["-o", "com.docker.network.bridge.name=abcdefghijklmnop"],
     "bridge name 'abcdefghijklmnop' is 16 characters; Linux allows at most 15"),
    (["-o", "com.docker.network.driver.mtu=abc"],
     "failed to parse com.docker.network.driver.mtu value: 'abc'"),
    (["-o", "com.docker.network.bridge.enable_icc=maybe"],
     "failed to parse com.docker.network.bridge.enable_icc value: 'maybe'"),
])
def test_refused_options_leave_nothing(pynet: Instance, res: Resources, opts: list[str],
                                       message: str) -> None:
    wait_reaped(pynet)  # the previous test's removals must not end inside this one
    wait_settled(pynet)  # nor the start-up restore's writes, when this test starts the instance
    before_links = {item["ifname"] for item in links()}
    before_rules = instance_firewall(pynet.name)
    done = docker("network", "create", "-d", pynet.name, "--subnet", str(res.subnets.take()),
                  *opts, f"pt-{res.tag}-bad", check=False)
    assert done.returncode != 0
    assert message in done.stderr
    assert docker("network", "ls", "-q", "--filter", f"name=pt-{res.tag}-bad").stdout == ""
    assert {item["ifname"] for item in links()} == before_links
    assert instance_firewall(pynet.name) == before_rules


def test_second_network_on_the_same_bridge_name_is_refused(pynet: Instance,
                                                           res: Resources) -> None:
    br = f"pn-{res.tag}"
    first = res.network(pynet.name, "-o", f"com.docker.network.bridge.name={br}")
    wait_settled(pynet)  # its rules are written after CreateNetwork answers (deferred_rules.py)
    def own_rules() -> list[str]:  # other tests may be changing theirs meanwhile
        return instance_firewall(pynet.name) + [r for r in iptables_save().splitlines()
                                                if br in r]
    rules = own_rules()
    done = docker("network", "create", "-d", pynet.name, "--subnet", str(res.subnets.take()),
                  "-o", f"com.docker.network.bridge.name={br}", f"pt-{res.tag}-dup", check=False)
    assert done.returncode != 0
    assert f"bridge {br} is already used by network" in done.stderr
    assert own_rules() == rules
    c = res.run("--network", first)  # the first network is untouched
    assert pings(c, gateway(first))


def test_restart_keeps_networks_working(dockerd: None, res: Resources) -> None:
    inst = new_instance()
    inst.start()
    try:
        net = res.network(inst.name)
        a, b = res.run("--network", net), res.run("--network", net)
        inst.stop(subprocess.signal.SIGKILL)
        inst.start()
        c = res.run("--network", net)
        assert pings(c, a)
        assert pings(a, container_ip(b, net))
        assert "restored 1 network(s)" in inst.log()
    finally:
        res.cleanup()
        res.containers.clear()
        res.networks.clear()
        leftovers = purge_instance(inst)
    assert not leftovers
