#!/usr/bin/env python3
"""Benchmark pynet against Docker's built-in bridge driver on the live dockerd.

The machine is shared and noisy, so only ratios taken in one run mean anything: every
measurement is made for both drivers back to back (bridge, pynet, bridge, pynet, ...) on equal
networks, and the table compares medians of the same run. pynet runs as a throw-away instance of
its own; everything the run makes is named ``pb-<tag>-...`` and removed again, also on failure
or Ctrl-C. Traffic stays on this machine: container to container, and host to a published port
on the host's own address or 127.0.0.1.

    .venv/bin/python scripts/bench.py [--iterations N] [--networks N] [--smoke] [--json FILE]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # scripts/ is not a package; the lab package lives beside it

from lab import (  # noqa: E402
    IMAGE,
    Instance,
    Subnets,
    docker,
    ensure_image,
    free_port,
    instance_links,
    purge_instance,
    run,
    wait_for,
)
from lab.bench import (  # noqa: E402
    BRIDGE,
    CONNECT_SAMPLES,
    ECHO_PORT,
    POOL,
    RUN_SAMPLES,
    SERVER_CMD,
    SERVER_HOST,
    SINK_PORT,
    SUBNET_PREFIX,
)
from lab.bench.floor import FloorDriver  # noqa: E402
from lab.bench.probes import (  # noqa: E402
    answers,
    echoes,
    ping_rtt,
    tcp_rtt,
    throughput_c2c,
    throughput_host,
    time_to_ping,
)
from lab.bench.pynet_side import (  # noqa: E402
    bench_instance,
    handler_times,
    machine,
    rss_mib,
    wait_until_quiet,
    worker_pid,
)
from lab.bench.resources import Api, Lab, dockerd_answers, host_address, timed  # noqa: E402
from lab.bench.stackfloor import StackFloorDriver  # noqa: E402
from lab.bench.verdicts import (  # noqa: E402
    Figure,
    figures,
    judge,
    method_table,
    percentile,
    table,
)


@dataclass(frozen=True)
class Params:
    """How much work one run does."""

    iterations: int
    networks: int
    mib: int  # per throughput sample
    pings: int  # per RTT sample
    warmup: bool = True


FULL = Params(iterations=15, networks=200, mib=1024, pings=200)
SMOKE = Params(iterations=2, networks=3, mib=32, pings=20)


@dataclass
class Run:
    """Everything one benchmark run needs: its lab, the drivers, the figures."""

    lab: Lab
    pynet: str  # the instance's driver name
    params: Params
    host_ip: str
    floor_driver: str  # the floor remote driver's name
    stack_floor_driver: str  # the same on pynet's HTTP stack (lab.bench.stackfloor)
    pynet_pid: int  # the instance's worker process
    api: Api = field(default_factory=Api)
    figs: dict[str, Figure] = field(default_factory=figures)
    retried: list[str] = field(default_factory=list)
    stopped: str = ""  # why growth ended early, if it did

    def snapshot(self) -> dict[str, tuple[dict, dict]]:
        """Copies of every sample, to throw a disturbed round away."""
        return {k: ({d: list(v) for d, v in f.samples.items()},
                    {d: list(v) for d, v in f.points.items()}) for k, f in self.figs.items()}

    def restore(self, saved: dict[str, tuple[dict, dict]]) -> None:
        for key, (samples, points) in saved.items():
            self.figs[key].samples, self.figs[key].points = samples, points

    def drivers(self, pynet_first: bool = False) -> Iterator[tuple[str, str]]:
        """(label, docker driver name), bridge first unless ``pynet_first``: the run alternates
        between them."""
        both = [(BRIDGE, BRIDGE), ("pynet", self.pynet)]
        yield from reversed(both) if pynet_first else both

    def record(self, key: str, driver: str, value: float) -> None:
        self.figs[key].add(driver, value)

    def floor(self) -> None:
        """The floor driver's network create and RUN_SAMPLES container runs, in the pynet
        column beside bridge's (copied in by ``measure``)."""
        net, ms = self.lab.create_network(self.floor_driver, self.lab.name("nn"))
        self.record("net_floor", "pynet", ms)
        for _ in range(RUN_SAMPLES):
            name = self.lab.name("frun")
            self.record("run_floor", "pynet", self.api.run(name, net.name, "sleep", "3600"))
            self.api.rm(name)
        docker("network", "rm", net.name)

    def connects(self, i: int) -> None:
        """CONNECT_SAMPLES network connects and disconnects of round ``i``, for bridge, pynet,
        the floor and the stack floor in turn (who goes first rotates): a container on a
        network of the driver's joins a second one. Slot by slot, pynet's connect and the
        floor's are taken side by side, which the floor verdict pairs (verdicts.judge). They
        start once pynet is quiet: the round's network removals and creates leave it work to
        do after its answers (bridges to delete, rules to write), which is not a connect's."""
        subjects = [("connect", BRIDGE, BRIDGE), ("connect", "pynet", self.pynet),
                    ("connect_floor", "pynet", self.floor_driver),
                    ("connect_stack", "pynet", self.stack_floor_driver)]
        made = []
        for key, label, driver in subjects:
            net, _ = self.lab.create_network(driver, self.lab.name("cn"))
            other, _ = self.lab.create_network(driver, self.lab.name("cn"))
            name = self.lab.name("con")
            docker("run", "-d", "--name", name, "--network", net.name, IMAGE, "sleep", "3600")
            made.append((key, label, net.name, other.name, name))
        wait_until_quiet(self.pynet_pid)
        for k in range(CONNECT_SAMPLES):
            turn = (i + k) % len(made)
            for key, label, _, other, name in made[turn:] + made[:turn]:
                self.record(key, label, self.api.connect(other, name))
                ms = self.api.disconnect(other, name)
                if key == "connect":
                    self.record("disconnect", label, ms)
        docker("rm", "-f", *(name for *_, name in made))
        docker("network", "rm", *(n for _, _, net, other, _ in made for n in (net, other)))

    def iteration(self, label: str, driver: str) -> None:
        """One round of every per-call and data-plane figure for one driver."""
        lab, p = self.lab, self.params
        net, ms = lab.create_network(driver, lab.name(f"{label[0]}n"))
        self.record("net_create", label, ms)
        net2, ms = lab.create_network(driver, lab.name(f"{label[0]}n"))  # sorts after net
        self.record("net_create", label, ms)

        # The server: echo and sink, both published, at a fixed address.
        server, server_ip = lab.name("srv"), net.host(SERVER_HOST)
        echo_port, sink_port = free_port(), free_port()
        docker("run", "-d", "--name", server, "--network", net.name, "--ip", server_ip,
               "-p", f"{echo_port}:{ECHO_PORT}", "-p", f"{sink_port}:{SINK_PORT}",
               IMAGE, "sh", "-c", SERVER_CMD)
        wait_for(f"{server} to echo", lambda: echoes(server_ip, ECHO_PORT), timeout=20)
        wait_for(f"{server} to sink", lambda: answers(server_ip, SINK_PORT), timeout=20)

        client = lab.name("cli")
        self.record("ttp", label, time_to_ping(label, net, client))

        self.record("tput_c2c", label, throughput_c2c(client, server_ip, p.mib))
        self.record("rtt_c2c", label, ping_rtt(client, server_ip, p.pings))
        for addr, tput, rtt in ((self.host_ip, "tput_pub", "rtt_pub"),
                                ("127.0.0.1", "tput_lo", "rtt_lo")):
            wait_for(f"{addr}:{echo_port} to reach {server}",
                     lambda a=addr: echoes(a, echo_port), timeout=20)
            self.record(tput, label, throughput_host(addr, sink_port, p.mib))
            self.record(rtt, label, tcp_rtt(addr, echo_port, p.pings))

        for _ in range(RUN_SAMPLES):
            plain = lab.name("run")
            self.record("run", label, self.api.run(plain, net.name, "sleep", "3600"))
            self.record("rm", label, self.api.rm(plain))

        ported = lab.name("pub")
        ms = timed("run", "-d", "--name", ported, "--network", net.name,
                   "-p", f"{free_port()}:80", "-p", f"{free_port()}:81", IMAGE, "sleep", "3600")
        self.record("ports", label, ms + timed("rm", "-f", ported))

        docker("rm", "-f", server, client)
        self.record("net_rm", label, timed("network", "rm", net.name))
        self.record("net_rm", label, timed("network", "rm", net2.name))

    def growth_step(self, made: dict[str, int]) -> None:
        """Each driver below the target gets one more network and one container run on it;
        ``made`` counts each driver's growth networks, and is the x of the points."""
        for label, driver in self.drivers():
            if made[label] >= self.params.networks:
                continue
            net, ms = self.lab.create_network(driver, self.lab.name(f"g{label[0]}"))
            self.figs["slope_create"].add_point(label, made[label], ms)
            made[label] += 1
            name = self.lab.name("grun")
            ms = timed("run", "-d", "--name", name, "--network", net.name, IMAGE,
                       "sleep", "3600")
            self.figs["slope_run"].add_point(label, made[label], ms)
            docker("rm", "-f", name)

    def growth_made(self) -> dict[str, int]:
        """Growth networks per driver as dockerd has them (after a disturbed step)."""
        names = self.lab.networks()
        return {label: sum(n.startswith(f"pb-{self.lab.tag}-g{label[0]}") for n in names)
                for label, _ in self.drivers()}

    def warm_up(self) -> None:
        """One untimed round per driver: dockerd's first use of a plugin (activation,
        capability query) and cold caches are not what the figures are about."""
        for label, driver in self.drivers():
            net, _ = self.lab.create_network(driver, self.lab.name(f"w{label[0]}"))
            name = self.lab.name("warm")
            docker("run", "-d", "--name", name, "--network", net.name, IMAGE, "sleep", "3600")
            docker("rm", "-f", name)
            docker("network", "rm", net.name)


# -- the run ---------------------------------------------------------------------------------

def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Clean-up runs to the end: a second Ctrl-C must not strand networks and containers."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def start_profiler(pid: int, out: str) -> subprocess.Popen | None:
    """py-spy recording the worker for the whole run, if py-spy is installed."""
    spy = os.environ.get("PY_SPY", "py-spy")
    try:
        return subprocess.Popen([spy, "record", "--pid", str(pid), "--output", out,
                                 "--format", "raw", "--rate", "200", "--threads"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    except FileNotFoundError:
        print(f"--profile: {spy} not found (pip install py-spy, or set PY_SPY)", file=sys.stderr)
        return None


def stop_profiler(proc: subprocess.Popen | None) -> None:
    """py-spy writes its output when interrupted."""
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


RETRIES = 3


def attempt(what: str, action: Callable[[], None], undo: Callable[[], None],
            log: Callable[[str], None], retried: list[str]) -> None:
    """Run ``action``; if it fails, undo it and try again, up to RETRIES times.

    The dockerd is shared: other people's tests restart it or remove every container now and
    then. A disturbed round is thrown away whole (its samples too) and run again; each retry
    is logged and listed in the output, and a round that fails every time stops the run.
    """
    for n in range(1, RETRIES + 1):
        try:
            action()
            return
        except Exception as exc:
            if n == RETRIES:
                raise
            reason = str(exc).strip().splitlines()
            retried.append(f"{what}: {' '.join(reason[:2])[:300]}")
            log(f"{what} failed, retrying ({n}/{RETRIES - 1}): {retried[-1]}")
            wait_for("dockerd to answer", dockerd_answers, timeout=120, interval=0.5)
            undo()


def clean_up(lab: Lab, inst: Instance, keep_log: bool, log: Callable[[str], None]) -> list[str]:
    """Remove the run's containers, networks and pynet instance; return what is left.

    Waits for dockerd first (it may be mid-restart by someone else's test) and tries twice,
    because a network left behind here is one nobody else will know to remove."""
    for _ in range(2):
        try:
            wait_for("dockerd to answer", dockerd_answers, timeout=120, interval=0.5)
            lab.cleanup()
            break
        except Exception as exc:
            log(f"clean-up of containers and networks failed, trying again: {exc}")
    # pynet answers a network rm at once and deletes the bridge after; after the growth
    # rows hundreds are pending, more than a clean stop's grace period finishes.
    try:
        wait_for("pynet to delete the bridges of the removed networks",
                 lambda: not instance_links(inst.name), timeout=120, interval=0.5)
    except AssertionError as exc:
        log(str(exc))
    log_text = Path(inst.log_path).read_text(errors="replace") \
        if os.path.exists(inst.log_path) else ""
    leftovers = purge_instance(inst)
    if any(item.startswith(("iptables", "nftables")) for item in lab.leftovers(inst.name)):
        # uninstall refuses while records remain; a record whose network dockerd already
        # dropped (pynet refused its DeleteNetwork) is one. The instance is gone: force it.
        with tempfile.TemporaryDirectory() as empty:
            run([*inst.argv("uninstall")[:-3], "--state-dir", empty, "uninstall"], check=False)
    leftovers += lab.leftovers(inst.name)
    if keep_log and log_text:
        Path(inst.log_path).write_text(log_text)
        log(f"pynet log kept at {inst.log_path}")
    else:
        Path(inst.log_path).unlink(missing_ok=True)
    if leftovers:
        log(f"LEFT BEHIND (remove by hand): {leftovers}")
    return leftovers


def grow(bench: Run, made: dict[str, int], log: Callable[[str], None]) -> None:
    """The growth phase, one retryable step (a network per driver) at a time."""
    p, lab = bench.params, bench.lab
    while min(made.values()) < p.networks:
        saved = bench.snapshot()

        def undo_step(saved: dict = saved) -> None:
            bench.restore(saved)
            names = lab.containers()
            if names:
                docker("rm", "-f", *names, timeout=300)
            made.update(bench.growth_made())
        attempt(f"growth step {min(made.values()) + 1}", lambda: bench.growth_step(made),
                undo_step, log, bench.retried)
        if min(made.values()) % 25 == 0:
            log(f"growth: {min(made.values())}/{p.networks} networks per driver")


def measure(bench: Run, inst: Instance, log: Callable[[str], None]) -> dict[str, list[float]]:
    """All figures; returns pynet's per-method handler times."""
    p, lab = bench.params, bench.lab
    if p.warmup:
        attempt("warm-up", bench.warm_up, lab.cleanup, log, bench.retried)
    for i in range(p.iterations):
        saved = bench.snapshot()

        def one_round(i: int = i) -> None:
            # Which driver goes first alternates: whatever the first leaves dockerd and the
            # kernel doing in the background (removing containers, ...) falls on each alike.
            for label, driver in bench.drivers(pynet_first=i % 2 == 1):
                bench.iteration(label, driver)
            bench.floor()
            bench.connects(i)

        def undo_round(saved: dict = saved) -> None:
            bench.restore(saved)
            lab.cleanup()
        attempt(f"iteration {i + 1}", one_round, undo_round, log, bench.retried)
        log(f"iteration {i + 1}/{p.iterations} done")
    # The floor rows compare the floor driver with bridge's own figures.
    for floor, figure in (("net_floor", "net_create"), ("run_floor", "run"),
                          ("connect_floor", "connect"), ("connect_stack", "connect")):
        bench.figs[floor].samples[BRIDGE] = list(bench.figs[figure].samples[BRIDGE])
    made = {label: 0 for label, _ in bench.drivers()}
    try:
        grow(bench, made, log)
    except Exception as exc:  # report what was measured, and say where growth stopped
        bench.stopped = f"growth stopped at {made} networks: {str(exc).strip()[:500]}"
        log(bench.stopped)
    lab.cleanup()  # growth networks go before RSS is read: memory that stays is the point

    bench.record("rss", "pynet", rss_mib(bench.pynet_pid))
    calls = handler_times(Path(inst.log_path).read_text(errors="replace"))
    every = [v for values in calls.values() for v in values]
    if not every:
        raise RuntimeError(f"no '<Method> ok <n>ms' lines in {inst.log_path}")
    bench.record("p50", "pynet", percentile(every, 50))
    bench.record("p99", "pynet", percentile(every, 99))
    return calls


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; exit 0 when it completed (targets or not)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, help=f"rounds per driver ({FULL.iterations})")
    parser.add_argument("--networks", type=int,
                        help=f"growth: networks per driver ({FULL.networks})")
    parser.add_argument("--mib", type=int, help=f"MiB per throughput sample ({FULL.mib})")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny run that only proves the script works")
    parser.add_argument("--json", metavar="FILE", help="also write figures and samples here")
    parser.add_argument("--keep-log", action="store_true", help="keep pynet's log file")
    parser.add_argument("--profile", metavar="FILE",
                        help="record pynet's worker with py-spy (raw format) into FILE")
    args = parser.parse_args(argv)
    base = SMOKE if args.smoke else FULL
    params = Params(iterations=args.iterations or base.iterations,
                    networks=args.networks if args.networks is not None else base.networks,
                    mib=args.mib or base.mib, pings=base.pings)

    def log(message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    try:  # other people's tests may be restarting the shared dockerd right now
        wait_for("dockerd to answer", dockerd_answers, timeout=60, interval=0.5)
    except AssertionError:
        print("bench: dockerd does not answer; start it first", file=sys.stderr)
        return 2
    ensure_image()
    signal.signal(signal.SIGTERM, _terminate)
    inst = bench_instance()
    lab = Lab(Subnets(str(POOL), SUBNET_PREFIX))
    floor = FloorDriver(f"pb-{lab.tag}-floor")
    stack_floor = StackFloorDriver(f"pb-{lab.tag}-sfloor")
    profiler = None
    started = time.monotonic()
    calls: dict[str, list[float]] = {}
    try:
        floor.start()
        stack_floor.start()
        inst.start()
        assert inst.proc is not None
        bench = Run(lab, inst.name, params, host_address(), floor.name, stack_floor.name,
                    worker_pid(inst.proc.pid))
        if args.profile:
            profiler = start_profiler(bench.pynet_pid, args.profile)
        log(f"pynet instance {inst.name}; networks pb-{lab.tag}-*; {params}")
        calls = measure(bench, inst, log)
    finally:
        with uninterrupted():
            log("cleaning up")
            stop_profiler(profiler)
            leftovers = clean_up(lab, inst, args.keep_log, log)
            floor.stop()
            stack_floor.stop()
    rows = [judge(f, bench.figs) for f in bench.figs.values()]
    info = machine()
    print(f"\nmachine: {info['nproc']} cores ({info['cpu']}), kernel {info['kernel']}, "
          f"docker {info['docker']} ({info['firewall']} firewall), {info['iptables']}")
    print(f"run: {params.iterations} iterations per driver, growth to {params.networks} "
          f"networks per driver, {params.mib} MiB per throughput sample, "
          f"{time.monotonic() - started:.0f}s\n")
    print(table(rows))
    print()
    print(method_table(calls))
    for line in bench.retried:
        print(f"retried: {line}")
    if bench.stopped:
        print(f"INCOMPLETE: {bench.stopped}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": info, "params": params.__dict__,
            "rows": [r.__dict__ for r in rows],
            "samples": {f.key: f.samples for f in bench.figs.values()},
            "points": {f.key: f.points for f in bench.figs.values() if f.rule == "slope"},
            "calls": calls, "leftovers": leftovers, "retried": bench.retried,
            "stopped": bench.stopped,
        }, indent=1, ensure_ascii=False))
    return 1 if leftovers or bench.stopped else 0


if __name__ == "__main__":
    sys.exit(main())
