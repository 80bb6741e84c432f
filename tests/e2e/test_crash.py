"""Crash consistency: pynet killed at every named point of every call, through a real dockerd.

For each checkpoint the plugin SIGKILLs itself (gunicorn master and worker) in the middle of the
call that reaches it; the test restarts it at once, as a supervisor would. dockerd re-sends the
call on the new process, *without its body* (its plugin client consumed the buffer on the first
attempt), so the user sees either success (dockerd ignores driver errors on removal) or pynet's
"run the command again" - never a half-built network, endpoint or rule. Afterwards records, kernel
and dockerd must agree, every network must still take a ``docker run``, and re-running the
command must work.

The checkpoint names are collected from the source, so a new checkpoint without a scenario here
fails the test instead of going unexercised.
"""

import dataclasses
import re
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lab import (
    DOCKER,
    IMAGE,
    REPO,
    Instance,
    docker,
    engine,
    free_port,
    run,
    serving,
    wait_for,
)
from plugin.app import DRIVER_CALLS
from tests.conftest import Resources
from tests.e2e.consistency import (
    assert_consistent,
    every_network_works,
    ip_in,
    network_gateway,
    problems,
    wait_exit,
    wait_settled,
)

RETRY_HINT = "run the command again"
# A file server in the container, so a published port can be checked end to end.
HTTPD = ("sh", "-c", "mkdir -p /w && echo pynet-ok > /w/index.html && httpd -f -p 80 -h /w")


def collect_checkpoints() -> list[str]:
    """Every crash point in plugin/: literal names, and the per-call arrival points."""
    names: set[str] = set()
    for path in (REPO / "plugin").rglob("*.py"):
        text = path.read_text()
        names |= set(re.findall(r'checkpoint\("([^"]+)"\)', text))
        for prefix in re.findall(r'checkpoint\(f"([\w.]*)\{method\}"\)', text):
            names |= {prefix + method for method in DRIVER_CALLS}
    return sorted(names)


CHECKPOINTS = collect_checkpoints()


@dataclass
class Case:
    """One crash experiment: the objects it made and the command that gets interrupted."""

    inst: Instance
    res: Resources
    subnet: str = ""
    net: str = ""
    bridge: str = ""
    container: str = ""
    port: int = 0
    command: list[str] = field(default_factory=list)

    def network_args(self) -> list[str]:
        return ["--subnet", self.subnet, "--gateway", ip_in(self.subnet, 1),
                "-o", f"com.docker.network.bridge.name={self.bridge}", self.net]

    def run_args(self, published: bool) -> list[str]:
        ports = ["-p", f"127.0.0.1:{self.port}:80"] if published else []
        return ["--name", self.container, "--network", self.net, "--ip",
                ip_in(self.subnet, 10), *ports, IMAGE, *(HTTPD if published else ("sleep", "600"))]


@dataclass(frozen=True)
class Scenario:
    """How to reach a call through dockerd, what the user may see, and how to retry."""

    prepare: Callable[[Case], None]
    command: Callable[[Case], list[str]]
    fails: bool  # does the interrupted command report an error to the user?
    retry: Callable[[Case], None]
    # From this engine on dockerd does not fail the command (EndpointOperInfo only informs
    # since 28: a container whose driver cannot answer it starts all the same).
    succeeds_since: int | None = None
    # pynet never heard of the removal (it was "down" when the call came): it still has the
    # network dockerd dropped, until a new network gets that pool from dockerd's IPAM.
    leaves_stale_network: bool = False


def _network(c: Case) -> None:
    docker("network", "create", "-d", c.inst.name, *c.network_args())
    c.res.networks.append(c.net)


def _container(c: Case, published: bool) -> None:
    _network(c)
    c.res.containers.append(c.container)
    docker("run", "-d", *c.run_args(published))


def _retry_create_network(c: Case) -> None:
    docker("network", "create", "-d", c.inst.name, *c.network_args())
    c.res.networks.append(c.net)


def _retry_delete_network(c: Case) -> None:
    # dockerd dropped the network even though pynet crashed; the bridge name and subnet must
    # be free again.
    docker("network", "rm", c.net, check=False)
    _retry_create_network(c)


def _retry_run(published: bool) -> Callable[[Case], None]:
    def retry(c: Case) -> None:
        docker("rm", "-f", c.container, check=False)
        docker("run", "-d", *c.run_args(published))
        if published:
            body = wait_for("the published port to answer", lambda: run(
                ["curl", "-sf", "--max-time", "2", f"http://127.0.0.1:{c.port}/"],
                check=False).stdout, timeout=15)
            assert "pynet-ok" in body
        else:
            done = docker("exec", c.container, "ping", "-c1", "-W3", ip_in(c.subnet, 1))
            assert done.returncode == 0
    return retry


def _create_network_command(c: Case) -> list[str]:
    return ["network", "create", "-d", c.inst.name, *c.network_args()]


RUN = Scenario(prepare=_network, command=lambda c: ["run", "-d", *c.run_args(False)],
               fails=True, retry=_retry_run(False))
RUN_PUBLISHED = Scenario(prepare=_network, command=lambda c: ["run", "-d", *c.run_args(True)],
                         fails=True, retry=_retry_run(True))
RM = Scenario(prepare=lambda c: _container(c, False),
              command=lambda c: ["rm", "-f", c.container], fails=False, retry=_retry_run(False))
RM_PUBLISHED = Scenario(prepare=lambda c: _container(c, True),
                        command=lambda c: ["rm", "-f", c.container], fails=False,
                        retry=_retry_run(True))
SCENARIOS: dict[str, Scenario] = {
    "create_network": Scenario(prepare=lambda c: None, command=_create_network_command,
                               fails=True, retry=_retry_create_network),
    # Answered, rules not written yet (deferred_rules.py): the network exists for dockerd,
    # and the reconcile at start writes its rules before a container can use it.
    "create_network.answered": Scenario(prepare=lambda c: None,
                                        command=_create_network_command, fails=False,
                                        retry=_retry_run(False)),
    "delete_network": Scenario(prepare=_network, command=lambda c: ["network", "rm", c.net],
                               fails=False, retry=_retry_delete_network),
    "create_endpoint": RUN,
    "delete_endpoint": RM,
    "program_external": RUN_PUBLISHED,
    "revoke_external": RM_PUBLISHED,
    # Arrival points: pynet dies as the call comes in, as if it had been down at that moment.
    "received.CreateNetwork": Scenario(prepare=lambda c: None,
                                       command=_create_network_command,
                                       fails=True, retry=_retry_create_network),
    "received.DeleteNetwork": Scenario(prepare=_network,
                                       command=lambda c: ["network", "rm", c.net],
                                       fails=False, retry=_retry_delete_network,
                                       leaves_stale_network=True),
    "received.CreateEndpoint": RUN,
    "received.Join": RUN,
    "received.EndpointOperInfo": dataclasses.replace(RUN, succeeds_since=28),
    "received.ProgramExternalConnectivity": RUN_PUBLISHED,
    "received.Leave": RM,
    "received.DeleteEndpoint": RM,
    "received.RevokeExternalConnectivity": RM_PUBLISHED,
}


def scenario_for(point: str) -> Scenario:
    """The scenario reaching ``point``: by full name, else by the call it sits in."""
    found = SCENARIOS.get(point) or SCENARIOS.get(point.split(".")[0])
    assert found is not None, (f"no crash scenario reaches checkpoint {point!r}: add one to "
                               "SCENARIOS in tests/e2e/test_crash.py")
    return found


def test_every_checkpoint_has_a_scenario() -> None:
    """Guards the parametrisation: a checkpoint without a scenario must not pass silently."""
    assert len(CHECKPOINTS) >= 14, CHECKPOINTS
    for point in CHECKPOINTS:
        scenario_for(point)


@pytest.fixture
def crashy(dockerd: None, tmp_path: Path) -> Iterator[tuple[Instance, Path]]:
    """A pynet instance that dies at the checkpoint written into the returned file."""
    crash_file = tmp_path / "crash-at"
    for inst in serving({"PYNET_CRASH_FILE": str(crash_file)}):
        yield inst, crash_file


@pytest.mark.parametrize("point", CHECKPOINTS)
def test_crash_at_checkpoint_leaves_consistent_state(
        point: str, crashy: tuple[Instance, Path], res: Resources) -> None:
    """Kill pynet at ``point``; after a restart nothing is half-built and retrying works."""
    inst, crash_file = crashy
    scenario = scenario_for(point)
    tag = secrets.token_hex(3)
    case = Case(inst, res, subnet=str(res.subnets.take()), net=f"pc-{tag}",
                bridge=f"pc{tag}", container=f"pc-{tag}-c", port=free_port())
    # A bystander network with a running container: a crash elsewhere must not touch it.
    bystander_net = res.network(inst.name)
    bystander = res.run("--network", bystander_net)
    scenario.prepare(case)
    if case.container not in res.containers:
        res.containers.append(case.container)
    if case.net not in res.networks:
        res.networks.append(case.net)

    target_id = docker("network", "inspect", "-f", "{{.Id}}", case.net,
                       check=False).stdout.strip()
    crash_file.write_text(point)
    argv = [DOCKER, *scenario.command(case)]
    user = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert inst.proc is not None
        try:
            inst.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{' '.join(argv)} never reached checkpoint {point}") from None
        inst.proc = None
        assert not crash_file.exists(), "the crash file must be consumed (one-shot)"
        inst.start()  # a supervisor restarts it; dockerd retries the call meanwhile
        rc = wait_exit(user, timeout=60)
    finally:
        if user.poll() is None:
            user.kill()
    said = user.stdout.read() if user.stdout else ""

    if scenario.fails and (scenario.succeeds_since is None or engine() < scenario.succeeds_since):
        assert rc != 0 and RETRY_HINT in said, (
            f"after a crash at {point}, {' '.join(argv)} exited {rc} saying {said!r}; "
            f"expected a failure telling the user to {RETRY_HINT}")
    else:
        assert rc == 0, f"{' '.join(argv)} failed after a crash at {point}: {said}"
    if scenario.leaves_stale_network:
        wait_settled(inst)
        assert problems(inst) == [f"network {target_id[:12]} is recorded but dockerd does "
                                  "not have it"]
    else:
        assert_consistent(inst)

    scenario.retry(case)
    assert_consistent(inst)
    every_network_works(inst)
    docker("exec", bystander, "ping", "-c1", "-W3", network_gateway(inst, bystander_net))
