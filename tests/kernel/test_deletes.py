"""Deletes: answered once recorded, finished by the reaper; never refused for being busy.

dockerd forgets a network or endpoint whatever pynet answers, so a delete must not be refused
(that would leak its bridge or veth) and need not wait for the kernel, which takes 20-40 ms to
unregister a link. What must hold instead: the reaper finishes every delete, and a create that
could collide with an unfinished one (the same bridge name, an address whose port rules are
still there) does not see it.
"""

import ipaddress
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from flask.testing import FlaskClient

from lab import (
    driver_call,
    free_port,
    hex_id,
    iptables_save,
    link,
    network_body,
    nft_host_port,
    nft_objects,
    wait_for,
)
from plugin import protocol
from plugin.app import create_app
from plugin.driver import Driver
from plugin.store import DELETING

SUBNET = ipaddress.IPv4Network("10.231.250.0/24")


call = driver_call


def firewall_text(d: Driver) -> str:
    """Everything the driver's firewall backend holds now (and dockerd's iptables rules)."""
    return iptables_save() + "\n".join(nft_objects(d.settings.name))


def forwarded(d: Driver, port: int) -> bool:
    """Whether host port ``port`` is DNATed to 10.231.250.10:80."""
    if d.firewall.name == "nftables":
        return nft_host_port(d.settings.name, "10.231.250.10", 80, "tcp") == port
    return f"--dport {port} -j DNAT --to-destination 10.231.250.10:80" in iptables_save()


def network(client: FlaskClient, network_id: str, bridge: str) -> None:
    assert call(client, "CreateNetwork", network_body(
        network_id, str(SUBNET), generic={"com.docker.network.bridge.name": bridge})) == {}


def test_busy_delete_is_recorded_and_finished_by_the_reaper(driver: Driver) -> None:
    client = create_app(driver).test_client()
    nid, bridge = hex_id(), f"pd-{secrets.token_hex(4)}"
    network(client, nid, bridge)
    with held(driver):
        assert call(client, "DeleteNetwork", {"NetworkID": nid}) == {}, \
            "a busy delete must not be refused"
    wait_for("the reaper to remove the network", lambda: driver.store.network(nid) is None)
    assert link(bridge) is None


def test_busy_create_is_refused_with_a_clear_error(driver: Driver) -> None:
    client = create_app(driver).test_client()
    nid = hex_id()
    with held(driver):
        reply = call(client, "CreateNetwork", network_body(nid, "10.231.251.0/24"))
    assert "pynet is busy" in reply["Err"]
    assert driver.store.network(nid) is None


def test_delete_is_answered_before_the_kernel_work(driver: Driver) -> None:
    client = create_app(driver).test_client()
    nid, bridge = hex_id(), f"pd-{secrets.token_hex(4)}"
    network(client, nid, bridge)
    with driver.deletes.reap_lock:  # a reaper still busy with earlier deletes
        assert call(client, "DeleteNetwork", {"NetworkID": nid}) == {}
        record = driver.store.network(nid)
        assert record is not None and record.state == DELETING
        assert link(bridge) is not None
    wait_for("the reaper to finish (the record goes last)",
             lambda: driver.store.network(nid) is None)
    assert link(bridge) is None
    assert bridge not in firewall_text(driver)


def test_bridge_name_of_an_unfinished_delete_can_be_reused_at_once(driver: Driver) -> None:
    client = create_app(driver).test_client()
    old, new, bridge = hex_id(), hex_id(), f"pd-{secrets.token_hex(4)}"
    network(client, old, bridge)
    release = reaper_held_for(driver, seconds=0.5)
    assert call(client, "DeleteNetwork", {"NetworkID": old}) == {}
    network(client, new, bridge)  # waits for the old delete instead of "bridge in use"
    release.join()
    assert driver.store.network(old) is None
    assert driver.store.network(new) is not None
    assert link(bridge) is not None
    assert call(client, "DeleteNetwork", {"NetworkID": new}) == {}


def test_new_endpoint_on_an_unpublished_address_never_sees_the_old_port(
        driver: Driver) -> None:
    client = create_app(driver).test_client()
    nid, old, new = hex_id(), hex_id(), hex_id()
    network(client, nid, f"pd-{secrets.token_hex(4)}")
    address = "10.231.250.10/24"
    assert "Err" not in call(client, "CreateEndpoint", {
        "NetworkID": nid, "EndpointID": old, "Interface": {"Address": address}})
    port = free_port()
    assert call(client, "ProgramExternalConnectivity", {
        "NetworkID": nid, "EndpointID": old, "Options": {protocol.PORTMAP: [
            {"Proto": 6, "Port": 80, "HostIP": "", "HostPort": port, "HostPortEnd": port}]}}) == {}
    assert forwarded(driver, port)
    with driver.deletes.reap_lock:  # the reaper has not got to the unpublished rules yet
        ref = {"NetworkID": nid, "EndpointID": old}
        assert call(client, "RevokeExternalConnectivity", ref) == {}
        assert call(client, "DeleteEndpoint", ref) == {}
        assert forwarded(driver, port)
        assert "Err" not in call(client, "CreateEndpoint", {
            "NetworkID": nid, "EndpointID": new, "Interface": {"Address": address}})
        assert not forwarded(driver, port), "the new container would get the old port's traffic"
    for ref in ({"NetworkID": nid, "EndpointID": new}, {"NetworkID": nid}):
        method = "DeleteEndpoint" if "EndpointID" in ref else "DeleteNetwork"
        assert call(client, method, ref) == {}




def reaper_held_for(driver: Driver, seconds: float) -> threading.Thread:
    """A reaper busy for ``seconds`` with earlier deletes (returns the thread holding it)."""
    taken = threading.Event()

    def hold() -> None:
        with driver.deletes.reap_lock:
            taken.set()
            threading.Event().wait(seconds)  # the slow kernel work being simulated

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(10), "could not take the reaper's lock"
    return holder


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

