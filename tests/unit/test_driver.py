"""The driver's decisions and failure paths, with fakes for the kernel and a stub firewall.

What the kernel does with pynet's requests is tested against the kernel (tests/kernel); here it
is what the driver asks for, in which order, and what it leaves behind when a step fails: a
refused or failed call must leave no record, no link and no rule.
"""

import ipaddress
from collections.abc import Callable, Container, Iterator
from pathlib import Path

import pytest

from lab import hex_id, network_body
from plugin import protocol
from plugin.config import Settings
from plugin.driver import Driver, gateway_skips
from plugin.errors import Conflict, InvalidRequest, KernelError
from plugin.firewall.rules import Desired
from plugin.netlink import Link
from plugin.ports import PortReservations
from plugin.store import DELETING, Store

HOST_ROUTES = [(ipaddress.IPv4Network("0.0.0.0/0"), "eth0"),
               (ipaddress.IPv4Network("192.0.2.0/24"), "eth0")]
HOST_ROUTES_V6 = [(ipaddress.IPv6Network("::/0"), "eth0"),
                  (ipaddress.IPv6Network("2001:db8:1::/64"), "eth0")]


class FakeNetlink:
    """Links as a dict; ``fail`` names a method that raises, as the kernel might."""

    def __init__(self) -> None:
        self.links: dict[str, Link] = {}
        self.addresses: dict[str, set[str]] = {}
        self.fail = ""
        self.calls: list[str] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.fail == name:
            raise KernelError(f"{name}: EPERM (a fake failure)")

    def sibling(self) -> "FakeNetlink":
        return self

    def close(self) -> None:
        """Nothing to release."""

    def routes_v4(self, overlapping: ipaddress.IPv4Network | None = None,
                  skip: Container[str] = ()) -> list[tuple[ipaddress.IPv4Network, str]]:
        """The host's routes, and one per bridge address (as the kernel adds them)."""
        routes = HOST_ROUTES + [(ipaddress.IPv4Interface(address).network, name)
                                for name, found in self.addresses.items() for address in found]
        return [r for r in routes if r[1] not in skip
                and (overlapping is None or r[0].overlaps(overlapping))]

    def routes_v6(self, overlapping: ipaddress.IPv6Network, skip: Container[str] = ()
                  ) -> list[tuple[ipaddress.IPv6Network, str]]:
        return [r for r in HOST_ROUTES_V6 if r[1] not in skip and r[0].overlaps(overlapping)]

    def get(self, name: str) -> Link | None:
        return self.links.get(name)

    def ensure_bridge(self, name: str, alias: str | None) -> bool:
        self._call("ensure_bridge")
        self.links[name] = Link(len(self.links) + 1, name, "bridge", 1500, alias or "", 0, True)
        return True

    def ensure_address(self, name: str, address: ipaddress.IPv4Interface) -> None:
        self._call("ensure_address")
        self.addresses.setdefault(name, set()).add(str(address))

    def ensure_veth(self, host: str, peer: str, bridge: str, mtu: int, mac: str, alias: str,
                    hairpin: bool) -> None:
        self._call("ensure_veth")
        self.links[host] = Link(len(self.links) + 1, host, "veth", mtu, alias, 0, True)
        self.links[peer] = Link(len(self.links) + 1, peer, "veth", mtu, "", 0, True)

    def delete(self, name: str) -> bool:
        self.addresses.pop(name, None)
        return self.links.pop(name, None) is not None

    def flush_conntrack(self, address: ipaddress.IPv4Address) -> int:
        return 0


class FakeSysctl:
    root = Path("/fake/proc/sys")

    def __init__(self) -> None:
        self.values = {"net/ipv4/ip_forward": "1", "net/ipv6/conf/all/forwarding": "1",
                       "net/ipv6/conf/all/disable_ipv6": "0",
                       "net/bridge/bridge-nf-call-iptables": "1",
                       "net/bridge/bridge-nf-call-ip6tables": "1",
                       "net/ipv4/ip_local_port_range": "32768\t60999"}

    def read(self, key: str) -> str | None:
        return self.values.get(key)

    def ensure(self, key: str, value: str) -> None:
        self.values[key] = value


class StubFirewall:
    """Keeps what it was last asked for; ``fail`` makes the next apply raise."""

    name = "stub"
    ipv6 = True

    def __init__(self) -> None:
        self.applied: Desired = Desired([], [])
        self.fail = False

    def apply(self, desired: Callable[[], Desired], fresh: bool = False,
              keep: bool = False) -> bool:
        if self.fail:
            raise KernelError("iptables-nft-restore exited 1 (a fake failure)")
        self.applied = desired()
        return True

    def repair_needed(self, desired: Callable[[], Desired]) -> str | None:
        return None

    def remove_all(self) -> bool:
        return False

    def layout(self) -> str:
        return "stub"


class World:
    def __init__(self, driver: Driver, netlink: FakeNetlink, firewall: StubFirewall,
                 sysctl: FakeSysctl) -> None:
        self.driver, self.netlink, self.firewall, self.sysctl = driver, netlink, firewall, sysctl

    def firewalled(self) -> Desired:
        """What the firewall holds once the rules new networks owe are written (the HTTP
        layer starts that after CreateNetwork's answer; CreateEndpoint waits for it)."""
        self.driver.rules_due.settle()
        return self.firewall.applied

    def bridges(self) -> list[str]:
        return [spec.bridge for spec in self.firewalled().networks]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    netlink, firewall, sysctl = FakeNetlink(), StubFirewall(), FakeSysctl()
    driver = Driver(Settings(name="pynet-unit", state_dir=str(tmp_path)), Store(str(tmp_path)),
                    netlink, sysctl, firewall, PortReservations(sysctl))  # type: ignore[arg-type]
    driver.ready.set()
    yield World(driver, netlink, firewall, sysctl)
    driver.close()


def create(pool: str, space: str = "LocalDefault", bridge: str = "", pool_v6: str | None = None,
           internal: bool = False, **options: str) -> protocol.CreateNetwork:
    """CreateNetwork; ``options``: ``-o`` keys after com.docker.network.bridge."""
    generic = {"com.docker.network.bridge.name": bridge} if bridge else {}
    generic.update({f"com.docker.network.bridge.{k}": v for k, v in options.items()})
    return protocol.CreateNetwork.parse(network_body(hex_id(), pool, space=space,
                                                     generic=generic, pool_v6=pool_v6,
                                                     internal=internal))


def endpoint(network_id: str, address: str, address_v6: str = "") -> protocol.CreateEndpoint:
    return protocol.CreateEndpoint.parse({
        "NetworkID": network_id, "EndpointID": hex_id(),
        "Interface": {"Address": address, "AddressIPv6": address_v6}})


def publish(world: "World", ep: protocol.CreateEndpoint, *bindings: tuple[str, int]) -> None:
    """ProgramExternalConnectivity with tcp bindings (host address, host port) of port 80+i."""
    world.driver.program_external(protocol.ProgramExternalConnectivity.parse({
        "NetworkID": ep.network_id, "EndpointID": ep.endpoint_id,
        "Options": {protocol.PORTMAP: [
            {"Proto": 6, "Port": 80 + i, "HostIP": ip, "HostPort": port, "HostPortEnd": port}
            for i, (ip, port) in enumerate(bindings)]}}))


def test_a_network_is_recorded_built_and_firewalled(world: World) -> None:
    req = create("10.231.40.0/24", bridge="pt-unit0")
    world.driver.create_network(req)
    record = world.driver.store.network(req.network_id)
    assert record is not None and record.state == "ready" and record.bridge == "pt-unit0"
    assert world.netlink.addresses["pt-unit0"] == {"10.231.40.1/24"}
    assert world.netlink.links["pt-unit0"].alias == f"pynet:pynet-unit:{req.network_id}"
    # no IPv6 on the bridge of a network without it (it gets no IPv6 rules either)
    assert world.sysctl.values["net/ipv6/conf/pt-unit0/disable_ipv6"] == "1"
    assert world.bridges() == ["pt-unit0"]


@pytest.mark.parametrize("failing", ["ensure_bridge", "ensure_address"])
def test_a_failed_create_is_rolled_back(world: World, failing: str) -> None:
    world.netlink.fail = failing
    req = create("10.231.41.0/24", bridge="pt-unit1")
    with pytest.raises(KernelError):
        world.driver.create_network(req)
    world.netlink.fail = ""
    world.driver.reap()
    assert world.driver.store.network(req.network_id) is None
    assert "pt-unit1" not in world.netlink.links
    assert world.bridges() == []


def test_a_network_answers_before_its_rules_and_its_first_endpoint_waits_for_them(
        world: World) -> None:
    req = create("10.231.41.0/24", bridge="pt-unit1")
    world.driver.create_network(req)
    assert world.firewall.applied.networks == []  # owed: written after the answer
    assert world.driver.rules_due.busy()  # the periodic check does not call that damage
    world.driver.rules_due.start()  # what the HTTP layer does once the answer is out
    world.driver.create_endpoint(endpoint(req.network_id, "10.231.41.2/24"))
    assert not world.driver.rules_due.busy()
    assert [n.bridge for n in world.firewall.applied.networks] == ["pt-unit1"]


def test_a_check_that_a_create_overtakes_reports_no_damage(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The periodic check reads the records, then the firewall: a network created in between
    is in the records with its rules owed, which is no damage."""
    req = create("10.231.41.0/24", bridge="pt-unit1")

    def created_meanwhile(desired: Callable[[], Desired]) -> str:
        world.driver.create_network(req)
        return "chain in-pt-unit1 is missing"

    monkeypatch.setattr(world.firewall, "repair_needed", created_meanwhile)
    assert world.driver.firewall_repair() is None
    world.driver.rules_due.settle()
    assert world.driver.firewall_repair() == "stub: chain in-pt-unit1 is missing"


def test_rules_that_fail_after_the_answer_keep_endpoints_off_the_bridge_until_written(
        world: World) -> None:
    req = create("10.231.41.0/24", bridge="pt-unit1")
    world.driver.create_network(req)
    world.firewall.fail = True
    world.driver.rules_due.start()
    ep = endpoint(req.network_id, "10.231.41.2/24")
    with pytest.raises(KernelError, match="a fake failure"):
        world.driver.create_endpoint(ep)
    assert not world.driver.rules_due.busy()  # damage now, for the periodic check to repair
    host, _ = Driver.veth_names(ep.endpoint_id)
    assert host not in world.netlink.links and world.driver.store.endpoint(ep.endpoint_id) is None
    with pytest.raises(KernelError, match="a fake failure"):  # still owed, tried again
        world.driver.create_endpoint(ep)
    world.firewall.fail = False
    world.driver.create_endpoint(ep)
    assert host in world.netlink.links
    assert [n.bridge for n in world.firewall.applied.networks] == ["pt-unit1"]


@pytest.mark.parametrize("pool,why", [
    ("192.0.2.128/25", "overlaps the host's route to 192.0.2.0/24 via eth0"),
    ("127.0.0.0/8", "overlaps 127.0.0.0/8"),
])
def test_a_refused_create_touches_nothing(world: World, pool: str, why: str) -> None:
    with pytest.raises(InvalidRequest, match=why):
        world.driver.create_network(create(pool))
    assert world.driver.store.networks() == ()
    assert world.netlink.calls == []


def test_a_pool_that_dockerd_gave_again_supersedes_the_old_network(world: World) -> None:
    """dockerd's own IPAM never overlaps pools: the old network was removed while pynet was
    down, and goes (bridge, rules, record) before the new one is built."""
    old, new = create("10.231.42.0/24", bridge="pt-old"), create("10.231.42.0/24")
    world.driver.create_network(old)
    world.driver.create_network(new)
    world.driver.reap()
    assert world.driver.store.network(old.network_id) is None
    assert "pt-old" not in world.netlink.links
    assert world.bridges() == [f"pn-{new.network_id[:12]}"]


def test_an_overlap_of_another_ipam_is_refused_and_the_old_network_stays(world: World) -> None:
    old = create("10.231.43.0/24", bridge="pt-keep")
    world.driver.create_network(old)
    with pytest.raises(InvalidRequest, match=f"overlaps 10.231.43.0/24 of network "
                                             f"{old.network_id[:12]} .bridge pt-keep.*pynet "
                                             "forget"):
        world.driver.create_network(create("10.231.43.0/25", space="other"))
    record = world.driver.store.network(old.network_id)
    assert record is not None and record.state == "ready"
    assert world.bridges() == ["pt-keep"]


def test_a_failed_publish_releases_every_port_and_leaves_no_rule(world: World) -> None:
    req = create("10.231.44.0/24")
    world.driver.create_network(req)
    first, second = endpoint(req.network_id, "10.231.44.2/24"), \
        endpoint(req.network_id, "10.231.44.3/24")
    for ep in (first, second):
        world.driver.create_endpoint(ep)
    port = world.driver.ports.reserve("tcp", ipaddress.IPv4Address("0.0.0.0"), 0, 0)
    world.driver.ports.release("tcp", ipaddress.IPv4Address("0.0.0.0"), port)

    def publish(ep: protocol.CreateEndpoint, *host_ports: int) -> None:
        world.driver.program_external(protocol.ProgramExternalConnectivity.parse({
            "NetworkID": req.network_id, "EndpointID": ep.endpoint_id,
            "Options": {protocol.PORTMAP: [
                {"Proto": 6, "Port": 80 + i, "HostIP": "", "HostPort": p, "HostPortEnd": p}
                for i, p in enumerate(host_ports)]}}))
    publish(first, port)
    free = world.driver.ports.reserve("tcp", ipaddress.IPv4Address("0.0.0.0"), 0, 0)
    world.driver.ports.release("tcp", ipaddress.IPv4Address("0.0.0.0"), free)
    with pytest.raises(Conflict, match=f"host port {port}/tcp"):
        publish(second, free, port)  # the second binding collides with the first endpoint's
    record = world.driver.store.endpoint(second.endpoint_id)
    assert record is not None and record.ports == []
    assert [p.host_port for p in world.firewall.applied.ports] == [port]
    world.driver.ports.release("tcp", ipaddress.IPv4Address("0.0.0.0"),
                               world.driver.ports.reserve("tcp", ipaddress.IPv4Address("0.0.0.0"),
                                                          free, free))  # given back


def test_a_deleted_endpoint_frees_its_ports_at_once_and_its_rules_after(world: World) -> None:
    req = create("10.231.45.0/24")
    world.driver.create_network(req)
    ep = endpoint(req.network_id, "10.231.45.2/24")
    world.driver.create_endpoint(ep)
    world.driver.program_external(protocol.ProgramExternalConnectivity.parse({
        "NetworkID": req.network_id, "EndpointID": ep.endpoint_id,
        "Options": {protocol.PORTMAP: [{"Proto": 6, "Port": 80, "HostIP": "", "HostPort": 0,
                                        "HostPortEnd": 0}]}}))
    (published,) = world.firewall.applied.ports
    with world.driver.deletes.reap_lock:  # the reaper is busy elsewhere
        world.driver.delete_endpoint(protocol.EndpointRef(req.network_id, ep.endpoint_id))
        record = world.driver.store.endpoint(ep.endpoint_id)
        assert record is not None and record.state == DELETING and record.ports == []
        assert world.driver.deletes.rules_pending("10.231.45.2/24")
        held = ipaddress.IPv4Address("0.0.0.0")
        world.driver.ports.release("tcp", held, world.driver.ports.reserve(
            "tcp", held, published.host_port, published.host_port))  # free for the next run
    world.driver.reap()
    assert world.firewall.applied.ports == []
    assert world.driver.store.endpoint(ep.endpoint_id) is None
    assert not world.driver.deletes.rules_pending("10.231.45.2/24")


def test_a_dual_stack_network_gets_both_gateways_and_both_firewalls(world: World) -> None:
    req = create("10.231.46.0/24", bridge="pt-unit6", pool_v6="fd31:46::/64")
    world.driver.create_network(req)
    assert world.netlink.addresses["pt-unit6"] == {"10.231.46.1/24", "fd31:46::1/64"}
    assert world.sysctl.values["net/ipv6/conf/pt-unit6/disable_ipv6"] == "0"
    (spec,) = world.firewalled().networks
    assert spec.subnet_v6 == ipaddress.IPv6Network("fd31:46::/64")
    ep = endpoint(req.network_id, "10.231.46.2/24", "fd31:46::2/64")
    world.driver.create_endpoint(ep)
    joined = world.driver.join(protocol.Join.parse({
        "NetworkID": req.network_id, "EndpointID": ep.endpoint_id, "SandboxKey": "/x"}))
    assert (joined.gateway, joined.gateway_v6) == ("10.231.46.1", "fd31:46::1")


def test_a_binding_without_host_address_is_published_on_both_families(world: World) -> None:
    req = create("10.231.47.0/24", pool_v6="fd31:47::/64")
    world.driver.create_network(req)
    ep = endpoint(req.network_id, "10.231.47.2/24", "fd31:47::2/64")
    world.driver.create_endpoint(ep)
    publish(world, ep, ("", 0), ("::", 0), ("127.0.0.1", 0))
    ports = world.firewall.applied.ports
    assert [(str(p.container_ip), p.port, str(p.host_ip)) for p in ports] == [
        ("10.231.47.2", 80, "None"), ("fd31:47::2", 80, "None"),
        ("fd31:47::2", 81, "None"), ("10.231.47.2", 82, "127.0.0.1")]
    assert ports[0].host_port == ports[1].host_port  # one port on both families
    world.driver.revoke_external(protocol.EndpointRef(req.network_id, ep.endpoint_id))
    assert world.driver.ports.held() == set()


def test_an_ipv6_binding_of_an_ipv4_only_container_is_refused_and_reserves_nothing(
        world: World) -> None:
    req = create("10.231.48.0/24")
    world.driver.create_network(req)
    ep = endpoint(req.network_id, "10.231.48.2/24")
    world.driver.create_endpoint(ep)
    with pytest.raises(InvalidRequest, match="cannot publish 81/tcp on ::: the container has "
                                             "no IPv6 address"):
        publish(world, ep, ("", 0), ("::", 0))
    assert world.driver.ports.held() == set() and world.firewall.applied.ports == []


@pytest.mark.parametrize("setting,value,why", [
    ("net/ipv6/conf/all/disable_ipv6", "1", "IPv6 is disabled on the host"),
    ("net/ipv6/conf/all/forwarding", "0", "IPv6 forwarding is off on the host"),
    ("firewall", "", "firewall cannot write IPv6 rules here"),
])
def test_an_ipv6_network_the_host_cannot_serve_is_refused(world: World, setting: str,
                                                         value: str, why: str) -> None:
    if setting == "firewall":
        world.firewall.ipv6 = False
    else:
        world.sysctl.values[setting] = value
    with pytest.raises(InvalidRequest, match=why):
        world.driver.create_network(create("10.231.49.0/24", pool_v6="fd31:49::/64"))
    assert world.driver.store.networks() == () and world.netlink.calls == []


def test_an_internal_ipv6_network_needs_no_forwarding(world: World) -> None:
    world.sysctl.values["net/ipv6/conf/all/forwarding"] = "0"
    req = create("10.231.50.0/24", pool_v6="fd31:50::/64", internal=True)
    world.driver.create_network(req)
    assert world.driver.store.network(req.network_id) is not None


@pytest.mark.parametrize("pool_v6,why", [
    ("2001:db8:1::/80", "overlaps the host's route to 2001:db8:1::/64 via eth0"),
])
def test_an_ipv6_pool_the_host_routes_is_refused(world: World, pool_v6: str, why: str) -> None:
    with pytest.raises(InvalidRequest, match=why):
        world.driver.create_network(create("10.231.51.0/24", pool_v6=pool_v6))
    assert world.netlink.calls == []


def test_an_ipv6_address_outside_the_ipv6_subnet_is_refused(world: World) -> None:
    req = create("10.231.52.0/24", pool_v6="fd31:52::/64")
    world.driver.create_network(req)
    with pytest.raises(InvalidRequest, match="IPv6 address fd31:99::2/64 is outside"):
        world.driver.create_endpoint(endpoint(req.network_id, "10.231.52.2/24",
                                              "fd31:99::2/64"))
    assert world.driver.store.endpoints() == []


def ipv6_only(pool_v6: str) -> protocol.CreateNetwork:
    """An IPv6-only network (--ipv4=false) as dockerd 28+ asks for it."""
    body = network_body(hex_id(), "10.231.53.0/24", pool_v6=pool_v6)
    body["IPv4Data"] = []
    body["Options"]["com.docker.network.enable_ipv4"] = False
    return protocol.CreateNetwork.parse(body)


def test_an_ipv6_only_network_has_only_ipv6(world: World) -> None:
    world.sysctl.values["net/ipv4/ip_forward"] = "0"  # IPv4 forwarding plays no part
    req = ipv6_only("fd31:53::/64")
    world.driver.create_network(req)
    record = world.driver.store.network(req.network_id)
    assert record is not None and record.config.subnet is None
    assert world.netlink.addresses[record.bridge] == {"fd31:53::1/64"}
    (spec,) = world.firewalled().networks
    assert spec.subnet is None and str(spec.subnet_v6) == "fd31:53::/64"
    ep = protocol.CreateEndpoint.parse({"NetworkID": req.network_id, "EndpointID": hex_id(),
                                        "Interface": {"AddressIPv6": "fd31:53::2/64"}})
    mac = world.driver.create_endpoint(ep)
    assert mac is not None and mac.startswith("02:42:")
    joined = world.driver.join(protocol.Join.parse({
        "NetworkID": req.network_id, "EndpointID": ep.endpoint_id, "SandboxKey": "/x"}))
    assert (joined.gateway, joined.gateway_v6) == (None, "fd31:53::1")
    publish(world, ep, ("", 0))
    (port,) = world.firewall.applied.ports
    assert (str(port.container_ip), port.host_ip) == ("fd31:53::2", None)
    with pytest.raises(InvalidRequest, match="no IPv4 address on this network"):
        publish(world, ep, ("", 0), ("0.0.0.0", 0))
    assert world.firewall.applied.ports == [] and world.driver.ports.held() == set()


@pytest.mark.parametrize("interface,why", [
    ({"Address": "10.231.53.2/24", "AddressIPv6": "fd31:54::2/64"},
     "IPv4 address 10.231.53.2/24 is outside the network's IPv4 subnet .none"),
    ({}, "has no IPv6 address; its network has the IPv6 subnet fd31:54::/64"),
])
def test_an_ipv6_only_network_refuses_endpoints_it_cannot_build(world: World, interface: dict,
                                                                why: str) -> None:
    req = ipv6_only("fd31:54::/64")
    world.driver.create_network(req)
    with pytest.raises(InvalidRequest, match=why):
        world.driver.create_endpoint(protocol.CreateEndpoint.parse({
            "NetworkID": req.network_id, "EndpointID": hex_id(), "Interface": interface}))
    assert world.driver.store.endpoints() == []


def test_an_ipv6_only_network_with_an_ipv4_host_binding_publishes_nothing(world: World) -> None:
    """The bridge driver binds no IPv6 when host_binding_ipv4 names an address; pynet refuses
    rather than publish on [::] (every address) what the user bound to one."""
    body = network_body(hex_id(), "10.231.55.0/24", pool_v6="fd31:55::/64",
                        generic={"com.docker.network.bridge.host_binding_ipv4": "127.0.0.1"})
    body["IPv4Data"] = []
    req = protocol.CreateNetwork.parse(body)
    world.driver.create_network(req)
    ep = protocol.CreateEndpoint.parse({"NetworkID": req.network_id, "EndpointID": hex_id(),
                                        "Interface": {"AddressIPv6": "fd31:55::2/64"}})
    world.driver.create_endpoint(ep)
    with pytest.raises(InvalidRequest, match="host_binding_ipv4 is 127.0.0.1"):
        publish(world, ep, ("", 0))
    assert world.driver.ports.held() == set() and world.firewall.applied.ports == []


def test_ipv6_goes_off_at_start_on_bridges_an_earlier_release_left_it_on(world: World) -> None:
    v4_only, dual = create("10.231.56.0/24", bridge="pt-old4"), \
        create("10.231.57.0/24", bridge="pt-old6", pool_v6="fd31:57::/64")
    for req in (v4_only, dual):
        world.driver.create_network(req)
    del world.sysctl.values["net/ipv6/conf/pt-old4/disable_ipv6"]  # as the release left it
    world.driver.ipv6_off_everywhere()
    assert world.sysctl.values["net/ipv6/conf/pt-old4/disable_ipv6"] == "1"
    assert world.sysctl.values["net/ipv6/conf/pt-old6/disable_ipv6"] == "0"


def test_routed_ports_hold_no_host_port_and_nat_ones_do(world: World) -> None:
    """routed IPv4, nat IPv6: -p 8080:80 opens the container's IPv4 port (no host port, the
    host address asked for does not matter, as with the bridge driver) and reserves 8080 on
    :: only; -p 127.0.0.1:8081:81 is routed too."""
    req = create("10.231.55.0/24", pool_v6="fd31:55::/64", gateway_mode_ipv4="routed")
    world.driver.create_network(req)
    ep = endpoint(req.network_id, "10.231.55.2/24", "fd31:55::2/64")
    world.driver.create_endpoint(ep)
    publish(world, ep, ("", 8080), ("127.0.0.1", 8081))
    record = world.driver.store.endpoint(ep.endpoint_id)
    assert record is not None
    assert [str(p) for p in record.ports] == ["[::]:8080->80/tcp", "0.0.0.0:->80/tcp",
                                              "0.0.0.0:->81/tcp"]
    assert {(str(k.host_ip), k.port) for k in world.driver.ports.held()} == {("::", 8080)}
    assert [(str(p.container_ip), p.port, p.routed) for p in world.firewall.applied.ports] == [
        ("fd31:55::2", 80, False), ("10.231.55.2", 80, True), ("10.231.55.2", 81, True)]
    world.driver.revoke_external(protocol.EndpointRef(req.network_id, ep.endpoint_id))
    assert world.driver.ports.held() == set()


def test_an_isolated_family_leaves_the_bridge_without_an_address(world: World) -> None:
    """gateway mode isolated (internal only): dockerd is told not to reserve the gateway,
    and the bridge gets no address of that family (IPv6: IPv6 off on it)."""
    body = network_body(hex_id(), "10.231.56.0/24", pool_v6="fd31:56::/64", internal=True,
                        generic={"com.docker.network.bridge.gateway_mode_ipv6": "isolated"})
    check = protocol.GwAllocCheck.parse({"Options": body["Options"]})
    assert gateway_skips(check.options) == (False, True)
    req = create("10.231.56.0/24", pool_v6="fd31:56::/64", internal=True,
                 gateway_mode_ipv6="isolated")
    world.driver.create_network(req)
    record = world.driver.store.network(req.network_id)
    assert record is not None
    assert world.netlink.addresses[record.bridge] == {"10.231.56.1/24"}
    assert world.sysctl.values[f"net/ipv6/conf/{record.bridge}/disable_ipv6"] == "1"


def test_isolated_needs_an_internal_network(world: World) -> None:
    with pytest.raises(InvalidRequest, match="gateway mode 'isolated' .*gateway_mode_ipv4.* can "
                                             "only be used for an internal network"):
        world.driver.create_network(create("10.231.57.0/24", gateway_mode_ipv4="isolated"))
    assert world.bridges() == [] and world.driver.store.networks() == ()


def test_a_mode_of_a_family_the_network_lacks_changes_nothing(world: World) -> None:
    """As with the bridge driver: nat-unprotected IPv6 on an IPv4-only network must not open
    its bridge to IPv6 (a user's bridge keeps IPv6 on)."""
    req = create("10.231.58.0/24", gateway_mode_ipv6="nat-unprotected")
    world.driver.create_network(req)
    (spec,) = world.firewalled().networks
    assert spec.modes == ("nat", "nat")


def test_routed_ports_take_no_reservation_at_start(world: World) -> None:
    req = create("10.231.59.0/24", gateway_mode_ipv4="routed")
    world.driver.create_network(req)
    ep = endpoint(req.network_id, "10.231.59.2/24")
    world.driver.create_endpoint(ep)
    publish(world, ep, ("", 8080))
    world.driver.hold_ports()  # what a restart does with the records
    assert world.driver.ports.held() == set()
    assert gateway_skips(req.options) == (False, False)


def test_isolated_ipv4_skips_the_ipv4_gateway(world: World) -> None:
    req = create("10.231.60.0/24", internal=True, gateway_mode_ipv4="isolated")
    assert gateway_skips(req.options) == (True, False)
    world.driver.create_network(req)
    record = world.driver.store.network(req.network_id)
    assert record is not None and world.netlink.addresses.get(record.bridge, set()) == set()
