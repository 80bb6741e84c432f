"""A delete that cannot get the driver lock in time is recorded, not refused: dockerd forgets
the network or endpoint whatever pynet answers, so a refusal would leak its bridge or veth."""

import ipaddress
import json
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from plugin import reconcile
from plugin.app import create_app
from plugin.cli import build_driver
from plugin.config import Settings
from plugin.driver import Driver
from plugin.store import DELETING
from tests.helpers import link, new_instance, purge_instance

NID = secrets.token_hex(32)
EID = secrets.token_hex(32)


@pytest.fixture
def driver(tmp_path) -> Iterator[Driver]:
    inst = new_instance()
    d = build_driver(Settings(name=inst.name, state_dir=str(tmp_path), call_deadline=0.3))
    d.ready.set()
    yield d
    purge_instance(inst)


def test_busy_delete_network_is_recorded_and_finished_by_reconcile(driver: Driver) -> None:
    client = create_app(driver).test_client()
    subnet = ipaddress.IPv4Network("10.231.250.0/24")
    bridge = f"pd-{NID[:8]}"
    reply = client.post("/NetworkDriver.CreateNetwork", data=json.dumps({
        "NetworkID": NID, "IPv4Data": [{"Pool": str(subnet), "Gateway": "10.231.250.1/24"}],
        "Options": {"com.docker.network.generic": {
            "com.docker.network.bridge.name": bridge}}}))
    assert reply.get_json() == {}
    assert link(bridge) is not None

    with held(driver):
        reply = client.post("/NetworkDriver.DeleteNetwork", data=json.dumps({"NetworkID": NID}))
    assert reply.get_json() == {}, "a busy delete must not be refused"
    record = driver.store.network(NID)
    assert record is not None and record.state == DELETING
    assert link(bridge) is not None  # not yet: the reconciler does it

    with driver.locked():
        done = reconcile.run(driver)
    assert any(f"remove network {NID[:12]}" in line for line in done)
    assert driver.store.network(NID) is None
    assert link(bridge) is None


def test_busy_create_is_refused_with_a_clear_error(driver: Driver) -> None:
    client = create_app(driver).test_client()
    with held(driver):
        reply = client.post("/NetworkDriver.CreateNetwork", data=json.dumps({
            "NetworkID": NID, "IPv4Data": [{"Pool": "10.231.251.0/24",
                                            "Gateway": "10.231.251.1/24"}]}))
    assert "pynet is busy" in reply.get_json()["Err"]
    assert driver.store.network(NID) is None


@contextmanager
def held(driver: Driver) -> Iterator[None]:
    """Another thread holds the driver's lock (a slow call) for the duration of the block."""
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with driver.exclusive():
            taken.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(10), "could not take the driver lock"
    try:
        yield
    finally:
        release.set()
        holder.join()
