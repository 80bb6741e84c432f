#!/usr/bin/env python3
"""Scale: what a packet and a change cost with 1, 100 and 1,000 networks of one driver.

For each column on the running dockerd - the bridge driver, pynet with its iptables backend
and, where dockerd runs its nftables backend, pynet with its nftables backend - the run makes
the measured network first (in an iptables layout its rules sit deepest: pynet appends a new
network's rules, Docker inserts them on top), puts a server (TCP sink and echo, both
published) and a client on it, then grows the driver's networks to each count with empty
networks and measures at every step (a pynet column once its instance is quiet again):
container-to-container TCP throughput and ping RTT, host-to-published-port throughput and
RTT, the time of network create and rm (an extra network, made and removed a few times), and
how many firewall rules a packet of each path is evaluated against, its connection's first
and the costliest later one (counted from nftables' trace, ``lab/bench/rulewalk.py``: exact,
where throughput and RTT move with the machine). Then the grown networks are removed and the
first count is measured again ("first again"): this VM's data-plane figures drift between
minutes of one run, and a ratio means something only where the first count's two figures
agree. A column's networks are removed before the next one starts. The table gives every
figure and its ratio to the same column's first figure.

The ``floor`` column is the benchmark's floor remote driver (``lab/bench/floor.py``: answers at
once, no bridge, no rules) grown the same way: its create and rm are what dockerd spends by
itself at each count, which no remote driver goes below, so a driver's own growth is its
figure's growth above the floor's. dockerd's own calls slow down as the host's interfaces and
routes grow, so each of the floor's grown networks gets a stand-in bridge (made by this script
with the network's gateway address, as a driver's bridge has); the timed extra network gets
none. It has no data plane.

Only a host where dockerd runs its nftables backend has all columns: pynet's nftables backend
needs forwarding to be decided by its table alone, and dockerd's iptables backend sets the
FORWARD policy to DROP (run once per dockerd firewall backend for the full picture).

    .venv/bin/python scripts/scale.py [--counts 1,100,1000] [--mib N] [--json FILE]
        [--columns bridge,floor,pynet-iptables,pynet-nftables]
"""

import argparse
import ipaddress
import json
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from pyroute2 import IPRoute

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # scripts/ is not a package; the lab package lives beside it

from lab import (  # noqa: E402
    IMAGE,
    Instance,
    Subnets,
    docker,
    ensure_image,
    firewall_backend,
    free_port,
    instance_links,
    purge_instance,
    run,
    wait_for,
)
from lab.bench import BRIDGE, ECHO_PORT, POOL, SERVER_CMD, SERVER_HOST, SINK_PORT  # noqa: E402
from lab.bench.floor import FloorDriver  # noqa: E402
from lab.bench.probes import (  # noqa: E402
    answers,
    echoes,
    ping_rtt,
    tcp_rtt,
    throughput_c2c,
    throughput_host,
)
from lab.bench.pynet_side import (  # noqa: E402
    bench_instance,
    machine,
    wait_until_quiet,
    worker_pid,
)
from lab.bench.resources import Lab, Net, host_address, timed  # noqa: E402
from lab.bench.rulewalk import first_and_established, walk_rules  # noqa: E402

PREFIX = 28  # 4,096 subnets in the pool: every column's networks fit, none reused
SAMPLES = 11  # network create/rm samples per step (their median: five moved by ~10 ms run to run)
PARALLEL = 8  # growth and clean-up run this many docker commands at once
AGAIN = "first again"  # the step after the growth is removed
FLOOR = "floor"  # the floor remote driver's column: create and rm only
FIGURES = {  # key: (label, unit, higher is better)
    "tput_c2c": ("TCP throughput container -> container", "MB/s", True),
    "rtt_c2c": ("ping RTT container -> container", "µs", False),
    "tput_pub": ("TCP throughput host -> published port", "MB/s", True),
    "rtt_pub": ("TCP RTT host -> published port", "µs", False),
    "create": ("network create", "ms", False),
    "rm": ("network rm", "ms", False),
    "rules": ("firewall rules and elements on the host", "", False),
    "walk_c2c_first": ("rules a packet is evaluated against, container -> container, "
                       "first of a connection", "", False),
    "walk_c2c": ("rules a packet is evaluated against, container -> container, later "
                 "packets (most)", "", False),
    "walk_pub_first": ("rules a packet is evaluated against, host -> published port, "
                       "first of a connection", "", False),
    "walk_pub": ("rules a packet is evaluated against, host -> published port, later "
                 "packets (most)", "", False),
}


def firewall_size() -> int:
    """iptables rules plus nftables rules and set elements (of every table on the host)."""
    rules = sum(line.startswith("-A ") for line in run(["iptables-save"]).stdout.splitlines())
    listing = json.loads(run(["nft", "-j", "list", "ruleset"]).stdout)["nftables"]
    for item in listing:
        rules += "rule" in item
        for kind in ("set", "map"):
            rules += len(item.get(kind, {}).get("elem", []))
    return rules


class Column:
    """One driver (and pynet backend) grown step by step on the measured network."""

    def __init__(self, label: str, driver: str, lab: Lab, mib: int, pings: int,
                 inst: Instance | None) -> None:
        self.label, self.driver, self.lab, self.inst = label, driver, lab, inst
        self.mib, self.pings = mib, pings
        self.made = 0
        self.host_ip = host_address()
        self.stand_ins = StandIns(lab.tag)
        self.links = 0  # pynet's links once the measured network is up (see shrink)

    def start(self) -> None:
        """The measured network, first of the column's, with its server and client (the
        floor's has neither: its networks carry no traffic)."""
        net, _ = self.lab.create_network(self.driver, self.lab.name("m"))
        self.subnet = net.subnet
        self.made = 1
        if self.label == FLOOR:
            return
        self.server, self.server_ip = self.lab.name("srv"), net.host(SERVER_HOST)
        self.echo_port, self.sink_port = free_port(), free_port()
        docker("run", "-d", "--name", self.server, "--network", net.name, "--ip",
               self.server_ip, "-p", f"{self.echo_port}:{ECHO_PORT}",
               "-p", f"{self.sink_port}:{SINK_PORT}", IMAGE, "sh", "-c", SERVER_CMD)
        self.client = self.lab.name("cli")
        docker("run", "-d", "--name", self.client, "--network", net.name, IMAGE,
               "sleep", "36000")
        wait_for("the server", lambda: echoes(self.server_ip, ECHO_PORT), timeout=30)
        wait_for("the sink", lambda: answers(self.server_ip, SINK_PORT), timeout=30)
        wait_for("the published port", lambda: echoes(self.host_ip, self.echo_port),
                 timeout=30)
        self.links = len(instance_links(self.driver))  # only pynet's carry its alias

    def grow(self, count: int) -> None:
        """Empty networks of the column's driver until it has ``count`` (the floor's with
        their stand-in bridges)."""
        needed = count - self.made
        with ThreadPoolExecutor(PARALLEL) as pool:
            made = list(pool.map(
                lambda _: self.lab.create_network(self.driver, self.lab.name("g"))[0],
                range(needed)))
        if self.label == FLOOR:
            with IPRoute() as ipr:
                for net in made:
                    self.stand_ins.add(ipr, net)
        self.made = count
        self.settle()

    def settle(self) -> None:
        """A pynet column's instance done with what it does after its answers."""
        if self.inst is not None and self.inst.proc is not None:
            wait_until_quiet(worker_pid(self.inst.proc.pid))

    def shrink(self) -> None:
        """Remove the grown networks: only the measured one is left."""
        grown = [n for n in self.lab.networks() if n.startswith(f"pb-{self.lab.tag}-g")]
        with ThreadPoolExecutor(PARALLEL) as pool:
            list(pool.map(lambda n: docker("network", "rm", n), grown))
        self.stand_ins.remove()
        self.made = 1
        if self.label != FLOOR:  # pynet removes bridges and rules just after its answers
            wait_for("the grown networks' bridges to go",
                     lambda: len(instance_links(self.driver)) <= self.links,
                     timeout=300, interval=0.5)
        self.settle()

    def measure(self) -> dict[str, float]:
        """Every figure, once (medians inside each probe and over the change samples)."""
        fig: dict[str, float] = {}
        if self.label != FLOOR:
            fig = {"tput_c2c": statistics.median(throughput_c2c(self.client, self.server_ip,
                                                                self.mib) for _ in range(3)),
                   "rtt_c2c": ping_rtt(self.client, self.server_ip, self.pings),
                   "tput_pub": statistics.median(throughput_host(self.host_ip, self.sink_port,
                                                                 self.mib) for _ in range(3)),
                   "rtt_pub": tcp_rtt(self.host_ip, self.echo_port, self.pings),
                   **self.rule_walks()}
        creates, rms = [], []
        for _ in range(SAMPLES):
            net, ms = self.lab.create_network(self.driver, self.lab.name("x"))
            creates.append(ms)
            rms.append(timed("network", "rm", net.name))
        fig["create"], fig["rm"] = statistics.median(creates), statistics.median(rms)
        if self.label != FLOOR:
            fig["rules"] = float(firewall_size())
        return fig

    def rule_walks(self) -> dict[str, float]:
        """Rules evaluated for the packets of a ping between the containers and of a TCP
        echo through the published port: the first packet of each, and the costliest later
        one."""
        def ping() -> None:
            docker("exec", self.client, "ping", "-c", "3", "-i", "0.2", self.server_ip)

        def echo() -> None:
            if not echoes(self.host_ip, self.echo_port):
                raise RuntimeError(f"no echo through {self.host_ip}:{self.echo_port}")

        fig: dict[str, float] = {}
        for key, probe, prerouting, output in (
                ("walk_c2c", ping, f"ip saddr {self.subnet} ip daddr {self.subnet}", None),
                ("walk_pub", echo, f"ip saddr {self.server_ip} tcp sport {ECHO_PORT}",
                 f"ip daddr {self.host_ip} tcp dport {self.echo_port}")):
            fig[f"{key}_first"], fig[key] = first_and_established(
                walk_rules(f"pbtrace-{self.lab.tag}", probe, prerouting, output))
        return fig


class StandIns:
    """The floor column's stand-in bridges, ``pbf<tag>-<n>``: up, with their network's
    gateway address (so the host has its route), no ports."""

    def __init__(self, tag: str) -> None:
        self.prefix = f"pbf{tag}-"
        self.names: list[str] = []

    def add(self, ipr: IPRoute, net: Net) -> None:
        name = f"{self.prefix}{len(self.names)}"
        ipr.link("add", ifname=name, kind="bridge")
        self.names.append(name)
        index = ipr.link_lookup(ifname=name)[0]
        ipr.addr("add", index=index, address=net.host(1), prefixlen=net.subnet.prefixlen)
        ipr.link("set", index=index, state="up")

    def remove(self) -> None:
        """Delete every stand-in this run made (also those of a failed ``add``)."""
        with IPRoute() as ipr:
            for name in self.names:
                for index in ipr.link_lookup(ifname=name):
                    ipr.link("del", index=index)
        self.names = []


def remove_everything(lab: Lab) -> None:
    """The column's containers and networks, in parallel (a thousand removals add up)."""
    names = lab.containers()
    if names:
        docker("rm", "-f", *names, check=False, timeout=300)
    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(lambda n: docker("network", "rm", n, check=False), lab.networks()))


@contextmanager
def column_driver(label: str) -> Iterator[tuple[str, Instance | None]]:
    """The docker driver name of a column, with its pynet instance while it runs."""
    if label == BRIDGE:
        yield BRIDGE, None
        return
    if label == FLOOR:
        floor = FloorDriver(f"pb-{secrets.token_hex(3)}-floor")
        floor.start()
        try:
            yield floor.name, None
        finally:
            floor.stop()
        return
    inst = bench_instance(PYNET_FIREWALL_BACKEND=label.split("-", 1)[1])
    inst.start()
    try:
        yield inst.name, inst
    finally:
        # The reaper removes bridges just after dockerd hears back: let it finish.
        wait_for(f"{inst.name} to remove its bridges", lambda: not instance_links(inst.name),
                 timeout=300, interval=0.5)
        left = purge_instance(inst)
        if left:
            print(f"scale: {inst.name} left {left}", file=sys.stderr)


def run_column(label: str, counts: list[int], subnets: Subnets, mib: int, pings: int,
               log: Callable[[str], None]) -> dict[str, dict[str, float]]:
    """Every step of one column, keyed by step name (``steps``)."""
    lab = Lab(subnets)
    out: dict[str, dict[str, float]] = {}
    with column_driver(label) as (driver, inst):
        column = Column(label, driver, lab, mib, pings, inst)
        try:
            column.start()
            for count in counts:
                column.grow(count)
                out[str(count)] = column.measure()
                log(f"{label}: {count} network(s): {out[str(count)]}")
            if len(counts) > 1:
                column.shrink()
                out[AGAIN] = column.measure()
                log(f"{label}: {AGAIN}: {out[AGAIN]}")
        finally:
            remove_everything(lab)
            column.stand_ins.remove()
    return out


def steps(counts: list[int]) -> list[str]:
    """The measured steps: each count, then the first again (after the growth is removed)."""
    return [str(c) for c in counts] + ([AGAIN] if len(counts) > 1 else [])


def table(results: dict[str, dict[str, dict[str, float]]], counts: list[int]) -> str:
    """One row per figure and step, one column per driver: value (ratio to the first)."""
    first = str(counts[0])
    labels = list(results)
    lines = [f"| figure | networks | {' | '.join(labels)} |",
             "|---|---|" + "---|" * len(labels)]
    for key, (name, unit, _) in FIGURES.items():
        for step in steps(counts):
            cells = []
            for label in labels:
                if key not in results[label][step]:
                    cells.append("—")  # the floor's networks carry no traffic
                    continue
                value, base = results[label][step][key], results[label][first][key]
                ratio = f" ({value / base:.2f}×)" if step != first and base else ""
                cells.append(f"{value:.0f}{ratio}" if value >= 100 else f"{value:.1f}{ratio}")
            lines.append(f"| {name}{f' ({unit})' if unit else ''} | {step} | "
                         f"{' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every column the host's dockerd allows and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="1,100,1000",
                        help="network counts to measure at (default 1,100,1000)")
    parser.add_argument("--mib", type=int, default=512, help="MiB per throughput sample")
    parser.add_argument("--pings", type=int, default=200, help="pings per RTT sample")
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    parser.add_argument("--columns", help="only these columns (comma-separated labels)")
    args = parser.parse_args(argv)
    counts = sorted({int(c) for c in args.counts.split(",")})

    def log(message: str) -> None:
        print(f"[scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    ensure_image()
    labels = [BRIDGE, FLOOR, "pynet-iptables"]
    if firewall_backend() == "nftables":
        labels.append("pynet-nftables")
    if args.columns:
        unknown = set(args.columns.split(",")) - set(labels)
        if unknown:
            raise SystemExit(f"scale: no column {', '.join(sorted(unknown))} on this dockerd "
                             f"(it has {', '.join(labels)})")
        labels = [label for label in labels if label in args.columns.split(",")]
    subnets = Subnets(str(POOL), PREFIX)
    if ipaddress.IPv4Network(POOL).num_addresses >> (32 - PREFIX) < len(labels) * (
            counts[-1] + SAMPLES * len(counts) + 1):
        raise SystemExit(f"scale: {POOL} has too few /{PREFIX} subnets for {counts[-1]} "
                         "networks per column")
    started = time.monotonic()
    results = {label: run_column(label, counts, subnets, args.mib, args.pings, log)
               for label in labels}
    info = machine()
    print(f"\nmachine: {info['nproc']} cores ({info['cpu']}), kernel {info['kernel']}, "
          f"docker {info['docker']} ({info['firewall']} firewall), {info['iptables']}; "
          f"{time.monotonic() - started:.0f}s\n")
    print(table(results, counts))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
