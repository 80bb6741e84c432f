"""A short soak (scripts/soak.py, whose full run is 1,000 cycles and not part of make test):
the worker's open fds and threads stay flat and nothing leaks over a few dozen run/rm cycles."""

import json

from lab import REPO, VENV_BIN, run
from tests.conftest import Resources


def test_short_soak_is_flat(res: Resources) -> None:
    done = run([str(VENV_BIN / "python"), str(REPO / "scripts" / "soak.py"), "--cycles", "24",
                "--warmup", "24", "--sample", "8", "--json",
                "--subnet", str(res.subnets.take())], check=False, timeout=600)
    verdict = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
    assert verdict.get("flat") and done.returncode == 0, done.stdout + done.stderr
    # The worker's threads come and go with dockerd's connections, late or early: threads
    # are judged against the worker's ceiling, fds by their growth.
    assert verdict["second_half"]["fd_growth"] <= 3, verdict
    assert verdict["end"]["threads"] <= verdict["thread_ceiling"], verdict
