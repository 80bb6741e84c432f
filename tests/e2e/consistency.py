"""Checks shared by the reliability tests: do pynet's records, the kernel and dockerd agree?

Every check observes the kernel independently of pynet (iproute2, iptables-save) and reads the
records straight from the state directory, so a bug in pynet's own view cannot hide itself.
"""

import ipaddress
import json
import re
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lab import (
    DOCKER,
    IMAGE,
    Instance,
    addresses,
    docker,
    iptables_save,
    link,
    links,
    run,
    wait_for,
)
from plugin.firewall.rules import ANY_BRIDGE

NOTHING_TO_DO = "nothing to do"


@dataclass(frozen=True)
class Records:
    """What the state directory says, read without going through pynet."""

    networks: dict[str, dict]   # id -> record
    endpoints: dict[str, dict]  # id -> record


def records(inst: Instance) -> Records:
    """The instance's records, read-only from its SQLite file."""
    path = Path(inst.state_dir) / "pynet.db"
    if not path.exists():
        return Records({}, {})
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        nets = {r[0]: json.loads(r[1]) for r in db.execute("SELECT id, data FROM networks")}
        eps = {r[0]: json.loads(r[1]) for r in db.execute("SELECT id, data FROM endpoints")}
    finally:
        db.close()
    return Records(nets, eps)


def wait_reaped(inst: Instance, timeout: float = 20.0) -> None:
    """Wait until the deletes pynet answered are done in the kernel: the reaper removes a
    record only after its rules and links are gone."""
    def reaped() -> bool:
        rec = records(inst)
        return all(r.get("state") != "deleting"
                   for r in [*rec.networks.values(), *rec.endpoints.values()])
    wait_for(f"{inst.name} to finish its deletes", reaped, timeout=timeout, interval=0.05)


def owned_links(inst: Instance) -> dict[str, str]:
    """Links carrying the instance's alias: name -> the record id in the alias."""
    prefix = f"pynet:{inst.name}:"
    return {item["ifname"]: item["ifalias"][len(prefix):] for item in links()
            if item.get("ifalias", "").startswith(prefix)}


def chain_prefix(inst: Instance) -> str:
    return inst.name.upper()


def own_rules(inst: Instance, text: str | None = None) -> list[str]:
    """iptables-save lines that belong to the instance: its chains and the jumps to them."""
    prefix = chain_prefix(inst) + "-"
    return [line for line in (text or iptables_save()).splitlines()
            if prefix in line and not line.startswith("#")]


def gateway(record: dict) -> str:
    """The bare gateway address of a network record."""
    return record["config"]["gateway"].split("/")[0]


def network_gateway(inst: Instance, network: str) -> str:
    """The gateway pynet recorded for the docker network called ``network``."""
    nid = docker("network", "inspect", "-f", "{{.Id}}", network).stdout.strip()
    return gateway(records(inst).networks[nid])


def docker_networks(inst: Instance) -> set[str]:
    """Full ids of the networks dockerd has for this driver."""
    return set(docker("network", "ls", "-q", "--no-trunc", "--filter",
                      f"driver={inst.name}").stdout.split())


def dry_run(inst: Instance) -> str:
    """``pynet reconcile --dry-run`` output."""
    return run(inst.argv("reconcile", "--dry-run")).stdout


def repairs(plan: str) -> list[str]:
    """The dry run's planned repairs, less moving pynet's jumps within a built-in chain.

    Where a jump sits is a matter between dockerd (which re-inserts its own jumps on every
    network change) and every pynet instance on the host (tests run several at once); it is
    covered by the firewall tests. Crash and reconcile tests care about objects and rules.
    """
    return [line for line in plan.splitlines() if line.startswith("would ")
            and not re.fullmatch(r"would repair iptables: fixed the jump\(s\) in .*", line)]


def wait_settled(inst: Instance, timeout: float = 20.0) -> None:
    """Until a dry run finds nothing to repair (dockerd reorders jumps now and then)."""
    last = [""]

    def empty() -> bool:
        last[0] = dry_run(inst)
        return not repairs(last[0])
    try:
        wait_for(f"{inst.name}'s reconcile plan to be empty", empty, timeout=timeout,
                 interval=0.3)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the plan still says:\n{last[0]}") from None


def problems(inst: Instance) -> list[str]:
    """Every disagreement between the records, the kernel and dockerd (empty: consistent)."""
    found: list[str] = []
    rec = records(inst)
    for nid, n in rec.networks.items():
        if n["state"] != "ready":
            found.append(f"network {nid[:12]} is {n['state']}")
        br = link(n["bridge"])
        if br is None:
            found.append(f"network {nid[:12]}: bridge {n['bridge']} missing")
            continue
        if "UP" not in br.get("flags", []):
            found.append(f"bridge {n['bridge']} is down")
        gw = n["config"]["gateway"]
        if gw and gw not in addresses(n["bridge"]):
            found.append(f"bridge {n['bridge']} lacks {gw}")
    for eid, e in rec.endpoints.items():
        if e["state"] != "ready":
            found.append(f"endpoint {eid[:12]} is {e['state']}")
        if e["network_id"] not in rec.networks:
            found.append(f"endpoint {eid[:12]} has no network")
        veth = link(e["host_veth"])
        if veth is None:
            found.append(f"endpoint {eid[:12]}: veth {e['host_veth']} missing")
        elif veth.get("master") != rec.networks.get(e["network_id"], {}).get("bridge"):
            found.append(f"veth {e['host_veth']} is not on its bridge")
    live = set(rec.networks) | set(rec.endpoints)
    for name, owner in owned_links(inst).items():
        if owner not in live:
            found.append(f"link {name} belongs to {owner[:12]}, which has no record")
    bridges = {n["bridge"] for n in rec.networks.values()}
    ports = {(p["proto"], p["host_port"]) for e in rec.endpoints.values() for p in e["ports"]}
    for rule in own_rules(inst):
        for iface in re.findall(r"-[io] (\S+)", rule):
            if iface not in bridges | {ANY_BRIDGE} and not iface.startswith("!"):
                found.append(f"rule for unknown bridge {iface}: {rule}")
        m = re.search(r"-p (\w+) .*--dport (\d+)", rule)
        if m and "-j DNAT" in rule and (m.group(1), int(m.group(2))) not in ports:
            found.append(f"DNAT for an unrecorded port: {rule}")
    in_docker = docker_networks(inst)
    for nid in set(rec.networks) - in_docker:
        found.append(f"network {nid[:12]} is recorded but dockerd does not have it")
    for nid in in_docker - set(rec.networks):
        found.append(f"network {nid[:12]} is in dockerd but pynet has no record (lost)")
    return found


def assert_consistent(inst: Instance, timeout: float = 20.0) -> None:
    """Records, kernel and dockerd agree, and pynet's own plan is empty."""
    wait_settled(inst, timeout)
    found = problems(inst)
    assert not found, "inconsistent state:\n" + "\n".join(found)


def ping_from_new_container(network: str, target: str) -> None:
    """``docker run`` a throwaway container on ``network`` and ping ``target`` from it."""
    done = run([DOCKER, "run", "--rm", "--network", network, IMAGE, "ping", "-c1", "-W3",
                target], check=False, timeout=60)
    assert done.returncode == 0, (f"docker run on {network} / ping {target} failed:\n"
                                  f"{done.stdout}{done.stderr}")


def every_network_works(inst: Instance) -> None:
    """The next ``docker run`` works on every network the instance has."""
    rec = records(inst)
    names = {nid: docker("network", "inspect", "-f", "{{.Name}}", nid).stdout.strip()
             for nid in rec.networks}
    for nid, n in rec.networks.items():
        ping_from_new_container(names[nid], gateway(n))




def ip_in(subnet: str, host: int) -> str:
    """The ``host``-th address of ``subnet``."""
    return str(ipaddress.IPv4Network(subnet)[host])


def wait_exit(proc: subprocess.Popen, timeout: float) -> int:
    """Wait for a process, failing the test (not hanging it) after ``timeout``."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{' '.join(map(str, proc.args))} still running after "
                             f"{timeout}s") from None
