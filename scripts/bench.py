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
import http.server
import ipaddress
import json
import os
import platform
import re
import secrets
import signal
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute, NetlinkError

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # scripts/ is not a package; the test helpers live beside it

from tests.helpers import (  # noqa: E402
    DOCKER,
    IMAGE,
    Instance,
    Subnets,
    docker,
    docker_ok,
    ensure_image,
    firewall_backend,
    links,
    purge_instance,
    run,
    wait_for,
)

BRIDGE = "bridge"
POOL = ipaddress.IPv4Network("10.232.0.0/16")  # this benchmark's range; tests use 10.231/16
# /26 each: 200 growth networks per driver (400) do not fit into the pool as /24s.
SUBNET_PREFIX = 26
# Container run is the figure closest to its target and each sample is ~0.3 s of dockerd's
# work with a few ms of the driver's in it: several samples a round keep its median steady.
RUN_SAMPLES = 3
SERVER_HOST = 10  # the server container's fixed address: <subnet> + 10
ECHO_PORT, SINK_PORT = 5002, 5003
# In the server container: a TCP echo and a TCP sink, each forking per connection (-ll).
SERVER_CMD = (f"nc -ll -p {ECHO_PORT} -e cat & "
              f"nc -ll -p {SINK_PORT} -e dd of=/dev/null bs=1M & exec sleep 3600")
CALL_LINE = re.compile(r"\s(\w+) ok (\d+(?:\.\d+)?)ms\s*$")


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


# -- figures and verdicts --------------------------------------------------------------------

@dataclass
class Figure:
    """One row of the table: samples per driver and the rule that judges pynet against bridge.

    ``rule`` is one of: ``ratio`` (pynet/bridge medians at most ``limit``), ``equal`` (data
    plane: not worse than bridge beyond the noise of bridge's own samples), ``slope`` (growth:
    pynet's slope not above bridge's beyond two standard errors), ``absolute`` (pynet alone, at
    most ``limit``), ``floor`` (``ratio``, or pynet within FLOOR_MARGIN_MS of the figure
    ``floor`` names), ``info`` (shown, not judged).
    """

    key: str
    label: str
    unit: str
    rule: str
    limit: float = 0.0
    higher_is_better: bool = False
    floor: str = ""  # rule "floor": the figure of the floor remote driver it may be near
    samples: dict[str, list[float]] = field(default_factory=lambda: {BRIDGE: [], "pynet": []})
    points: dict[str, list[tuple[float, float]]] = field(
        default_factory=lambda: {BRIDGE: [], "pynet": []})

    def add(self, driver: str, value: float) -> None:
        self.samples[driver].append(value)

    def add_point(self, driver: str, x: float, y: float) -> None:
        self.points[driver].append((x, y))


def figures() -> dict[str, Figure]:
    """Every figure the benchmark reports, in table order."""
    rows = [
        Figure("net_create", "network create", "ms", "ratio", 0.6),
        Figure("net_rm", "network rm", "ms", "ratio", 0.6),
        # The floor remote driver's figures in the pynet column: dockerd's own share, the
        # floor for any remote driver (see FloorDriver).
        Figure("net_floor", "network create, floor remote driver", "ms", "info"),
        # Container run and network connect: at most the ratio, or within 3 ms of the floor
        # remote driver (a veth pair and nothing else), whose rows follow: what dockerd spends
        # on a remote driver's endpoint by itself.
        Figure("run", "container run (create+start)", "ms", "floor", 1.05, floor="run_floor"),
        Figure("run_floor", "container run, floor remote driver", "ms", "info"),
        Figure("rm", "container rm", "ms", "info"),
        Figure("connect", "network connect", "ms", "floor", 1.10, floor="connect_floor"),
        Figure("connect_floor", "network connect, floor remote driver", "ms", "info"),
        Figure("disconnect", "network disconnect", "ms", "info"),
        Figure("ttp", "docker run until ping answers", "ms", "ratio", 1.05),
        Figure("ports", "run+rm with 2 published ports", "ms", "ratio", 1.0),
        Figure("slope_create", "growth: network create slope", "ms/net", "slope"),
        Figure("slope_run", "growth: container run slope", "ms/net", "slope"),
        Figure("tput_c2c", "TCP throughput container→container", "MB/s", "equal",
               higher_is_better=True),
        Figure("rtt_c2c", "ping RTT container→container", "µs", "equal"),
        Figure("tput_pub", "TCP throughput host→published port (host IP)", "MB/s", "equal",
               higher_is_better=True),
        Figure("rtt_pub", "TCP RTT host→published port (host IP)", "µs", "equal"),
        Figure("tput_lo", "TCP throughput host→published port (127.0.0.1)", "MB/s", "equal",
               higher_is_better=True),
        Figure("rtt_lo", "TCP RTT host→published port (127.0.0.1)", "µs", "equal"),
        Figure("rss", "pynet worker RSS after the run", "MiB", "absolute", 60.0),
        Figure("p50", "pynet handler latency p50", "ms", "info"),
        Figure("p99", "pynet handler latency p99", "ms", "absolute", 20.0),
    ]
    return {f.key: f for f in rows}


def slope(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Theil–Sen slope and a robust standard error (0 when there are too few points).

    The median of pairwise slopes, because a shared dockerd throws the odd multi-second
    outlier that would tilt a least-squares line; the error uses the residuals' MAD.
    """
    pairs = [(y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points)
             for x2, y2 in points[i + 1:] if x2 != x1]
    if not pairs:
        return float("nan"), 0.0
    b = statistics.median(pairs)
    mx = statistics.fmean(x for x, _ in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    resid = [y - b * x for x, y in points]
    centre = statistics.median(resid)
    sigma = 1.4826 * statistics.median(abs(r - centre) for r in resid)
    return b, sigma / sxx ** 0.5


def spread(values: list[float]) -> float:
    """Relative interquartile range: how much bridge disagrees with itself in this run."""
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    middle = statistics.median(values)
    return (q3 - q1) / middle if middle else 0.0


@dataclass
class Row:
    """A judged figure, as printed and as written to JSON."""

    key: str
    label: str
    unit: str
    bridge: float | None
    pynet: float | None
    ratio: float | None
    target: str
    verdict: str

    def cells(self) -> list[str]:
        def num(v: float | None) -> str:
            if v is None:
                return "—"
            return f"{v:.3f}" if abs(v) < 1 else f"{v:.1f}"
        return [f"{self.label} ({self.unit})", num(self.bridge), num(self.pynet),
                "—" if self.ratio is None else f"{self.ratio:.2f}×", self.target, self.verdict]


FLOOR_MARGIN_MS = 3.0


def judge(fig: Figure, figs: dict[str, Figure]) -> Row:
    """Medians, ratio and PASS/MISS for one figure (``figs``: the others, for floors)."""
    if fig.rule == "slope":
        (b, b_se), (p, p_se) = slope(fig.points[BRIDGE]), slope(fig.points["pynet"])
        allowed = 2 * (b_se ** 2 + p_se ** 2) ** 0.5
        ok = p <= b + allowed
        return Row(fig.key, fig.label, fig.unit, b, p, p / b if b else None,
                   f"≤ bridge +{allowed:.2f} (2σ)", "PASS" if ok else "MISS")
    mb = statistics.median(fig.samples[BRIDGE]) if fig.samples[BRIDGE] else None
    mp = statistics.median(fig.samples["pynet"]) if fig.samples["pynet"] else None
    if fig.rule == "absolute":
        ok = mp is not None and mp <= fig.limit
        return Row(fig.key, fig.label, fig.unit, None, mp, None, f"≤ {fig.limit:g} {fig.unit}",
                   "PASS" if ok else "MISS")
    ratio = mp / mb if mp is not None and mb else None
    if fig.rule == "info":
        return Row(fig.key, fig.label, fig.unit, mb, mp, ratio, "—", "info")
    if fig.rule == "ratio":
        ok = ratio is not None and ratio <= fig.limit
        return Row(fig.key, fig.label, fig.unit, mb, mp, ratio, f"≤ {fig.limit:.2f}×",
                   "PASS" if ok else "MISS")
    if fig.rule == "floor":
        below = figs[fig.floor].samples["pynet"]
        floor = statistics.median(below) if below else None
        ok = ratio is not None and ratio <= fig.limit or (
            mp is not None and floor is not None and mp <= floor + FLOOR_MARGIN_MS)
        return Row(fig.key, fig.label, fig.unit, mb, mp, ratio,
                   f"≤ {fig.limit:.2f}× or floor +{FLOOR_MARGIN_MS:g} ms",
                   "PASS" if ok else "MISS")
    noise = max(0.05, spread(fig.samples[BRIDGE]))
    if fig.higher_is_better:
        ok = ratio is not None and ratio >= 1 - noise
        target = f"1.00× (≥ {1 - noise:.2f}×)"
    else:
        ok = ratio is not None and ratio <= 1 + noise
        target = f"1.00× (≤ {1 + noise:.2f}×)"
    return Row(fig.key, fig.label, fig.unit, mb, mp, ratio, target, "PASS" if ok else "MISS")


def table(rows: list[Row]) -> str:
    """A Markdown table, so the README can carry it as printed."""
    head = ["figure", "bridge", "pynet", "pynet/bridge", "target", "result"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


# -- resources -------------------------------------------------------------------------------

@dataclass
class Net:
    """A benchmark network."""

    name: str
    id: str
    subnet: ipaddress.IPv4Network

    def host(self, n: int) -> str:
        return str(self.subnet.network_address + n)


class Lab:
    """Makes networks and containers named ``pb-<tag>-...`` and removes every one of them."""

    def __init__(self, subnets: Subnets) -> None:
        self.tag = secrets.token_hex(3)
        self.subnets = subnets
        self.counter = 0
        self.bridges: set[str] = set()  # Linux bridge names of every network made

    def name(self, kind: str) -> str:
        self.counter += 1
        return f"pb-{self.tag}-{kind}{self.counter}"

    def create_network(self, driver: str, name: str) -> tuple[Net, float]:
        """``docker network create``; returns the network and its wall time in ms.

        A subnet another run or developer already uses is skipped, untimed."""
        for _ in range(32):
            subnet = self.subnets.take()
            gateway = str(subnet.network_address + 1)
            start = time.perf_counter()
            done = run([DOCKER, "network", "create", "-d", driver, "--subnet", str(subnet),
                        "--gateway", gateway, name], check=False)
            elapsed = (time.perf_counter() - start) * 1000
            if done.returncode == 0:
                net_id = done.stdout.strip()
                prefix = "br-" if driver == BRIDGE else "pn-"
                self.bridges.add(f"{prefix}{net_id[:12]}")
                return Net(name, net_id, subnet), elapsed
            if "overlap" not in done.stderr:
                raise RuntimeError(f"docker network create {name} ({driver}, {subnet}) failed: "
                                   f"{done.stderr.strip()}")
        raise RuntimeError(f"no free /{SUBNET_PREFIX} left in {POOL} for {name}")

    def containers(self) -> list[str]:
        """Names of this run's containers, running or not."""
        names = docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
        return [n for n in names if n.startswith(f"pb-{self.tag}-")]

    def networks(self) -> list[str]:
        """Names of this run's networks."""
        names = docker("network", "ls", "--format", "{{.Name}}").stdout.split()
        return [n for n in names if n.startswith(f"pb-{self.tag}-")]

    def cleanup(self) -> None:
        """Remove this run's containers, then its networks."""
        names = self.containers()
        if names:
            docker("rm", "-f", *names, check=False, timeout=300)
        for net in self.networks():
            docker("network", "rm", net, check=False)

    def leftovers(self, instance: str) -> list[str]:
        """Whatever of this run is still there after clean-up."""
        left = [f"container {n}" for n in self.containers()]
        left += [f"network {n}" for n in self.networks()]
        alias = f"pynet:{instance}:"
        for item in links():
            name = item.get("ifname", "")
            if name in self.bridges or item.get("ifalias", "").startswith(alias):
                left.append(f"link {name}")
        chains = f":{instance.upper()}-"  # pynet's chain prefix is its name, upper case
        left += [f"iptables chain {line.split()[0][1:]}"
                 for line in run(["iptables-save"]).stdout.splitlines()
                 if line.startswith(chains)]
        return left


def dockerd_answers() -> bool:
    """docker_ok that also treats a CLI time-out (dockerd mid-restart) as no answer."""
    try:
        return docker_ok()
    except subprocess.TimeoutExpired:
        return False


def timed(*args: str, timeout: float = 120.0) -> float:
    """Wall time of one docker CLI call in ms (its start-up is the same for both drivers)."""
    start = time.perf_counter()
    docker(*args, timeout=timeout)
    return (time.perf_counter() - start) * 1000


def free_port() -> int:
    """A host TCP port nothing listens on now (the kernel's pick), to publish on."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def host_address() -> str:
    """The host's own address on its default-route interface (traffic to it stays local)."""
    routes = json.loads(run(["ip", "-j", "-4", "route", "show", "default"]).stdout or "[]")
    if routes:
        dev = routes[0]["dev"]
        for item in json.loads(run(["ip", "-j", "-4", "addr", "show", "dev", dev]).stdout):
            for a in item.get("addr_info", []):
                return a["local"]
    raise RuntimeError("the host has no default-route IPv4 address to publish on")


# -- measurements ----------------------------------------------------------------------------

def adjtimex_seconds(text: str) -> list[float]:
    """Timestamps busybox ``adjtimex`` printed (µs resolution; busybox date has no %N)."""
    secs = [int(v) for v in re.findall(r"time\.tv_sec:\s+(\d+)", text)]
    usecs = [int(v) for v in re.findall(r"time\.tv_usec:\s+(\d+)", text)]
    return [s + u / 1e6 for s, u in zip(secs, usecs, strict=True)]


def time_to_ping(driver: str, net: Net, name: str) -> float:
    """ms from starting ``docker run`` until the new container's first ping of the server
    is answered. The container stamps that moment itself (same kernel clock), so polling its
    log afterwards adds nothing to the figure."""
    server = net.host(SERVER_HOST)
    script = (f"ping -i 0.01 -w 30 {server} | grep -m1 -q 'bytes from' && adjtimex; "
              "exec sleep 3600")
    start = time.time()
    docker("run", "-d", "--name", name, "--network", net.name, IMAGE, "sh", "-c", script)
    stamps = wait_for(f"{name} ({driver}) to ping {server}",
                      lambda: adjtimex_seconds(docker("logs", name).stdout), timeout=40)
    return (stamps[0] - start) * 1000


def throughput_c2c(client: str, server: str, mib: int) -> float:
    """MB/s of ``mib`` MiB from one container to another (the client stamps start and end)."""
    out = docker("exec", client, "sh", "-c",
                 f"adjtimex; nc {server} {SINK_PORT} -e dd if=/dev/zero bs=1M count={mib} "
                 "2>/dev/null; adjtimex", timeout=300).stdout
    first, last = adjtimex_seconds(out)
    return mib * 1048576 / 1e6 / (last - first)


def ping_rtt(client: str, server: str, count: int) -> float:
    """Median ICMP round trip in µs, container to container."""
    out = docker("exec", client, "ping", "-c", str(count), "-i", "0.01", server).stdout
    times = [float(t) for t in re.findall(r"time=([\d.]+) ms", out)]
    if not times:
        raise RuntimeError(f"ping from {client} to {server} got no answer:\n{out}")
    return statistics.median(times) * 1000


def throughput_host(address: str, port: int, mib: int) -> float:
    """MB/s of ``mib`` MiB from the host into a published port, until the sink closes (so
    the figure covers delivery, not only the local send buffer)."""
    chunk = bytes(1 << 20)
    with socket.create_connection((address, port), timeout=60) as s:
        start = time.perf_counter()
        for _ in range(mib):
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass
        elapsed = time.perf_counter() - start
    return mib * 1048576 / 1e6 / elapsed


def tcp_rtt(address: str, port: int, count: int) -> float:
    """Median round trip in µs of one byte through a published port to the echo server."""
    with socket.create_connection((address, port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        samples = []
        for i in range(count + 5):
            start = time.perf_counter()
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise RuntimeError(f"echo through {address}:{port} closed early")
            if i >= 5:  # the first round trips pay for cold caches and ARP
                samples.append((time.perf_counter() - start) * 1e6)
    return statistics.median(samples)


def answers(address: str, port: int) -> bool:
    """True once a TCP connection to ``address:port`` is accepted."""
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def echoes(address: str, port: int) -> bool:
    """True once a byte sent to ``address:port`` comes back (the container is behind it)."""
    try:
        with socket.create_connection((address, port), timeout=1) as s:
            s.sendall(b"x")
            return s.recv(1) == b"x"
    except OSError:
        return False


class _FloorHandler(http.server.BaseHTTPRequestHandler):
    """Answers every remote-driver call at once, doing only what a container cannot start
    without: a veth pair per endpoint, whose container end Join hands to dockerd."""

    protocol_version = "HTTP/1.1"  # keep-alive, as dockerd's plugin client expects
    ipr: IPRoute | None = None
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        call = self.path.rsplit(".", 1)[-1]
        endpoint = str(json.loads(raw or b"{}").get("EndpointID", ""))[:12]
        body: dict = {}
        if call == "Activate":
            body = {"Implements": ["NetworkDriver"]}
        elif call == "GetCapabilities":
            body = {"Scope": "local"}
        elif call == "CreateEndpoint":
            self._links("add", ifname=f"pfh{endpoint}", kind="veth", peer=f"pfc{endpoint}")
        elif call == "Join":
            body = {"InterfaceName": {"SrcName": f"pfc{endpoint}", "DstPrefix": "eth"}}
        elif call == "DeleteEndpoint":
            self._links("del", ifname=f"pfh{endpoint}")
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.docker.plugins.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _links(self, command: str, **spec: str) -> None:
        with self.lock:
            if _FloorHandler.ipr is None:
                _FloorHandler.ipr = IPRoute()
            try:
                _FloorHandler.ipr.link(command, **spec)
            except NetlinkError:
                pass  # a retried call: the pair is there (add) or gone with its peer (del)

    def log_message(self, *args: object) -> None:
        """Quiet: the benchmark's output is the table."""


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        conn, _ = self.socket.accept()
        return conn, ("local", 0)  # http.server wants a (host, port) client address


class FloorDriver:
    """A remote driver that does only what dockerd cannot do without, served from this
    process: nothing for a network, a veth pair for an endpoint. What dockerd spends with it
    (CLI, API, IPAM, its store, the plugin calls, moving and configuring the interface) is
    what it spends on a remote driver by itself, which no remote driver can go below. Shown
    next to the bridge driver's figures."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = f"/run/docker/plugins/{name}.sock"
        self._server: _UnixServer | None = None

    def start(self) -> None:
        Path(self.path).unlink(missing_ok=True)
        self._server = _UnixServer(self.path, _FloorHandler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        Path(self.path).unlink(missing_ok=True)


@dataclass
class Run:
    """Everything one benchmark run needs: its lab, the drivers, the figures."""

    lab: Lab
    pynet: str  # the instance's driver name
    params: Params
    host_ip: str
    floor_driver: str  # the floor remote driver's name
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
        """The floor driver's network create, container run and network connect (rm
        untimed), in the pynet column beside bridge's (copied in by ``measure``)."""
        net, ms = self.lab.create_network(self.floor_driver, self.lab.name("nn"))
        self.record("net_floor", "pynet", ms)
        other, _ = self.lab.create_network(self.floor_driver, self.lab.name("nn"))
        name = self.lab.name("frun")
        self.record("run_floor", "pynet", timed("run", "-d", "--name", name, "--network",
                                                net.name, IMAGE, "sleep", "3600"))
        self.record("connect_floor", "pynet", timed("network", "connect", other.name, name))
        docker("rm", "-f", name)
        docker("network", "rm", net.name, other.name)

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
        self.record("connect", label, timed("network", "connect", net2.name, client))
        self.record("disconnect", label, timed("network", "disconnect", net2.name, client))

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
            self.record("run", label, timed("run", "-d", "--name", plain, "--network",
                                            net.name, IMAGE, "sleep", "3600"))
            self.record("rm", label, timed("rm", "-f", plain))

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


# -- the plugin's side -----------------------------------------------------------------------

def worker_pid(master: int) -> int:
    """The gunicorn worker under the ``pynet serve`` master (state lives in that process)."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    if not children:
        raise RuntimeError(f"pynet master {master} has no worker process")
    return int(children[0])


def rss_mib(pid: int) -> float:
    """Resident set size from /proc, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS")


def handler_times(log_text: str) -> dict[str, list[float]]:
    """Per-method durations (ms) from pynet's one line per successful call."""
    calls: dict[str, list[float]] = {}
    for line in log_text.splitlines():
        m = CALL_LINE.search(line)
        if m:
            calls.setdefault(m.group(1), []).append(float(m.group(2)))
    return calls


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank: a p99 that is a real observed call)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def method_table(calls: dict[str, list[float]]) -> str:
    """Per-method p50/p99/max, for finding which handler is slow."""
    lines = ["| pynet call | n | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
    for method, values in sorted(calls.items(), key=lambda kv: -percentile(kv[1], 99)):
        lines.append(f"| {method} | {len(values)} | {percentile(values, 50):.1f} | "
                     f"{percentile(values, 99):.1f} | {max(values):.1f} |")
    return "\n".join(lines)


def machine() -> dict[str, str]:
    """What the figures were taken on."""
    cpu = next((line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    server = docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    backend = firewall_backend()
    iptables = run(["iptables", "--version"], check=False).stdout.strip()
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "kernel": platform.release(),
            "docker": server, "firewall": backend, "iptables": iptables,
            "python": platform.python_version()}


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


def new_instance() -> Instance:
    """A pynet instance under a throw-away name, at its production reconcile interval (the
    tests' helper starts instances at 1 s, which would load pynet more than users see)."""
    name = f"pynet-b{secrets.token_hex(3)}"
    state = tempfile.mkdtemp(prefix=f"{name}-state-")
    return Instance(name=name, state_dir=state, log_path=f"/tmp/{name}.log",
                    env={"PYNET_RECONCILE_INTERVAL": "5"})


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
    log_text = Path(inst.log_path).read_text(errors="replace") \
        if os.path.exists(inst.log_path) else ""
    leftovers = purge_instance(inst)
    if any(item.startswith("iptables") for item in lab.leftovers(inst.name)):
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

        def undo_round(saved: dict = saved) -> None:
            bench.restore(saved)
            lab.cleanup()
        attempt(f"iteration {i + 1}", one_round, undo_round, log, bench.retried)
        log(f"iteration {i + 1}/{p.iterations} done")
    # The floor rows compare the floor driver with bridge's own figures.
    for floor, figure in (("net_floor", "net_create"), ("run_floor", "run"),
                          ("connect_floor", "connect")):
        bench.figs[floor].samples[BRIDGE] = list(bench.figs[figure].samples[BRIDGE])
    made = {label: 0 for label, _ in bench.drivers()}
    try:
        grow(bench, made, log)
    except Exception as exc:  # report what was measured, and say where growth stopped
        bench.stopped = f"growth stopped at {made} networks: {str(exc).strip()[:500]}"
        log(bench.stopped)
    lab.cleanup()  # growth networks go before RSS is read: memory that stays is the point

    assert inst.proc is not None
    worker = worker_pid(inst.proc.pid)
    bench.record("rss", "pynet", rss_mib(worker))
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
    inst = new_instance()
    lab = Lab(Subnets(str(POOL), SUBNET_PREFIX))
    floor = FloorDriver(f"pb-{lab.tag}-floor")
    profiler = None
    started = time.monotonic()
    calls: dict[str, list[float]] = {}
    try:
        floor.start()
        inst.start()
        bench = Run(lab, inst.name, params, host_address(), floor.name)
        if args.profile:
            assert inst.proc is not None
            profiler = start_profiler(worker_pid(inst.proc.pid), args.profile)
        log(f"pynet instance {inst.name}; networks pb-{lab.tag}-*; {params}")
        calls = measure(bench, inst, log)
    finally:
        with uninterrupted():
            log("cleaning up")
            stop_profiler(profiler)
            leftovers = clean_up(lab, inst, args.keep_log, log)
            floor.stop()
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
