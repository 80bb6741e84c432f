"""Timings and data-plane probes: container to container, host to a published port."""

import re
import socket
import statistics
import time

from lab import (
    IMAGE,
    docker,
    wait_for,
)
from lab.bench import SERVER_HOST, SINK_PORT
from lab.bench.resources import Net

# One busybox ``adjtimex`` printout: its status word comes before the time it read.
_ADJTIMEX = re.compile(r"status:\s+(\d+).*?time\.tv_sec:\s+(\d+)\s+time\.tv_usec:\s+(\d+)",
                       re.DOTALL)
STA_NANO = 0x2000  # <linux/timex.h>: the kernel clock is in nanosecond mode


def adjtimex_seconds(text: str) -> list[float]:
    """Timestamps busybox ``adjtimex`` printed (busybox date has no %N). Its ``tv_usec``
    holds nanoseconds while the kernel clock is in nanosecond mode (status bit STA_NANO,
    which a time daemon may set), microseconds otherwise."""
    return [int(sec) + int(frac) / (1e9 if int(status) & STA_NANO else 1e6)
            for status, sec, frac in _ADJTIMEX.findall(text)]


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
