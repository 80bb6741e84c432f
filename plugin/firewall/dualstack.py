"""iptables and ip6tables as one firewall backend.

Docker's bridge driver writes both (ip6tables is on by default since Docker 27), and pynet's
IPv6 rules are the twins of its IPv4 ones (``rules.render`` with ``family=6``), in chains of
the same names hooked at the same places. Each family is its own ``IPTables``: its own save,
restore and remembered picture, because the two are separate tables in the kernel and one
restore cannot write both. A host without IPv6 (``ipv6.disable=1``) or without ip6tables has
no IPv6 half; the driver then refuses ``--ipv6`` networks.
"""

import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from plugin.firewall.iptables import IPTables
from plugin.firewall.rules import Chains, Desired

log = logging.getLogger(__name__)


def host_has_ipv6(backend: str) -> bool:
    """Whether the kernel has IPv6 and the host has ip6tables for ``backend`` (nft, legacy)."""
    return Path("/proc/sys/net/ipv6").is_dir() and \
        shutil.which(f"ip6tables-{backend}-restore") is not None


class DualStack:
    """``IPTables`` for IPv4 and, where the host has IPv6, for IPv6: every call goes to both
    (one ``plugin.firewall.backend.Firewall``). A change writes both families at once, each
    restore in its own process, so a call waits for the slower of the two, not their sum."""

    name = "iptables"

    def __init__(self, chains: Chains) -> None:
        self.v4 = IPTables(chains)
        self.v6 = IPTables(chains, self.v4.backend, family=6) \
            if host_has_ipv6(self.v4.backend) else None

    @property
    def ipv6(self) -> bool:
        return self.v6 is not None

    def _families(self) -> list[IPTables]:
        return [self.v4] if self.v6 is None else [self.v4, self.v6]

    def apply(self, desired: Callable[[], Desired], fresh: bool = False,
              keep: bool = False) -> bool:
        """See ``Firewall.apply``. IPv6 is written by a thread of its own, made for the call:
        it inherits the caller's network namespace (tests run drivers in throwaway ones)."""
        v6_family = self.v6
        if v6_family is None:
            return self.v4.apply(desired, fresh=fresh, keep=keep)
        outcome: list[bool | BaseException] = []

        def write_v6() -> None:
            try:
                outcome.append(v6_family.apply(desired, fresh=fresh, keep=keep))
            except BaseException as exc:  # handed to the caller below
                outcome.append(exc)
        writer = threading.Thread(target=write_v6, name="ip6tables")
        writer.start()
        try:
            v4 = self.v4.apply(desired, fresh=fresh, keep=keep)
        except BaseException:
            writer.join()
            if isinstance(outcome[0], BaseException):
                log.error("ip6tables failed too: %s", outcome[0])
            raise
        writer.join()
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0] or v4

    def repair_needed(self, desired: Callable[[], Desired]) -> str | None:
        """See ``Firewall.repair_needed``; IPv6's problem says it is ip6tables'."""
        problems = [problem if family is self.v4 else f"{family.name}: {problem}"
                    for family in self._families()
                    if (problem := family.repair_needed(desired)) is not None]
        return "; ".join(problems) or None

    def remove_all(self) -> bool:
        """Remove pynet's chains from both families; True if any were there."""
        removed = [family.remove_all() for family in self._families()]
        return any(removed)

    def layout(self) -> str:
        """dockerd's iptables layout (its ip6tables layout follows it)."""
        return self.v4.layout()

    def dockerd_chains(self) -> bool:
        """See ``IPTables.dockerd_chains`` (IPv4: dockerd writes ip6tables only beside it)."""
        return self.v4.dockerd_chains()
