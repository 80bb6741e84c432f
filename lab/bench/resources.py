"""The benchmark's networks and containers, named pb-<tag>-..., removed again."""

import http.client
import ipaddress
import json
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from lab import (
    DOCKER,
    DOCKER_SOCKET,
    IMAGE,
    Subnets,
    docker,
    docker_ok,
    links,
    nft_objects,
    run,
)
from lab.bench import BRIDGE, POOL, SUBNET_PREFIX


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
        if nft_objects(instance):
            left.append(f"nftables table inet {instance}")
        return left


def dockerd_answers() -> bool:
    """docker_ok that also treats a CLI time-out (dockerd mid-restart) as no answer."""
    try:
        return docker_ok()
    except subprocess.TimeoutExpired:
        return False


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=120)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class Api:
    """dockerd's HTTP API on its Unix socket, over one kept-alive connection. Container run
    and rm and network connect and disconnect are timed here rather than through the CLI:
    the CLI's own start-up is the same for every driver and spreads each sample by more than
    the few ms the floor verdicts are about."""

    def __init__(self) -> None:
        self._conn: _UnixConnection | None = None

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> None:
        if self._conn is None:
            self._conn = _UnixConnection(DOCKER_SOCKET)
        try:
            self._conn.request(method, path, json.dumps(body) if body is not None else None,
                               {"Content-Type": "application/json"})
            reply = self._conn.getresponse()
            data = reply.read()
        except (OSError, http.client.HTTPException):
            self._conn.close()
            self._conn = None  # a dockerd restart: the next call connects again
            raise
        if reply.status >= 300:
            raise RuntimeError(f"dockerd: {method} {path}: {reply.status} "
                               f"{data.decode(errors='replace').strip()}")

    def _timed(self, *calls: tuple[str, str, dict[str, Any] | None]) -> float:
        start = time.perf_counter()
        for method, path, body in calls:
            self._call(method, path, body)
        return (time.perf_counter() - start) * 1000

    def run(self, name: str, network: str, *command: str) -> float:
        """ms to create and start a detached container (what ``docker run -d`` asks)."""
        return self._timed(
            ("POST", f"/containers/create?name={name}",
             {"Image": IMAGE, "Cmd": list(command), "HostConfig": {"NetworkMode": network}}),
            ("POST", f"/containers/{name}/start", None))

    def rm(self, name: str) -> float:
        """ms to remove a container, running or not (``docker rm -f``)."""
        return self._timed(("DELETE", f"/containers/{name}?force=1", None))

    def connect(self, network: str, container: str) -> float:
        """ms of ``docker network connect``'s request."""
        return self._timed(("POST", f"/networks/{network}/connect", {"Container": container}))

    def disconnect(self, network: str, container: str) -> float:
        """ms of ``docker network disconnect``'s request."""
        return self._timed(("POST", f"/networks/{network}/disconnect",
                            {"Container": container}))


def timed(*args: str, timeout: float = 120.0) -> float:
    """Wall time of one docker CLI call in ms (its start-up is the same for both drivers)."""
    start = time.perf_counter()
    docker(*args, timeout=timeout)
    return (time.perf_counter() - start) * 1000




def host_address() -> str:
    """The host's own address on its default-route interface (traffic to it stays local)."""
    routes = json.loads(run(["ip", "-j", "-4", "route", "show", "default"]).stdout or "[]")
    if routes:
        dev = routes[0]["dev"]
        for item in json.loads(run(["ip", "-j", "-4", "addr", "show", "dev", dev]).stdout):
            for a in item.get("addr_info", []):
                return a["local"]
    raise RuntimeError("the host has no default-route IPv4 address to publish on")
