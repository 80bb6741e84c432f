"""Network namespaces for the calling thread: an existing one, or a throwaway one.

``setns(2)`` moves only the calling thread, and everything the tests care about follows it: a
socket or netlink socket opened afterwards, ``/proc/sys/net`` opened afterwards, and child
processes (iptables) forked from it. So an in-process Driver can do real kernel work - even
when a fuzzed request turns out valid - without touching the host, and one test process can
probe from every container's namespace in parallel.
"""

import ctypes
import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def in_netns(path: str | None) -> Iterator[None]:
    """Run the body on this thread inside the network namespace at ``path`` (None: the host)."""
    if path is None:
        yield
        return
    with open("/proc/thread-self/ns/net") as home, open(path) as target:
        _setns(target.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())


@contextmanager
def thread_in_netns(prefix: str = "pnk") -> Iterator[str]:
    """This thread in a new namespace (loopback up) until the block ends; yields its name."""
    name = f"{prefix}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        _setns(home)
        os.close(home)
        subprocess.run(["ip", "netns", "del", name], check=True)
