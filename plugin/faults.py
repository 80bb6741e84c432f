"""Crash injection for the crash-consistency tests: die at a named point inside a handler.

Only active when ``PYNET_CRASH_FILE`` names a file; the file holds the point's name and is
removed before the kill, so the restarted plugin does not crash again on dockerd's retry.
"""

import os
import signal

_ENV = "PYNET_CRASH_FILE"


def checkpoint(name: str) -> None:
    """SIGKILL the whole plugin (gunicorn master and this worker) if the test armed ``name``."""
    path = os.environ.get(_ENV)
    if not path:
        return
    try:
        with open(path) as handle:
            armed = handle.read().strip()
    except FileNotFoundError:
        return
    if armed != name:
        return
    os.unlink(path)
    os.killpg(os.getpgid(0), signal.SIGKILL)
