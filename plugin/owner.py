"""One owner of an instance's kernel objects: the serving process.

``pynet serve`` holds an exclusive lock on ``<state dir>/owner.lock`` for as long as it runs;
a second ``serve`` of the same instance, and a ``reconcile`` or ``uninstall`` from the command
line, would otherwise work on the same bridges, veths and rules as the running server (a
reconcile could delete the veth a ``docker run`` is creating). They refuse instead, saying
why. The lock is the kernel's (flock): a killed server never leaves it held.
"""

import fcntl
import os
import socket
import time
from pathlib import Path

from plugin.config import Settings
from plugin.errors import PynetError


class Owned(PynetError):
    """Another process serves this instance."""


def claim(settings: Settings, what: str, wait: float = 0.0) -> int:
    """Take the instance's lock for ``what`` (kept until the process exits: the returned
    descriptor must stay open); refuse if a server holds it for ``wait`` seconds (a restarted
    server may find its predecessor's worker still exiting) or answers on the socket."""
    Path(settings.state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    path = os.path.join(settings.state_dir, "owner.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait
    while not _locked(fd):
        if time.monotonic() < deadline:
            time.sleep(0.05)
            continue
        os.close(fd)
        raise Owned(f"pynet serve is running for {settings.state_dir} (it holds {path}); "
                    f"{what} only while it is stopped: the server repairs the kernel every "
                    f"{settings.reconcile_interval:g}s itself (see its log)") from None
    if _answers(settings.socket_path):
        os.close(fd)
        raise Owned(f"another process serves {settings.socket_path}; stop it, or give this "
                    "instance another --name")
    os.ftruncate(fd, 0)
    os.write(fd, f"{time.time()}\n".encode())  # when this owner started (server_started)
    return fd


def server_started(settings: Settings) -> float | None:
    """When the running server started, or None if no server holds the instance."""
    path = os.path.join(settings.state_dir, "owner.lock")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None  # nobody holds it (a reader's shared lock goes with the close)
        except BlockingIOError:
            pass
        return float(os.read(fd, 64).decode().strip() or 0)
    finally:
        os.close(fd)


def _locked(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _answers(path: str) -> bool:
    """Whether something accepts connections on the Unix socket at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True
