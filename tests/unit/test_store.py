"""The record store: cached network records stay correct, and which writes reach the disk."""

import ipaddress
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import pytest

from plugin.errors import PynetError
from plugin.netconfig import NetworkConfig
from plugin.store import DELETING, READY, EndpointRecord, NetworkRecord, PortRecord, Store

CONFIG = NetworkConfig(subnet=ipaddress.IPv4Network("10.231.1.0/24"),
                       gateway=ipaddress.IPv4Interface("10.231.1.1/24"),
                       default_gateway=ipaddress.IPv4Address("10.231.1.1"),
                       address_space="LocalDefault")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "state"))
    yield s
    s.close()


def network(network_id: str = "n1", bridge: str = "pn-n1") -> NetworkRecord:
    return NetworkRecord(id=network_id, bridge=bridge, config=CONFIG, preexisting=False)


def endpoint(endpoint_id: str = "e1") -> EndpointRecord:
    return EndpointRecord(id=endpoint_id, network_id="n1", address="10.231.1.2/24",
                          address_v6=None, mac="02:42:0a:e7:01:02", mac_given=False,
                          host_veth="pnhe1", peer_veth="pnce1")


def synchronous(store: Store) -> str:
    """The connection's flush setting after the last write (1 NORMAL, 2 FULL)."""
    return {1: "NORMAL", 2: "FULL"}[store._db.execute("PRAGMA synchronous").fetchone()[0]]


def test_records_are_immutable_and_callers_see_every_update(store: Store) -> None:
    store.put_network(network())
    first = store.network("n1")
    with pytest.raises(FrozenInstanceError):
        first.state = READY  # type: ignore[misc]  # the store hands out the records it keeps
    store.put_network(replace(first, state=READY))
    assert first.state != READY
    assert store.network("n1").state == store.networks()[0].state == READY
    assert store.mark_deleting("networks", "n1")
    assert store.network_by_bridge("pn-n1").state == DELETING


def test_a_deleted_network_leaves_nothing_cached(store: Store) -> None:
    for i in range(5):
        store.put_network(network(f"n{i}", f"pn-n{i}"))
    store.networks()
    for i in range(5):
        store.delete_network(f"n{i}")
    assert store.networks() == () and store._networks == {}


def test_the_kept_list_follows_this_connections_writes(store: Store) -> None:
    """networks() keeps its list between calls; every write of this store shows in it,
    as the database has it (a marked delete survives a stale write), oldest first."""
    for i in range(3):
        store.put_network(network(f"n{i}", f"pn-n{i}"))
    assert [n.id for n in store.networks()] == ["n0", "n1", "n2"]
    stale = store.networks()[1]
    assert store.mark_network_deleting("n1")
    store.put_network(replace(stale, state=READY))
    store.mark_confirmed("n2", 5.0)
    store.delete_network("n0")
    store.put_network(network("n3", "pn-n3"))
    assert [(n.id, n.state, n.confirmed) for n in store.networks()] == [
        ("n1", DELETING, 0.0), ("n2", "creating", 5.0), ("n3", "creating", 0.0)]
    assert store.mark_deleting("networks", "n2")
    assert [n.state for n in store.networks()] == [DELETING, DELETING, "creating"]


def test_the_kept_list_sees_another_connections_writes(tmp_path: Path) -> None:
    """``pynet forget`` and other processes write through connections of their own."""
    mine, theirs = Store(str(tmp_path)), Store(str(tmp_path))
    try:
        mine.put_network(network("n1", "pn-n1"))
        assert [n.id for n in mine.networks()] == ["n1"]
        theirs.put_network(network("n2", "pn-n2"))
        theirs.mark_network_deleting("n1")
        assert [(n.id, n.state) for n in mine.networks()] == [("n1", DELETING),
                                                             ("n2", "creating")]
        theirs.delete_network("n1")
        assert [n.id for n in mine.networks()] == ["n2"]
    finally:
        mine.close()
        theirs.close()


def test_network_writes_are_flushed_endpoint_writes_are_not(store: Store) -> None:
    store.put_endpoint(endpoint())
    assert synchronous(store) == "NORMAL"
    record = network()
    store.put_network(record)  # creating: its kernel objects do not outlive a power cut
    assert synchronous(store) == "NORMAL"
    store.put_network(replace(record, state=READY))
    assert synchronous(store) == "FULL"
    store.mark_in_container("e1")
    assert synchronous(store) == "NORMAL"
    store.mark_deleting("networks", "n1")
    assert synchronous(store) == "FULL"
    store.mark_deleting("endpoints", "e1")
    store.delete_endpoint("e1")
    assert synchronous(store) == "NORMAL"
    store.delete_network("n1")
    assert synchronous(store) == "FULL"
    assert store.endpoints() == [] and store.networks() == ()


def test_a_marked_delete_survives_a_write_of_a_stale_copy(tmp_path: Path) -> None:
    """DeleteEndpoint/DeleteNetwork may mark a record while a call holding the driver lock has
    a copy it read before; that call's write must not bring the record back."""
    store = Store(str(tmp_path))
    network = NetworkRecord(id="n" * 64, bridge="pn-race", config=CONFIG, preexisting=False,
                            state=READY)
    store.put_network(network)
    ep = EndpointRecord(id="e" * 64, network_id=network.id, address="10.231.250.2/24",
                        address_v6=None, mac="02:42:0a:e7:fa:02", mac_given=False,
                        host_veth="pnheeeeeeeeeeee", peer_veth="pnceeeeeeeeeeee", created=0.0,
                        state=READY)
    store.put_endpoint(ep)
    stale_network, stale_endpoint = store.network(network.id), store.endpoint(ep.id)
    assert stale_network is not None and stale_endpoint is not None
    assert store.mark_deleting("endpoints", ep.id)
    assert store.mark_deleting("networks", network.id)
    store.put_endpoint(stale_endpoint)  # state READY, as the call read it
    store.put_network(stale_network)
    assert store.endpoint(ep.id).state == DELETING  # type: ignore[union-attr]
    assert store.network(network.id).state == DELETING  # type: ignore[union-attr]
    stale_endpoint.state = DELETING  # the reaper's own writes still go through
    store.put_endpoint(stale_endpoint)


# A network record as the release before the schema version wrote it (user_version 0): the
# CreateNetwork request dockerd sent, kept verbatim.
PREVIOUS_RELEASE = {
    "id": "a" * 64, "bridge": "pn-aaaaaaaaaaaa", "preexisting": False, "state": "ready",
    "confirmed": 0.0,
    "request": {
        "NetworkID": "a" * 64,
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.231.7.0/24",
                      "Gateway": "10.231.7.1/24",
                      "AuxAddresses": {"DefaultGatewayIPv4": "10.231.7.254/24"}}],
        "IPv6Data": [],
        "Options": {"com.docker.network.enable_ipv6": False,
                    "com.docker.network.generic": {
                        "com.docker.network.bridge.enable_icc": "false",
                        "com.docker.network.driver.mtu": "1400"}}}}


def previous_release_database(state: Path, record: dict) -> None:
    state.mkdir(mode=0o700)
    old = sqlite3.connect(state / "pynet.db")
    old.executescript("""
        CREATE TABLE networks (id TEXT PRIMARY KEY, bridge TEXT NOT NULL UNIQUE,
                               state TEXT NOT NULL, data TEXT NOT NULL);
        CREATE TABLE endpoints (id TEXT PRIMARY KEY, network_id TEXT NOT NULL,
                                state TEXT NOT NULL, data TEXT NOT NULL);""")
    old.execute("INSERT INTO networks VALUES (?, ?, ?, ?)",
                (record["id"], record["bridge"], record["state"], json.dumps(record)))
    old.commit()
    old.close()


def test_options_the_previous_release_ignored_stay_ignored(tmp_path: Path) -> None:
    """It built networks without them: an odd value must not stop pynet from starting, and a
    trusted interface must not open a network that was built closed."""
    record = json.loads(json.dumps(PREVIOUS_RELEASE))
    record["request"]["Options"]["com.docker.network.generic"].update({
        "com.docker.network.bridge.gateway_mode_ipv4": "bogus",
        "com.docker.network.bridge.trusted_host_interfaces": "eth0"})
    previous_release_database(tmp_path / "state", record)
    (network,) = Store(str(tmp_path / "state")).networks()
    assert network.config.trusted_host_interfaces == ()


def test_only_the_owner_migrates_but_everyone_reads(tmp_path: Path) -> None:
    """``pynet status`` may run beside an older server still serving the old records."""
    previous_release_database(tmp_path / "state", PREVIOUS_RELEASE)
    reader = Store(str(tmp_path / "state"), migrate=False)
    (network,) = reader.networks()
    assert network.config.subnet == ipaddress.IPv4Network("10.231.7.0/24")
    assert reader._db.execute("PRAGMA user_version").fetchone()[0] == 0
    stored = reader._db.execute("SELECT data FROM networks").fetchone()[0]
    assert "request" in json.loads(stored)


def test_a_database_of_the_previous_release_is_migrated(tmp_path: Path) -> None:
    state = tmp_path / "state"
    previous_release_database(state, PREVIOUS_RELEASE)
    store = Store(str(state))
    (record,) = store.networks()
    assert record.state == READY and record.bridge == "pn-aaaaaaaaaaaa"
    assert record.config == NetworkConfig(
        subnet=ipaddress.IPv4Network("10.231.7.0/24"),
        gateway=ipaddress.IPv4Interface("10.231.7.1/24"),
        default_gateway=ipaddress.IPv4Address("10.231.7.254"), address_space="LocalDefault",
        enable_icc=False, mtu=1400)
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == 1
    store.close()
    assert Store(str(state)).networks() == (record,)  # once migrated, read as it is


def test_a_database_of_a_newer_release_is_refused(tmp_path: Path) -> None:
    Store(str(tmp_path)).close()
    db = sqlite3.connect(tmp_path / "pynet.db")
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(PynetError, match="written by a newer pynet .schema 99"):
        Store(str(tmp_path))


def test_a_config_survives_its_stored_form() -> None:
    config = NetworkConfig(
        subnet=ipaddress.IPv4Network("10.231.8.0/24"), gateway=None, default_gateway=None,
        address_space="other", subnet_v6=ipaddress.IPv6Network("fd00:1::/64"),
        gateway_v6=ipaddress.IPv6Interface("fd00:1::1/64"), internal=True,
        enable_ip_masquerade=False, inhibit_ipv4=True, iface_prefix="en",
        host_binding_ipv4=ipaddress.IPv4Address("127.0.0.1"), trusted_host_interfaces=("eth1",),
        gateway_mode_ipv4="isolated", gateway_mode_ipv6="routed")
    assert NetworkConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


def test_a_config_of_the_release_before_gateway_modes_means_nat() -> None:
    stored = NetworkConfig(subnet=ipaddress.IPv4Network("10.231.9.0/24"), gateway=None,
                           default_gateway=None, address_space="LocalDefault").to_json()
    del stored["gateway_mode_ipv4"], stored["gateway_mode_ipv6"]
    stored["version"] = 1
    config = NetworkConfig.from_json(stored)
    assert (config.gateway_mode_ipv4, config.gateway_mode_ipv6) == ("nat", "nat")
    with pytest.raises(ValueError, match="version 3 is not 1 or 2"):
        NetworkConfig.from_json({**stored, "version": 3})


def test_a_routed_port_survives_its_stored_form(store: Store) -> None:
    """Host port 0: no host port held (gateway mode routed)."""
    config = NetworkConfig(subnet=ipaddress.IPv4Network("10.231.9.0/24"), gateway=None,
                           default_gateway=None, address_space="LocalDefault",
                           gateway_mode_ipv4="routed")
    store.put_network(NetworkRecord(id="n" * 64, bridge="pt-st0", preexisting=False,
                                    config=config))
    store.put_endpoint(EndpointRecord(
        id="e" * 64, network_id="n" * 64, address="10.231.9.2/24", address_v6=None,
        mac="02:42:0a:e7:09:02", mac_given=False, host_veth="pnh0", peer_veth="pnc0",
        ports=[PortRecord("tcp", 80, "0.0.0.0", 0)]))
    (port,) = store.endpoints()[0].ports
    assert port.routed and str(port) == "0.0.0.0:->80/tcp"
