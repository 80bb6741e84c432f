"""A restart with the other PYNET_FIREWALL_BACKEND moves pynet's rules in the start-up
reconcile: the new backend writes them, the old one's are removed."""

import secrets
from dataclasses import replace

from lab import driver_call, hex_id, instance_firewall, network_body
from plugin import reconcile
from plugin.app import create_app
from plugin.driver import Driver
from plugin.service import build_driver

OTHER = {"iptables": "nftables", "nftables": "iptables"}


def split(name: str) -> tuple[list[str], list[str]]:
    """An instance's (iptables, nftables) lines."""
    own = instance_firewall(name)
    iptables = [line for line in own if line.startswith(("-A", ":"))]
    return iptables, [line for line in own if line not in iptables]


def test_the_other_backend_takes_over_at_start(driver: Driver) -> None:
    nid, bridge = hex_id(), f"pm-{secrets.token_hex(4)}"
    assert driver_call(create_app(driver).test_client(), "CreateNetwork", network_body(
        nid, "10.231.251.0/24", generic={"com.docker.network.bridge.name": bridge})) == {}
    driver.rules_due.settle()  # written after the answer (plugin/deferred_rules.py)
    old, new = driver.firewall.name, OTHER[driver.firewall.name]
    written = dict(zip(("iptables", "nftables"), split(driver.settings.name), strict=True))
    assert any(bridge in line for line in written[old]) and not written[new]
    restarted = build_driver(replace(driver.settings, firewall_backend=new))
    try:
        reconcile.restore(restarted)
        moved = dict(zip(("iptables", "nftables"), split(driver.settings.name), strict=True))
        assert any(bridge in line for line in moved[new])
        assert not moved[old], f"the {old} rules stayed: {moved[old]}"
        assert driver_call(create_app(restarted).test_client(), "DeleteNetwork",
                           {"NetworkID": nid}) == {}
        restarted.reap()
    finally:
        restarted.close()
