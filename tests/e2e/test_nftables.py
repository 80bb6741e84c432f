"""pynet's nftables backend on a dockerd that runs its nftables backend (``auto`` picks it
there): the table is repaired when someone flushes or deletes it, and nothing is left once
the networks are gone and pynet is uninstalled. Connectivity and isolation are the
differential and attack tests' (they run on this engine too)."""

import pytest

from lab import (
    Instance,
    instance_firewall,
    new_instance,
    nft_objects,
    purge_instance,
    run,
    wait_for,
)
from tests.conftest import Resources
from tests.e2e.consistency import wait_reaped
from tests.e2e.differential import World
from tests.e2e.test_differential import (
    PORTS_SCENARIO_CELLS,
    repairs,
    two_networks_with_a_port,
    wait_for_rules,
)

pytestmark = pytest.mark.usefixtures("pynet_nftables")


@pytest.mark.parametrize("damage", ["flush table inet {name}", "delete table inet {name}",
                                    "flush chain inet {name} forward"])
def test_a_damaged_table_is_restored(pynet_world: World, pynet: Instance, damage: str) -> None:
    w = pynet_world
    two_networks_with_a_port(w)
    before = w.observe("before", PORTS_SCENARIO_CELLS)
    assert before.matrix == before.expected
    repaired = repairs(pynet)
    run(["nft", damage.format(name=pynet.name)])
    wait_for("pynet to repair its table", lambda: repairs(pynet) > repaired, timeout=15)
    wait_for_rules(w, before.rules, timeout=15)
    after = w.observe("after", PORTS_SCENARIO_CELLS)
    assert after.matrix == before.matrix


def test_status_names_the_backend(pynet: Instance) -> None:
    shown = run(pynet.argv("status")).stderr
    assert "pynet writes nftables (PYNET_FIREWALL_BACKEND=auto)" in shown
    assert "Docker's nftables backend" in shown


def test_nothing_is_left_after_rm_and_uninstall(dockerd: None, res: Resources) -> None:
    inst = new_instance()
    inst.start()
    try:
        empty = wait_for("pynet's empty table", lambda: nft_objects(inst.name), timeout=15)
        net = res.network(inst.name)
        res.run("--network", net, "-p", "80")
        assert len(nft_objects(inst.name)) > len(empty)
        res.cleanup()
        res.containers.clear()
        res.networks.clear()
        wait_reaped(inst)
        assert nft_objects(inst.name) == empty  # no element, no network chain left
        inst.stop()
        assert "removed" in run(inst.argv("uninstall")).stdout
        assert instance_firewall(inst.name) == []
    finally:
        leftovers = purge_instance(inst)
    assert not leftovers, f"left behind: {leftovers}"
