"""The narrow interface between pynet's decisions and a firewall backend.

The driver and the reconciler hand a backend what the records ask for (``Desired``: network
and port specs, from ``rules.desired_from_records``) and never see rules: how those become
rules, where they are hooked and how they are written is the backend's (``iptables.IPTables``
for every Docker engine's iptables layout, ``nftables.NFTables`` for a table of pynet's own,
``choice.Selected`` for the one the settings pick; a stub stands in for unit tests). A backend is
given a function rather than a value because it may need to read the records again: a write
that raced with dockerd is retried, and must not write what the records said before.
"""

from collections.abc import Callable
from typing import Protocol

from plugin.firewall.rules import Desired


class Firewall(Protocol):
    """A firewall backend."""

    @property
    def name(self) -> str:
        """For the log ("repair <name>: ...") and ``pynet status``."""
        ...

    @property
    def ipv6(self) -> bool:
        """Whether the backend writes IPv6 rules on this host (else ``--ipv6`` is refused)."""
        ...

    def apply(self, desired: Callable[[], Desired], fresh: bool = False,
              keep: bool = False) -> bool:
        """Make the kernel match ``desired()``; True if anything changed. ``fresh``: read
        the kernel instead of trusting what the backend last wrote. ``keep``: only add."""
        ...

    def repair_needed(self, desired: Callable[[], Desired]) -> str | None:
        """What a fresh read says must change (a description), or None."""
        ...

    def remove_all(self) -> bool:
        """Remove everything the backend put in the kernel; True if anything was there."""
        ...

    def layout(self) -> str:
        """Which firewall layout of dockerd's the backend found (for ``pynet status``)."""
        ...
