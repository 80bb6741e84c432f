"""Concurrency: dockerd sends calls for different containers and networks at the same time.

Every call must succeed (and a failure must at least be clean: pynet's sentence, never a hang or
a 500), and once everything is removed nothing may be left: no link, rule or record.
"""

import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from lab import DOCKER, IMAGE, Instance, run, serving, wait_for
from plugin.firewall.rules import FORWARD_HEAD, RAW_HEAD, Chains
from tests.conftest import Resources
from tests.e2e.consistency import (
    assert_consistent,
    chain_prefix,
    ip_in,
    own_rules,
    owned_links,
    records,
    wait_reaped,
)

PARALLEL_RUNS = 50
PARALLEL_NETWORKS = 10
CALL_TIMEOUT = 180.0  # per docker command; far above any deadline pynet has


@pytest.fixture
def inst(dockerd: None) -> Iterator[Instance]:
    """A fresh instance, so that leak counts are this test's alone."""
    yield from serving()


def docker_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return run([DOCKER, *args], check=False, timeout=CALL_TIMEOUT)


def clean(done: subprocess.CompletedProcess[str]) -> bool:
    """A failure the user can act on: pynet's own sentence, not a crash or a hang."""
    said = done.stdout + done.stderr
    return done.returncode == 0 or ("remote:" in said and "internal error" not in said
                                    and "Traceback" not in said)


def in_parallel(jobs: list[Callable[[], subprocess.CompletedProcess[str]]],
                workers: int) -> list[subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: job(), jobs))


def assert_nothing_left(inst: Instance) -> None:
    wait_reaped(inst)
    rec = records(inst)
    assert not rec.networks and not rec.endpoints, rec
    assert not owned_links(inst), owned_links(inst)
    chains = Chains(chain_prefix(inst))
    idle = {f"-A {chains.forward} {rule}" for rule in FORWARD_HEAD} | \
        {f"-A {chains.raw} {rule}" for rule in RAW_HEAD}  # what no network needs
    leftover_rules = [r for r in own_rules(inst)
                      if r.startswith(f"-A {chains.prefix}-") and r not in idle]
    assert not leftover_rules, leftover_rules


def test_fifty_parallel_runs_on_one_network(inst: Instance, res: Resources) -> None:
    subnet = str(res.subnets.take())
    net = res.network(inst.name, "--subnet", subnet, "--gateway", ip_in(subnet, 1))
    names = [f"pc-{res.tag}-{i}" for i in range(PARALLEL_RUNS)]
    res.containers += names
    started = time.monotonic()
    runs = in_parallel([lambda n=n: docker_cmd("run", "-d", "--name", n, "--network", net,
                                               IMAGE, "sleep", "600") for n in names],
                       PARALLEL_RUNS)
    elapsed = time.monotonic() - started
    failures = [r for r in runs if r.returncode != 0]
    assert all(clean(r) for r in runs), [r.stderr for r in failures]
    assert not failures, (
        f"{len(failures)} of {PARALLEL_RUNS} parallel runs failed in {elapsed:.0f}s: "
        f"{[r.stderr.strip() for r in failures][:3]}")
    rec = records(inst)
    assert len(rec.endpoints) == PARALLEL_RUNS
    addresses = [e["address"] for e in rec.endpoints.values()]
    assert len(set(addresses)) == len(addresses), "two endpoints share an address"
    assert_consistent(inst)
    for name in names[:: PARALLEL_RUNS // 5]:  # a sample: each ping costs a docker exec
        done = docker_cmd("exec", name, "ping", "-c1", "-W3", ip_in(subnet, 1))
        assert done.returncode == 0, done.stdout + done.stderr

    removed = in_parallel([lambda n=n: docker_cmd("rm", "-f", n) for n in names],
                          PARALLEL_RUNS)
    assert all(r.returncode == 0 for r in removed), [r.stderr for r in removed
                                                     if r.returncode]
    wait_reaped(inst)
    assert not records(inst).endpoints
    assert not [n for n in owned_links(inst) if n.startswith("pnh")]
    # After fifty parallel rm's dockerd may still count endpoints on the network for a moment
    # and refuse the rm ("has active endpoints", before pynet is asked); it must go soon.
    said: list[str] = []

    def network_removed() -> bool:
        done = docker_cmd("network", "rm", net)
        said.append(done.stderr.strip())
        return done.returncode == 0
    try:
        wait_for(f"docker network rm {net} to succeed", network_removed, timeout=60,
                 interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; dockerd said: {said[-1]}") from None
    res.networks.remove(net)
    assert_nothing_left(inst)


def test_networks_come_and_go_while_containers_start(inst: Instance, res: Resources) -> None:
    subnet = str(res.subnets.take())
    stable = res.network(inst.name, "--subnet", subnet, "--gateway", ip_in(subnet, 1))
    tag = secrets.token_hex(3)
    churn = [(f"pn-{tag}-{i}", str(res.subnets.take())) for i in range(PARALLEL_NETWORKS)]
    containers = [f"pc-{tag}-{i}" for i in range(PARALLEL_NETWORKS)]
    res.containers += containers
    res.networks += [name for name, _ in churn]

    def churn_network(name: str, net_subnet: str) -> subprocess.CompletedProcess[str]:
        made = docker_cmd("network", "create", "-d", inst.name, "--subnet", net_subnet,
                          "--gateway", ip_in(net_subnet, 1), name)
        if made.returncode != 0:
            return made
        on_it = docker_cmd("run", "--rm", "--network", name, IMAGE, "true")
        if on_it.returncode != 0:
            return on_it
        return docker_cmd("network", "rm", name)

    jobs: list[Callable[[], subprocess.CompletedProcess[str]]] = [
        lambda n=n, s=s: churn_network(n, s) for n, s in churn]
    jobs += [lambda c=c: docker_cmd("run", "-d", "--name", c, "--network", stable, IMAGE,
                                    "sleep", "600") for c in containers]
    results = in_parallel(jobs, len(jobs))
    assert all(clean(r) for r in results), [r.stderr for r in results if r.returncode]
    failed = [r.stderr.strip() for r in results if r.returncode]
    assert not failed, failed
    wait_reaped(inst)
    rec = records(inst)
    assert set(rec.networks) == {
        run([DOCKER, "network", "inspect", "-f", "{{.Id}}", stable]).stdout.strip()}
    assert_consistent(inst)

    removed = in_parallel([lambda c=c: docker_cmd("rm", "-f", c) for c in containers],
                          len(containers))
    assert all(r.returncode == 0 for r in removed)
    docker_cmd("network", "rm", stable)
    assert_nothing_left(inst)
