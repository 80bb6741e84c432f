"""Kernel parameters, written as files under a configurable ``/proc/sys`` root.

The managed plugin sees ``/proc/sys`` read-only and gets the host's ``net`` tree bind-mounted
writable elsewhere, hence the root is a setting rather than a constant. Keys are given in path
form (``net/ipv6/conf/<ifname>/accept_ra``) because interface names may contain dots.
"""

import os
from pathlib import Path

from plugin.errors import KernelError


class Sysctl:
    """Reads and writes keys under ``root``."""

    def __init__(self, root: str = "/proc/sys") -> None:
        self.root = Path(root)

    def read(self, key: str) -> str | None:
        """The current value, or None where the key does not exist on this kernel."""
        try:
            return (self.root / key).read_text().strip()
        except FileNotFoundError:
            return None

    def ensure(self, key: str, value: str) -> None:
        """Write ``value`` unless it is already there (so a read-only tree is fine when set)."""
        if self.read(key) == value:
            return
        try:
            (self.root / key).write_text(value)
        except OSError as exc:
            raise KernelError(
                f"cannot set {key}={value} under {self.root}: {os.strerror(exc.errno or 0)}; "
                "pynet needs a writable sysctl tree (set PYNET_SYSCTL_ROOT)"
            ) from exc
