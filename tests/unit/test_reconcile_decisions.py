"""The reconciler's decisions that need no kernel: when an endpoint is dead, what a batch does."""

import time
from pathlib import Path
from typing import cast

import pytest

from plugin import reconcile
from plugin.errors import KernelError
from plugin.firewall.iptables import describe_batch
from plugin.netlink import Link
from plugin.reconcile import PEER_GRACE_SECONDS, Action, _dead_endpoint
from plugin.store import READY, EndpointRecord, PortRecord, Store


def endpoint(**over: object) -> EndpointRecord:
    fields: dict = dict(id="e" * 64, network_id="n" * 64, address="10.231.250.2/24",
                        address_v6=None, mac="02:42:0a:e7:fa:02", mac_given=False,
                        host_veth="pnheeeeeeeeeeee", peer_veth="pnceeeeeeeeeeee",
                        created=time.time(), state=READY)
    fields.update(over)
    return EndpointRecord(**fields)


def links(*names: str) -> dict[str, Link]:
    return {n: Link(index=i, name=n, kind="veth", mtu=1500, alias="", master=0, up=True)
            for i, n in enumerate(names, 1)}


def test_young_endpoint_whose_container_end_is_still_on_the_host_is_alive() -> None:
    """Between CreateEndpoint and dockerd moving it, the container end sits on the host."""
    e = endpoint()
    assert _dead_endpoint(e, links(e.host_veth, e.peer_veth)) is None


def test_container_end_back_on_the_host_after_being_in_a_container_is_dead_at_once() -> None:
    e = endpoint(in_container=True)
    reason = _dead_endpoint(e, links(e.host_veth, e.peer_veth))
    assert reason is not None and "back on the host" in reason


def test_container_end_never_seen_moved_is_dead_after_the_grace_period() -> None:
    e = endpoint(created=time.time() - PEER_GRACE_SECONDS - 1)
    assert _dead_endpoint(e, links(e.host_veth, e.peer_veth)) is not None


def test_endpoint_in_its_container_is_alive() -> None:
    e = endpoint(in_container=True)
    assert _dead_endpoint(e, links(e.host_veth)) is None


def test_marking_in_container_keeps_a_concurrent_port_update(tmp_path: Path) -> None:
    """The reconciler's mark must not overwrite what a call wrote since it read the record."""
    store = Store(str(tmp_path))
    e = endpoint()
    store.put_endpoint(e)
    e.ports = [PortRecord("tcp", 80, "0.0.0.0", 8080)]
    store.put_endpoint(e)  # a ProgramExternalConnectivity in between
    store.mark_in_container(e.id)
    got = store.endpoint(e.id)
    assert got is not None and got.in_container and got.ports == e.ports


def test_old_records_without_the_mark_still_load(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    store.put_endpoint(endpoint())
    store._db.execute("UPDATE endpoints SET data = json_remove(data, '$.in_container')")
    got = store.endpoint("e" * 64)
    assert got is not None and got.in_container is False


def test_batch_description_names_chains_and_jumps() -> None:
    batch = ("*filter\n:PYNET-PORTS - [0:0]\n-A PYNET-PORTS -d 10.0.0.2/32 -j ACCEPT\n"
             "-D PYNET-FORWARD 2\n-I PYNET-FORWARD 2 -o br -j ACCEPT\n"
             "-D FORWARD -j PYNET-FORWARD\n-I FORWARD 3 -j PYNET-FORWARD\nCOMMIT\n"
             "*nat\n-I PYNET-POSTROUTING 1 -o br -j MASQUERADE\nCOMMIT\n")
    own = {"PYNET-PORTS", "PYNET-FORWARD", "PYNET-POSTROUTING"}
    assert describe_batch(batch, own) == (
        "repaired chain(s) filter PYNET-PORTS, filter PYNET-FORWARD, nat PYNET-POSTROUTING; "
        "fixed the jump(s) in filter FORWARD")


def test_a_repair_that_fails_is_reported_as_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    """``pynet reconcile`` says "did:" only for what it did."""
    def broken() -> None:
        raise KernelError("deleting link pnhx: EBUSY")
    actions = [Action("delete veth pnhx", broken), Action("delete veth pnhy", lambda: None)]
    monkeypatch.setattr(reconcile, "plan", lambda driver: actions)
    monkeypatch.setattr(reconcile, "note_in_container", lambda driver: None)
    driver = cast(reconcile.Repairable, None)
    assert reconcile.run(driver) == ["failed to delete veth pnhx: deleting link pnhx: EBUSY",
                                     "did: delete veth pnhy"]
    assert reconcile.run(driver, dry_run=True) == ["would delete veth pnhx",
                                                   "would delete veth pnhy"]
