"""What the benchmark reads of the pynet instance under test, and of the machine."""

import os
import platform
import secrets
import tempfile
import time
from pathlib import Path

from lab import (
    Instance,
    docker,
    firewall_backend,
    run,
    wait_for,
)
from lab.bench import CALL_LINE


def bench_instance(**env: str) -> Instance:
    """A pynet instance under a throw-away name, at its production reconcile interval (the
    tests' helper starts instances at 1 s, which would load pynet more than users see);
    ``env``: more PYNET_* settings."""
    name = f"pynet-b{secrets.token_hex(3)}"
    state = tempfile.mkdtemp(prefix=f"{name}-state-")
    return Instance(name=name, state_dir=state, log_path=f"/tmp/{name}.log",
                    env={"PYNET_RECONCILE_INTERVAL": "5", **env})


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


def cpu_seconds(pid: int) -> float:
    """CPU time ``pid`` and its reaped children (iptables, nft) used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def wait_until_quiet(pid: int, share: float = 0.05, window: float = 1.0) -> None:
    """Return once ``pid`` used under ``share`` of a CPU for ``window`` seconds: after a
    burst of networks pynet finishes the work it does after its answers (rules, the periodic
    check's look at what changed) before a figure is taken, as a user's steady state has it."""
    def quiet() -> bool:
        before = cpu_seconds(pid)
        time.sleep(window)  # the window the share is measured over
        return cpu_seconds(pid) - before < share * window
    wait_for(f"pynet ({pid}) to go quiet", quiet, timeout=300, interval=0)


def handler_times(log_text: str) -> dict[str, list[float]]:
    """Per-method durations (ms) from pynet's one line per successful call."""
    calls: dict[str, list[float]] = {}
    for line in log_text.splitlines():
        m = CALL_LINE.search(line)
        if m:
            calls.setdefault(m.group(1), []).append(float(m.group(2)))
    return calls



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
