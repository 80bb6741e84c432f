"""Bounded calls: dockerd gives a v1 plugin call no timeout, so pynet must bound its own.

A call that cannot get the driver (still restoring, or another call holding the lock) answers
Busy within PYNET_CALL_DEADLINE; a wedged iptables (a stuck xtables lock, a hung nft) makes the
call fail with an error naming iptables - neither hangs ``docker run``.
"""

import json
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from lab import hex_id, network_body
from lab.netns import thread_in_netns
from plugin.app import create_app
from plugin.config import Settings
from plugin.driver import Driver
from plugin.firewall import iptables
from plugin.service import build_driver

DEADLINE = 1.0
SLACK = 1.5  # scheduling on a loaded 2-core machine; far below any "hang"


@dataclass
class App:
    client: FlaskClient
    driver: Driver

    def call(self, method: str, body: dict) -> tuple[dict, float]:
        """The reply, closed as the server closes it once sent (which starts the work a call
        leaves for after its answer), and how long it took."""
        started = time.monotonic()
        with self.client.post(f"/NetworkDriver.{method}", data=json.dumps(body)) as reply:
            payload = json.loads(reply.data)
        return payload, time.monotonic() - started


@pytest.fixture
def app() -> Iterator[App]:
    """The real app over a real driver, in a throwaway namespace, deadline 1 s."""
    state = tempfile.mkdtemp(prefix="pynet-bounded-")
    try:
        with thread_in_netns("pnb"):
            driver = build_driver(Settings(name=f"pynet-b{secrets.token_hex(3)}",
                                           state_dir=state, call_deadline=DEADLINE))
            yield App(create_app(driver).test_client(), driver)
            driver.close()
    finally:
        shutil.rmtree(state, ignore_errors=True)


def network(pool: str = "10.231.253.0/24") -> dict:
    return network_body(hex_id(), pool)


def test_call_before_restore_is_busy_within_the_deadline(app: App) -> None:
    reply, took = app.call("CreateNetwork", network())
    assert "still restoring" in reply["Err"] and DEADLINE <= took < DEADLINE + SLACK, (reply,
                                                                                       took)


def test_call_behind_a_stuck_call_is_busy_within_the_deadline(app: App) -> None:
    app.driver.ready.set()
    held, release = threading.Event(), threading.Event()

    def stuck_call() -> None:
        with app.driver.exclusive():
            held.set()
            release.wait(30)
    holder = threading.Thread(target=stuck_call, daemon=True)
    holder.start()
    try:
        assert held.wait(5)
        # Revoke is not one of the deletes that are deferred when busy (test_deletes).
        ids = {"NetworkID": "a" * 64, "EndpointID": "b" * 64}
        reply, took = app.call("RevokeExternalConnectivity", ids)
        assert "busy" in reply["Err"] and DEADLINE <= took < DEADLINE + SLACK, (reply, took)
    finally:
        release.set()
        holder.join(5)
    reply, _ = app.call("RevokeExternalConnectivity", ids)
    assert reply == {}, "the lock must be usable again once the stuck call ends"


@pytest.mark.parametrize("tool", ["save", "restore"])
def test_wedged_iptables_fails_the_call_with_a_clear_error(app: App, tool: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """CreateNetwork answers before its rules are written (deferred_rules.py), so the call
    that needs them, the network's first CreateEndpoint, is the one that fails, leaving no
    veth; once iptables works again the next one writes them."""
    app.driver.ready.set()
    # In a namespace of its own dockerd's nftables table is absent: auto writes iptables.
    backend = app.driver.firewall.backends["iptables"].v4.backend  # type: ignore[attr-defined]
    stub = tmp_path / f"iptables-{backend}-{tool}"
    stub.write_text("#!/bin/sh\nexec sleep 600\n")  # exec: the timeout kills the sleeper
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(iptables, "TIMEOUT", 0.5)
    body = network()
    reply, _ = app.call("CreateNetwork", body)
    assert reply == {}, reply
    endpoint_id = hex_id()
    endpoint = {"NetworkID": body["NetworkID"], "EndpointID": endpoint_id,
                "Interface": {"Address": "10.231.253.2/24"}}
    reply, took = app.call("CreateEndpoint", endpoint)
    assert f"iptables-{backend}-{tool}" in reply["Err"], reply
    assert "timed out" in reply["Err"], reply
    # The write started after CreateNetwork's answer timed out, and a tool that timed out is
    # not run again within the call.
    budget = iptables.TIMEOUT + SLACK
    assert took < budget, f"took {took:.1f}s, over {budget:.1f}s"
    host, _ = Driver.veth_names(endpoint_id)
    assert app.driver.netlink.get(host) is None, "no veth on a bridge without its rules"
    assert app.driver.store.endpoint(endpoint_id) is None
    monkeypatch.undo()
    reply, _ = app.call("CreateEndpoint", endpoint)
    assert "Err" not in reply, reply
    assert app.driver.firewall_repair() is None, "the owed rules are in place now"
