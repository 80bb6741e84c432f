"""Least privilege for ``pynet serve``: keep only the capabilities its work needs.

dockerd starts a managed plugin with Docker's default capabilities plus config.json's
(CAP_NET_ADMIN), and a socket plugin started by root holds them all. Before serving, pynet
drops every other capability from its bounding set (so the iptables tools it runs get no more)
and from its own sets, and sets no_new_privs (so no program it runs can gain any back).

Kept, each for a reason:
* CAP_NET_ADMIN: netlink (bridges, veths, addresses, conntrack) and iptables;
* CAP_NET_RAW: iptables-legacy talks to the kernel through a raw socket;
* CAP_NET_BIND_SERVICE: a published host port below 1024 is reserved by binding it.
"""

import ctypes
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

CAPS = {"CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13}
KEEP = frozenset(CAPS.values())
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def drop_privileges(keep: frozenset[int] = KEEP) -> None:
    """Bounding set, then no_new_privs, then effective/permitted/inheritable sets to ``keep``.
    The bounding set goes first: dropping from it needs CAP_SETPCAP, which is not kept."""
    libc = ctypes.CDLL(None, use_errno=True)
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):
        if cap not in keep:
            _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"dropping capability {cap}")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "setting no_new_privs")
    mask = sum(1 << cap for cap in keep)
    data = (_Data * 2)(_Data(mask & 0xFFFFFFFF, mask & 0xFFFFFFFF, 0),
                       _Data(mask >> 32, mask >> 32, 0))
    _check(libc.capset(ctypes.byref(_Header(_LINUX_CAPABILITY_VERSION_3, 0)), data),
           "setting capabilities")
    log.info("running with %s only", ", ".join(sorted(CAPS)))

