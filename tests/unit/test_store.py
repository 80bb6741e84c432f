"""The record store: cached network records stay correct, and which writes reach the disk."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from plugin.store import DELETING, READY, EndpointRecord, NetworkRecord, Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "state"))
    yield s
    s.close()


def network(network_id: str = "n1", bridge: str = "pn-n1") -> NetworkRecord:
    return NetworkRecord(id=network_id, bridge=bridge, request={"Options": {}}, preexisting=False)


def endpoint(endpoint_id: str = "e1") -> EndpointRecord:
    return EndpointRecord(id=endpoint_id, network_id="n1", address="10.231.1.2/24",
                          address_v6=None, mac="02:42:0a:e7:01:02", mac_given=False,
                          host_veth="pnhe1", peer_veth="pnce1")


def synchronous(store: Store) -> str:
    """The connection's flush setting after the last write (1 NORMAL, 2 FULL)."""
    return {1: "NORMAL", 2: "FULL"}[store._db.execute("PRAGMA synchronous").fetchone()[0]]


def test_callers_get_copies_and_see_every_update(store: Store) -> None:
    store.put_network(network())
    first = store.network("n1")
    first.state = READY  # a caller's change is not the store's until written
    assert store.network("n1").state != READY
    store.put_network(first)
    assert store.network("n1").state == store.networks()[0].state == READY
    assert store.mark_deleting("networks", "n1")
    assert store.network_by_bridge("pn-n1").state == DELETING


def test_a_deleted_network_leaves_nothing_cached(store: Store) -> None:
    for i in range(5):
        store.put_network(network(f"n{i}", f"pn-n{i}"))
    store.networks()
    for i in range(5):
        store.delete_network(f"n{i}")
    assert store.networks() == [] and store._networks == {}


def test_network_writes_are_flushed_endpoint_writes_are_not(store: Store) -> None:
    store.put_endpoint(endpoint())
    assert synchronous(store) == "NORMAL"
    record = network()
    store.put_network(record)  # creating: its kernel objects do not outlive a power cut
    assert synchronous(store) == "NORMAL"
    record.state = READY
    store.put_network(record)
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
    assert store.endpoints() == [] and store.networks() == []


def test_a_marked_delete_survives_a_write_of_a_stale_copy(tmp_path: Path) -> None:
    """DeleteEndpoint/DeleteNetwork may mark a record while a call holding the driver lock has
    a copy it read before; that call's write must not bring the record back."""
    store = Store(str(tmp_path))
    network = NetworkRecord(id="n" * 64, bridge="pn-race", request={}, preexisting=False,
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
