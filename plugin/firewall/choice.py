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


def dockerd_runs_nftables(bridge_table: Callable[[], bool],
                          iptables_jumps: Callable[[], bool]) -> bool:
    """Whether dockerd runs its nftables backend: its bridge table is there and its iptables
    jumps are not (an engine restarted with iptables leaves the table behind, and its
    FORWARD DROP policy then needs pynet's iptables accepts)."""
    return bridge_table() and not iptables_jumps()


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

    @property
    def ipv6(self) -> bool:
        """With ``auto``, only where both backends write IPv6: a move must not leave IPv6
        networks open."""
        if self.choice != "auto":
            return self.backends[self.choice].ipv6
        return all(backend.ipv6 for backend in self.backends.values())

    def _wanted(self) -> Firewall:
        if self.choice != "auto":
            return self.backends[self.choice]
        try:
            nftables = self._dockerd_nftables()
        except KernelError:
            nftables = False  # nftables' netlink unusable here: dockerd cannot use it either
        return self.backends["nftables" if nftables else "iptables"]

    def _follow(self, desired: Callable[[], Desired]) -> bool:
        """Move to the wanted backend if it is not the current one; True if it moved (the
        caller holds the lock). A move that fails leaves the current backend in charge (the
        caller then repairs it); with none yet, ``auto`` falls back to iptables."""
        wanted = self._wanted()
        if wanted is self._current:
            return False
        try:
            wanted.apply(desired, fresh=True)
        except KernelError as exc:
            if self._current is not None:
                log.warning("firewall: cannot move pynet's rules to %s (%s); %s keeps "
                            "them", wanted.name, exc, self._current.name)
                return False
            fallback = self.backends["iptables"]
            if self.choice != "auto" or wanted is fallback:
                raise
            log.warning("firewall: %s failed (%s); writing iptables instead", wanted.name, exc)
            wanted = fallback
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
        # One lock for moves and writes: a write must not go to a backend a move is
        # clearing (each backend serialises its writes anyway).
        with self._lock:
            moved = self._follow(desired) if fresh or self._current is None else False
            assert self._current is not None
            return self._current.apply(desired, fresh=fresh, keep=keep) or moved

    def repair_needed(self, desired: Callable[[], Desired]) -> str | None:
        """See ``Firewall.repair_needed``; a backend move is a repair."""
        wanted, current = self._wanted(), self._current
        if current is None:
            return wanted.repair_needed(desired)
        problem = current.repair_needed(desired)
        if wanted is not current:
            move = f"pynet's rules must move from {current.name} to {wanted.name}"
            return move if problem is None else f"{move}; {problem}"
        return problem

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
