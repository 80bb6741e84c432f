"""The guard that keeps libnftables' socket below select()'s limit (libnft.py), without
libnftables: a child process holds the descriptors, so pytest's own stay as they are."""

import subprocess
import sys
from pathlib import Path

from plugin.firewall.libnft import FD_HEADROOM, FD_SETSIZE

PROBE = """
import os, resource
from plugin.errors import KernelError
from plugin.firewall.libnft import FD_HEADROOM, FD_SETSIZE, _check_descriptor_room
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * FD_SETSIZE), hard))
def check(what):
    try:
        _check_descriptor_room()
        print(f"{what}: room")
    except KernelError as exc:
        print(f"{what}: {exc}")
check("few open")
held = [os.open(os.devnull, os.O_RDONLY)]
while held[-1] < FD_SETSIZE - FD_HEADROOM - 2:
    held.append(os.open(os.devnull, os.O_RDONLY))
check("just below the headroom")
held.append(os.open(os.devnull, os.O_RDONLY))
check("within the headroom")
resource.setrlimit(resource.RLIMIT_NOFILE, (held[-1] + 1, hard))
check("none free")
"""


def test_the_guard_refuses_within_the_headroom_and_with_no_descriptor_free() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=60, check=False, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    few, below, within, none = done.stdout.splitlines()
    assert few == "few open: room"
    assert below == "just below the headroom: room"
    assert within.startswith(
        f"within the headroom: libnftables' socket would get descriptor "
        f"{FD_SETSIZE - FD_HEADROOM} or near it, and it cannot wait on descriptors from "
        f"{FD_SETSIZE} up")
    assert none.startswith("none free: no file descriptor is free for libnftables' socket")
