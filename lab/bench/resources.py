"""The benchmark's networks and containers, named pb-<tag>-..., removed again."""

import ipaddress
import json
import secrets
import subprocess
import time
from dataclasses import dataclass

from lab import (
    DOCKER,
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
