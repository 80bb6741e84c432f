"""Soak, at the kernel level: pynet's netlink socket must not pile up unread messages.

scripts/soak.py saw the worker's RSS grow ~35 KiB per container cycle (fds and threads flat).
The cause: pyroute2 0.9 asks for an ACK on ``link('get')`` (so on every ``Netlink.get``), stops
reading at the reply, and the ACK lands in the socket's catch-all queue (tag 0), which nothing
reads - one message per call, for the life of the socket. netlink.py now reopens the socket
every REOPEN_AFTER_CALLS calls; this pins down that the pile stays bounded, deterministically
rather than by RSS.
"""

from collections.abc import Iterator

import pytest

from lab.netns import thread_in_netns
from plugin.netlink import Netlink


@pytest.fixture
def nl() -> Iterator[Netlink]:
    with thread_in_netns("pnl"):
        netlink = Netlink()
        netlink.ensure_bridge("pnlbr0", alias="pynet:growth:1")
        yield netlink
        netlink.close()


def unread(netlink: Netlink) -> int:
    """Messages pyroute2 received for no pending request (its internal catch-all queue)."""
    return netlink._ipr.asyncore.msg_queue.queues[0].qsize()


def test_unread_netlink_messages_stay_bounded(nl: Netlink) -> None:
    peak = 0
    for _ in range(3 * Netlink.REOPEN_AFTER_CALLS):  # each get is at least one request
        nl.get("pnlbr0")
        peak = max(peak, unread(nl))
    assert peak <= Netlink.REOPEN_AFTER_CALLS + 1, f"{peak} unread netlink messages piled up"
    nl.ensure_veth("pnlh0", "pnlc0", "pnlbr0", 0, "02:42:0a:e7:fa:02", "pynet:growth:2",
                   hairpin=True)
    assert nl.delete("pnlh0"), "the socket must still work after being reopened"
