"""Which firewall backend writes pynet's rules: ``PYNET_FIREWALL_BACKEND=auto|iptables|nftables``.

``auto`` follows dockerd: nftables where Docker 29 runs its nftables backend (there dockerd
writes no iptables rules and sets no FORWARD policy, so pynet's own table decides alone),
iptables everywhere else (there dockerd's FORWARD policy drops what no iptables rule accepts,
which an nftables accept cannot change). dockerd may restart with the other backend at any
time, so the choice is made again at every fresh apply (start, repairs) and by the periodic
check; a move writes the new backend's rules before it removes the old one's, so isolation
never lapses.
"""

import logging
import threading
from collections.abc import Callable

from plugin.errors import KernelError
from plugin.firewall.backend import Firewall
from plugin.firewall.rules import Desired

log = logging.getLogger(__name__)

CHOICES = ("auto", "iptables", "nftables")


class Selected:
    """The backend the setting names, as one ``Firewall``; every call goes to it."""

    def __init__(self, choice: str, backends: dict[str, Firewall],
                 dockerd_nftables: Callable[[], bool]) -> None:
        self.choice = choice
        self.backends = backends
        self._dockerd_nftables = dockerd_nftables
        self._lock = threading.Lock()
        self._current: Firewall | None = None

    @property
    def name(self) -> str:
        return (self._current or self._wanted()).name

    def _wanted(self) -> Firewall:
        if self.choice != "auto":
            return self.backends[self.choice]
        try:
            nftables = self._dockerd_nftables()
        except KernelError:
            nftables = False  # no libnftables here: dockerd cannot run nftables either
        return self.backends["nftables" if nftables else "iptables"]

    def _follow(self, desired: Callable[[], Desired]) -> bool:
        """Move to the wanted backend if it is not the current one; True if it moved."""
        with self._lock:
            wanted = self._wanted()
            if wanted is self._current:
                return False
            wanted.apply(desired, fresh=True)
            if self._current is not None:
                log.info("firewall: pynet's rules move from %s to %s (dockerd's firewall "
                         "changed)", self._current.name, wanted.name)
            self._current = wanted
            for other in self.backends.values():
                if other is not wanted:
                    self._clear(other)
            return True

    @staticmethod
    def _clear(backend: Firewall) -> None:
        """Remove another backend's rules (left by a run with the other choice)."""
        try:
            if backend.remove_all():
                log.info("firewall: removed pynet's %s rules", backend.name)
        except KernelError as exc:  # e.g. no iptables or libnftables on this host
            log.info("firewall: %s not cleared: %s", backend.name, exc)

    def apply(self, desired: Callable[[], Desired], fresh: bool = False,
              keep: bool = False) -> bool:
        """See ``Firewall.apply``; a fresh apply first follows dockerd's firewall."""
        moved = self._follow(desired) if fresh or self._current is None else False
        assert self._current is not None
        return self._current.apply(desired, fresh=fresh, keep=keep) or moved

    def repair_needed(self, desired: Callable[[], Desired]) -> str | None:
        """See ``Firewall.repair_needed``; a backend move is a repair."""
        wanted = self._wanted()
        if self._current is not None and wanted is not self._current:
            return f"pynet's rules must move from {self._current.name} to {wanted.name}"
        return wanted.repair_needed(desired)

    def remove_all(self) -> bool:
        """Remove every backend's rules; True if any were there."""
        removed = False
        for backend in self.backends.values():
            try:
                removed = backend.remove_all() or removed
            except KernelError as exc:
                if backend is self._wanted():
                    raise
                log.info("firewall: %s not cleared: %s", backend.name, exc)
        return removed

    def layout(self) -> str:
        """The backend pynet writes with, the setting, and dockerd's firewall."""
        backend = self._current or self._wanted()
        return (f"pynet writes {backend.name} (PYNET_FIREWALL_BACKEND={self.choice}); "
                f"dockerd: {backend.layout()}")
