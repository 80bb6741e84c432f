"""Bridges, veths and addresses in a throwaway network namespace, through plugin.netlink."""

import ipaddress
import json
import os
import secrets
import subprocess
import threading
from collections.abc import Iterator

import pytest

from lab import wait_for
from lab.netns import thread_in_netns
from plugin.errors import Conflict, KernelError
from plugin.netlink import Netlink, mac_from_ipv4

GW = ipaddress.ip_interface("10.231.250.1/24")


@pytest.fixture(params=["socket-in-netns", "thread-in-netns"])
def ns(request: pytest.FixtureRequest) -> Iterator[str]:
    """A throwaway namespace, and how the ``nl`` fixture reaches it: a socket opened there
    while the thread stays home, or (as the plugin runs, on the host's namespace) a socket of
    the thread's own namespace, which reads interface indexes by ioctl rather than netlink."""
    if request.param == "thread-in-netns":
        with thread_in_netns() as name:
            yield name
        return
    name = f"pnk-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=True)


@pytest.fixture
def nl(ns: str, request: pytest.FixtureRequest) -> Iterator[Netlink]:
    in_thread = request.node.callspec.params["ns"] == "thread-in-netns"
    netlink = Netlink() if in_thread else Netlink(netns=ns)
    yield netlink
    netlink.close()


def ip_link(ns: str, name: str) -> dict:
    out = subprocess.run(["ip", "-n", ns, "-j", "-d", "link", "show", "dev", name],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]


def ip_addrs(ns: str, name: str) -> list[str]:
    out = subprocess.run(["ip", "-n", ns, "-j", "addr", "show", "dev", name],
                         capture_output=True, text=True, check=True).stdout
    return [f"{a['local']}/{a['prefixlen']}" for a in json.loads(out)[0]["addr_info"]]


def test_bridge_is_created_up_marked_and_with_a_0242_mac(nl: Netlink, ns: str) -> None:
    assert nl.ensure_bridge("pnbr0", alias="pynet:k:1") is True
    seen = ip_link(ns, "pnbr0")
    assert seen["linkinfo"]["info_kind"] == "bridge"
    assert "UP" in seen["flags"]
    assert seen["ifalias"] == "pynet:k:1"
    assert seen["address"].startswith("02:42:")


def test_ensure_bridge_twice_is_a_no_op(nl: Netlink, ns: str) -> None:
    nl.ensure_bridge("pnbr0", alias="pynet:k:1")
    index = ip_link(ns, "pnbr0")["ifindex"]
    assert nl.ensure_bridge("pnbr0", alias="pynet:k:1") is False
    assert ip_link(ns, "pnbr0")["ifindex"] == index


def test_users_bridge_is_reused_and_never_marked(nl: Netlink, ns: str) -> None:
    subprocess.run(["ip", "-n", ns, "link", "add", "userbr", "type", "bridge"], check=True)
    assert nl.ensure_bridge("userbr", alias=None) is False
    assert "ifalias" not in ip_link(ns, "userbr")
    assert "UP" in ip_link(ns, "userbr")["flags"]


def test_a_non_bridge_of_that_name_is_a_conflict(nl: Netlink, ns: str) -> None:
    subprocess.run(["ip", "-n", ns, "link", "add", "ve0", "type", "veth", "peer", "ve1"],
                   check=True)
    with pytest.raises(Conflict, match="ve0 exists and is a veth"):
        nl.ensure_bridge("ve0", alias="pynet:k:1")


def test_address_is_added_once(nl: Netlink, ns: str) -> None:
    nl.ensure_bridge("pnbr0", alias="pynet:k:1")
    nl.ensure_address("pnbr0", GW)
    nl.ensure_address("pnbr0", GW)
    assert ip_addrs(ns, "pnbr0") == ["10.231.250.1/24"]
    assert nl.addresses("pnbr0") == {GW}
    nl.remove_address("pnbr0", GW)
    nl.remove_address("pnbr0", GW)
    assert ip_addrs(ns, "pnbr0") == []


def test_veth_pair_with_mtu_mac_master_and_hairpin(nl: Netlink, ns: str) -> None:
    nl.ensure_bridge("pnbr0", alias="pynet:k:1")
    mac = mac_from_ipv4(ipaddress.IPv4Address("10.231.250.2"))
    nl.ensure_veth("pnh0", "pnc0", "pnbr0", 1400, mac, "pynet:k:2", hairpin=True)
    host, peer = ip_link(ns, "pnh0"), ip_link(ns, "pnc0")
    assert host["master"] == "pnbr0" and "UP" in host["flags"]
    assert host["mtu"] == peer["mtu"] == 1400
    assert peer["address"] == mac == "02:42:0a:e7:fa:02"
    assert host["ifalias"] == "pynet:k:2" and "ifalias" not in peer
    assert host["linkinfo"]["info_slave_data"]["hairpin"] is True
    assert host.get("txqlen", 0) == 0 < peer["txqlen"]  # ip leaves a zero queue length out
    assert "UP" not in peer["flags"]


def test_a_refused_veth_names_the_pair_and_the_error_and_leaves_nothing(nl: Netlink,
                                                                       ns: str) -> None:
    nl.ensure_bridge("pnbr0", alias="pynet:k:1")
    with pytest.raises(KernelError, match=r"creating veth pair pnh0/pnc0: EINVAL"):
        nl.ensure_veth("pnh0", "pnc0", "pnbr0", 70000, "02:42:0a:e7:fa:02", "pynet:k:2",
                       hairpin=False)
    assert nl.get("pnh0") is None and nl.get("pnc0") is None
    nl.ensure_veth("pnh0", "pnc0", "pnbr0", 0, "02:42:0a:e7:fa:02", "pynet:k:2", hairpin=False)
    assert ip_link(ns, "pnh0")["master"] == "pnbr0"  # the socket still pairs its answers


def test_ensure_veth_repairs_a_detached_port(nl: Netlink, ns: str) -> None:
    nl.ensure_bridge("pnbr0", alias="pynet:k:1")
    nl.ensure_veth("pnh0", "pnc0", "pnbr0", 0, "02:42:0a:e7:fa:02", "pynet:k:2", hairpin=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "pnh0", "nomaster", "down"], check=True)
    nl.ensure_veth("pnh0", "pnc0", "pnbr0", 0, "02:42:0a:e7:fa:02", "pynet:k:2", hairpin=True)
    host = ip_link(ns, "pnh0")
    assert host["master"] == "pnbr0" and "UP" in host["flags"]
    assert host["linkinfo"]["info_slave_data"]["hairpin"] is True  # a new port of the bridge


def test_delete_takes_the_peer_and_tolerates_absence(nl: Netlink, ns: str) -> None:
    nl.ensure_bridge("pnbr0", alias="pynet:k:1")
    nl.ensure_veth("pnh0", "pnc0", "pnbr0", 0, "02:42:0a:e7:fa:02", "pynet:k:2", hairpin=False)
    assert nl.delete("pnh0") is True
    assert nl.get("pnc0") is None
    assert nl.delete("pnh0") is False


def test_veth_on_a_missing_bridge_names_the_bridge(nl: Netlink) -> None:
    with pytest.raises(KernelError, match="link nobr does not exist"):
        nl.ensure_veth("pnh0", "pnc0", "nobr", 0, "02:42:0a:e7:fa:02", "pynet:k:2", hairpin=False)
    assert nl.get("pnh0") is None


def test_links_and_addresses_read_as_ip_shows_them(nl: Netlink, ns: str) -> None:
    """pynet reads only a few attributes of each reply itself (plugin.netlink._LinkMessage);
    every link and address it lists must match what iproute2 reports."""
    nl.ensure_bridge("pnbr0", alias="pynet:k:1")
    nl.ensure_address("pnbr0", GW)
    nl.ensure_address("pnbr0", ipaddress.ip_interface("fd00:231::1/64"))
    nl.ensure_veth("pnh0", "pnc0", "pnbr0", 1400, "02:42:0a:e7:fa:02", "pynet:k:ü2",
                   hairpin=False)
    subprocess.run(["ip", "-n", ns, "link", "set", "pnc0", "down"], check=True)
    listed = {link.name: link for link in nl.links()}
    shown = json.loads(subprocess.run(["ip", "-n", ns, "-j", "-d", "link", "show"],
                                      capture_output=True, text=True, check=True).stdout)
    assert sorted(listed) == sorted(s["ifname"] for s in shown)
    names = {s["ifindex"]: s["ifname"] for s in shown}
    for s in shown:
        link = listed[s["ifname"]]
        assert (link.index, link.mtu, link.alias, link.up) == \
            (s["ifindex"], s["mtu"], s.get("ifalias", ""), "UP" in s["flags"])
        assert link.kind == s.get("linkinfo", {}).get("info_kind", "")
        assert names.get(link.master) == s.get("master")
        assert nl.get(s["ifname"]) == link
    assert listed["pnh0"].alias == "pynet:k:ü2" and listed["pnh0"].master == listed["pnbr0"].index
    bridge = listed["pnbr0"].index
    assert nl.all_addresses()[bridge] == nl.addresses("pnbr0") >= {
        GW, ipaddress.ip_interface("fd00:231::1/64")}
    assert {str(a) for a in nl.addresses("pnbr0")} == set(ip_addrs(ns, "pnbr0"))


def test_calls_from_other_threads_share_the_one_socket(nl: Netlink, ns: str) -> None:
    """pyroute2 would give every calling thread a socket of its own, opened in that thread's
    namespace and kept until the Netlink closes: the worker's fds would grow with its
    threads, and a thread of another namespace would ask the wrong kernel."""
    nl.ensure_bridge("pnbr0", alias="pynet:k:1")
    fds = len(os.listdir("/proc/self/fd"))
    found: list[object] = []
    threads = [threading.Thread(target=lambda: found.append(nl.get("pnbr0"))) for _ in range(5)]
    for thread in threads:
        thread.start()
        thread.join()
    assert [getattr(link, "alias", None) for link in found] == ["pynet:k:1"] * 5
    assert len(os.listdir("/proc/self/fd")) == fds


@pytest.mark.parametrize("pool", ["10.231.240.0/24", "10.231.0.0/16", "10.0.0.0/8",
                                  "0.0.0.0/0", "10.231.240.128/25", "192.0.2.0/24"])
def test_routes_overlapping_a_pool_are_those_that_overlap_it(nl: Netlink, ns: str,
                                                              pool: str) -> None:
    """The integer pre-filter gives what ``IPv4Network.overlaps`` gives, on the kernel's
    own table (a bridge with two addresses: two connected routes)."""
    nl.ensure_bridge("pt-routes", alias=None)
    nl.ensure_address("pt-routes", ipaddress.IPv4Interface("10.231.240.1/24"))
    nl.ensure_address("pt-routes", ipaddress.IPv4Interface("192.0.2.77/28"))
    every = nl.routes_v4()
    assert len(every) >= 2
    network = ipaddress.IPv4Network(pool)
    assert nl.routes_v4(overlapping=network) == [r for r in every if r[0].overlaps(network)]
    assert nl.routes_v4(skip={"pt-routes"}) == [r for r in every if r[1] != "pt-routes"]


def test_link_events_tell_of_every_change_the_periodic_check_looks_for(nl: Netlink,
                                                                         ns: str) -> None:
    """What the periodic check skips its dumps on (reconcile.Looks): each change that would
    alter its findings is heard, and once the kernel is done with it, nothing more is (the
    kernel may follow a change with more messages of its own, carrier and the like)."""
    nl.ensure_bridge("pnbr0", alias="pynet:k:1")
    nl.ensure_veth("pnh0", "pnc0", "pnbr0", 0, "02:42:0a:e7:fa:02", "pynet:k:2", hairpin=False)
    events = nl.events()
    try:
        changes = [["link", "set", "pnbr0", "down"], ["link", "set", "pnbr0", "up"],
                   ["link", "set", "pnh0", "mtu", "1400"], ["link", "set", "pnh0", "nomaster"],
                   ["addr", "add", "10.231.250.1/24", "dev", "pnbr0"],
                   ["addr", "del", "10.231.250.1/24", "dev", "pnbr0"],
                   ["addr", "add", "fd00:231::1/64", "dev", "pnbr0"],
                   ["link", "del", "pnh0"], ["link", "del", "pnbr0"]]
        for change in changes:
            wait_for("the link events to stop", lambda: not events.changed())
            subprocess.run(["ip", "-n", ns, *change], check=True)
            assert events.changed() is True, change
    finally:
        events.close()
