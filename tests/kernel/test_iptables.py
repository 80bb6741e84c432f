"""A rendered rule set in the host's real tables: exact text, idempotence, uninstall; for
iptables and ip6tables (every test runs once per family).

Runs against the live filter, nat and raw tables (dockerd's too, if it runs), under a throwaway
chain prefix and bridge names no interface has, so its rules match no packet; whatever a
failure leaves is removed by the fixture.
"""

import ipaddress
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from lab import PYNET, Subnets, ip6tables_save, iptables_save, run
from plugin.firewall.iptables import Dump, IPTables, build_batch
from plugin.firewall.rules import (
    DOCKER_ISOLATION_2,
    Chains,
    Desired,
    NetworkSpec,
    PortSpec,
    RuleSet,
    render,
)


@dataclass
class Throwaway:
    """A prefix and the specs of two networks that exist only as rules."""

    name: str  # a valid pynet instance name; its chains are NAME.upper()-*
    chains: Chains
    networks: list[NetworkSpec]
    ports: list[PortSpec]
    family: int

    def backend(self) -> IPTables:
        return IPTables(self.chains, family=self.family)

    def desired(self, ports: bool = True) -> Desired:
        return Desired(self.networks, self.ports if ports else [])

    def rules(self, current: Dump) -> RuleSet:
        """What the backend is expected to write, as the unit tests pin it down."""
        stages = current.chain("filter", DOCKER_ISOLATION_2) is not None
        return render(self.chains, self.networks, self.ports, stages, self.family)


@pytest.fixture(params=[4, 6])
def throwaway(request: pytest.FixtureRequest) -> Iterator[Throwaway]:
    tag = secrets.token_hex(3)
    name = f"pnkt{tag}"
    subnets = Subnets()
    plain, internal, routed = subnets.take(), subnets.take(), subnets.take()
    plain6, internal6, routed6 = subnets.v6(plain), subnets.v6(internal), subnets.v6(routed)
    ip = plain[2] if request.param == 4 else plain6[2]
    routed_ip = routed[2] if request.param == 4 else routed6[2]
    host = ipaddress.ip_address("127.0.0.1" if request.param == 4 else "::1")
    found = Throwaway(
        name, Chains(name.upper()),
        [NetworkSpec(f"pnkt{tag}b", internal, internal=True, subnet_v6=internal6),
         NetworkSpec(f"pnkt{tag}a", plain, icc=False, trusted=(f"pnkt{tag}t",),
                     subnet_v6=plain6),
         # a gateway mode per family, and the other one the other way round
         NetworkSpec(f"pnkt{tag}c", routed, subnet_v6=routed6,
                     modes=("routed", "nat-unprotected") if request.param == 4
                     else ("nat-unprotected", "routed"))],
        [PortSpec(f"pnkt{tag}a", ip, "tcp", 80, None, 18977, icc=False),
         PortSpec(f"pnkt{tag}a", ip, "udp", 53, host, 18978, icc=False),
         PortSpec(f"pnkt{tag}c", routed_ip, "tcp", 80, None, 0, routed=True)],
        request.param)
    yield found
    found.backend().remove_all()


def mentions(prefix: str) -> list[str]:
    return [line for save in (iptables_save(), ip6tables_save())
            for line in save.splitlines() if prefix in line]


def test_apply_writes_exactly_the_rendered_rules_and_is_idempotent(throwaway: Throwaway) -> None:
    ipt = throwaway.backend()
    assert ipt.apply(throwaway.desired) is True
    current = ipt.save()
    wanted = throwaway.rules(current)
    for table, chains in wanted.chains.items():
        for chain, rules in chains.items():
            assert current.chain(table, chain) == rules, f"{table} {chain} as the kernel has it"
    for hook in wanted.hooks:
        assert (current.chain(hook.table, hook.chain) or []).count(hook.rule) == 1
    # The kernel prints every rule as rendered, so the steady state costs no write.
    assert build_batch(wanted, current) is None
    assert ipt.apply(throwaway.desired) is False
    assert ipt.repair_needed(throwaway.desired) is None


def test_a_change_rewrites_it_and_converges_again(throwaway: Throwaway) -> None:
    ipt = throwaway.backend()
    ipt.apply(throwaway.desired)
    without_ports = lambda: throwaway.desired(ports=False)  # noqa: E731
    assert ipt.repair_needed(without_ports) == \
        f"repaired chain(s) filter {throwaway.chains.ports}, nat {throwaway.chains.dnat}, " \
        f"nat {throwaway.chains.postrouting}"
    assert ipt.apply(without_ports) is True
    assert not [line for line in mentions(throwaway.chains.prefix) if "DNAT --to" in line]
    assert ipt.apply(without_ports) is False


def test_uninstall_removes_every_chain_and_hook(throwaway: Throwaway) -> None:
    throwaway.backend().apply(throwaway.desired)
    assert mentions(throwaway.chains.prefix)
    with tempfile.TemporaryDirectory() as state:
        done = run([PYNET, "--name", throwaway.name, "--state-dir", state, "uninstall"])
        assert "removed" in done.stdout
        left = mentions(throwaway.chains.prefix)
        assert not left, "left behind after uninstall:\n" + "\n".join(left)
        again = run([PYNET, "--name", throwaway.name, "--state-dir", state, "uninstall"])
        assert "nothing to remove" in again.stdout
