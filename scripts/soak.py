#!/usr/bin/env python3
"""Soak: many container run/rm cycles on one pynet network; the worker must not grow.

Starts its own pynet instance (a throwaway name and state directory), creates one network and
runs ``docker run --rm`` (by default with a published port, so every cycle goes through port
reservation, iptables and conntrack) CYCLES times, a few at a time. It samples the gunicorn
worker's RSS, open fds and threads after a warm-up and every SAMPLE cycles, prints the table and
exits 1 if, over the second half of the cycles, fds grew or RSS grew by more than
--max-rss-growth MiB, if threads ever exceeded the worker's fixed maximum, or if anything leaked
(records, links, rules) or a cycle failed.

    .venv/bin/python scripts/soak.py                       # 1,000 cycles (~10 min on 2 cores)
    .venv/bin/python scripts/soak.py --cycles 40 --json    # what the smoke test runs
"""

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # scripts/ is not a package

from plugin.server import WORKER_THREADS  # noqa: E402  (after the path it needs)

PYNET = str(REPO / ".venv" / "bin" / "pynet")
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
IMAGE = "busybox:local"
# dockerd's idle keep-alive connections to the plugin come and go: a few fds either way are
# not a leak (a leak grows with the cycles: hundreds over a run).
FD_SLACK = 3


@dataclass
class Sample:
    """The worker's footprint after ``cycles`` cycles."""

    cycles: int
    rss_kib: int
    fds: int
    threads: int


def sh(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a program (no shell) and capture its output."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done


def wait_for(what: str, probe: Callable[[], object], timeout: float) -> None:
    """Poll ``probe`` until it is truthy."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def sample(pid: int, cycles: int) -> Sample:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return Sample(cycles, int(status["VmRSS"].split()[0]), len(os.listdir(f"/proc/{pid}/fd")),
                  int(status["Threads"]))


class Soak:
    """One instance, one network, and the cycles."""

    def __init__(self, subnet: str) -> None:
        self.name = f"pynet-soak{secrets.token_hex(2)}"
        self.state = tempfile.mkdtemp(prefix=f"{self.name}-")
        self.log = open(f"/tmp/{self.name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self.subnet = subnet
        self.network = f"soak-{secrets.token_hex(3)}"
        self.master: subprocess.Popen[bytes] | None = None
        self.failures: list[str] = []

    def argv(self, *command: str) -> list[str]:
        return [PYNET, "--name", self.name, "--state-dir", self.state, *command]

    def start(self) -> None:
        env = {**os.environ, "PYNET_RECONCILE_INTERVAL": "1"}  # many reconciles: more to leak
        self.master = subprocess.Popen(self.argv("serve"), stdout=self.log, stderr=self.log,
                                       env=env, start_new_session=True)
        sock = f"/run/docker/plugins/{self.name}.sock"
        wait_for("pynet to listen", lambda: sh(
            "curl", "-sf", "--max-time", "2", "--unix-socket", sock, "-X", "POST",
            "http://x/NetworkDriver.GetCapabilities", check=False).returncode == 0, 20)
        gateway = self.subnet.rsplit(".", 1)[0] + ".1"
        sh(DOCKER, "network", "create", "-d", self.name, "--subnet", self.subnet,
           "--gateway", gateway, self.network)

    def worker(self) -> int:
        assert self.master is not None
        children = sh("pgrep", "-P", str(self.master.pid)).stdout.split()
        if len(children) != 1:
            raise RuntimeError(f"expected one gunicorn worker, found {children}")
        return int(children[0])

    def cycle(self, publish: bool) -> None:
        ports = ["-p", "127.0.0.1::80"] if publish else []
        done = sh(DOCKER, "run", "--rm", "--network", self.network, *ports, IMAGE, "true",
                  check=False)
        if done.returncode != 0:
            self.failures.append(done.stderr.strip())

    def leaks(self) -> list[str]:
        found = []
        status = json.loads(sh(*self.argv("status")).stdout)
        endpoints = [e for n in status for e in n["endpoints"]]
        if endpoints:
            found.append(f"{len(endpoints)} endpoint record(s)")
        alias = f"pynet:{self.name}:"
        links = json.loads(sh("ip", "-j", "-d", "link", "show").stdout)
        veths = [i["ifname"] for i in links if i.get("ifalias", "").startswith(alias)
                 and i["ifname"].startswith("pnh")]
        if veths:
            found.append(f"veths {veths}")
        dnat = [r for r in sh("iptables-save", "-t", "nat").stdout.splitlines()
                if r.startswith(f"-A {self.name.upper()}-DNAT")]
        if dnat:
            found.append(f"{len(dnat)} DNAT rule(s)")
        return found

    def stop(self) -> None:
        sh(DOCKER, "network", "rm", self.network, check=False)
        if self.master is not None:
            try:
                os.killpg(self.master.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.master.wait(timeout=30)
        sh(*self.argv("uninstall"), check=False)
        shutil.rmtree(self.state, ignore_errors=True)
        self.log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=4, help="cycles at a time")
    parser.add_argument("--warmup", type=int, default=0,
                        help="cycles before the baseline sample (default: cycles/10, max 100)")
    parser.add_argument("--sample", type=int, default=100, help="sample every N cycles")
    parser.add_argument("--subnet", default="10.231.250.0/24")
    parser.add_argument("--no-publish", action="store_true", help="no -p on the containers")
    parser.add_argument("--max-rss-growth", type=float, default=4.0,
                        help="MiB allowed over the second half of the cycles")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    warmup = args.warmup or min(100, max(1, args.cycles // 10))

    soak = Soak(args.subnet)
    samples: list[Sample] = []
    problems: list[str] = []
    started = time.monotonic()
    try:
        soak.start()
        worker = soak.worker()
        done = 0
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            while done < warmup + args.cycles:
                batch = min(args.parallel, warmup + args.cycles - done)
                list(pool.map(lambda i: soak.cycle(not args.no_publish and i % 2 == 0),
                              range(done, done + batch)))
                before, done = done, done + batch
                if before < warmup <= done:
                    samples.append(sample(worker, 0))
                elif done > warmup and ((done - warmup) // args.sample
                                        != (before - warmup) // args.sample
                                        or done == warmup + args.cycles):
                    samples.append(sample(worker, done - warmup))
        if soak.worker() != worker:
            problems.append("the gunicorn worker was replaced during the soak")
        try:
            wait_for("reconcile to settle", lambda: not soak.leaks(), 15)
        except RuntimeError:
            problems += soak.leaks()
    except RuntimeError as exc:
        problems.append(str(exc))
    finally:
        soak.stop()
    if len(samples) < 2:
        print(f"soak did not get far enough to measure: {problems or soak.failures}",
              file=sys.stderr)
        return 1

    # Growth is judged over the second half: dockerd's keep-alive connections grow to their
    # peak once (bounded), and fds in flight vary by a few from one sample to the next; a leak
    # keeps growing. So RSS: last minus middle; fds: the second half's peak over the first
    # half's. The worker runs a thread per open dockerd connection, which come and go with
    # the calls' overlap, late in a run too: threads must stay within the worker's maximum.
    first, middle, last = samples[0], samples[len(samples) // 2], samples[-1]
    halves = samples[:len(samples) // 2 + 1], samples[len(samples) // 2:]
    verdict = {
        "cycles": args.cycles, "seconds": round(time.monotonic() - started),
        "start": asdict(first), "end": asdict(last),
        "rss_growth_mib": round((last.rss_kib - first.rss_kib) / 1024, 2),
        "fd_growth": last.fds - first.fds, "thread_growth": last.threads - first.threads,
        "second_half": {"from_cycle": middle.cycles,
                        "rss_growth_mib": round((last.rss_kib - middle.rss_kib) / 1024, 2),
                        "fd_growth": max(x.fds for x in halves[1])
                        - max(x.fds for x in halves[0]),
                        "thread_growth": max(x.threads for x in halves[1])
                        - max(x.threads for x in halves[0])},
        "thread_ceiling": WORKER_THREADS,
        "failures": soak.failures[:5], "failure_count": len(soak.failures),
        "problems": problems,
    }
    half = verdict["second_half"]
    ok = (half["rss_growth_mib"] <= args.max_rss_growth and half["fd_growth"] <= FD_SLACK
          and max(s.threads for s in samples) <= WORKER_THREADS and not soak.failures
          and not problems)
    verdict["flat"] = ok
    if args.json:
        print(json.dumps({**verdict, "samples": [asdict(s) for s in samples]}))
    else:
        print(f"{'cycles':>8} {'RSS MiB':>9} {'fds':>5} {'threads':>8}")
        for s in samples:
            print(f"{s.cycles:>8} {s.rss_kib / 1024:>9.1f} {s.fds:>5} {s.threads:>8}")
        print(json.dumps(verdict, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
