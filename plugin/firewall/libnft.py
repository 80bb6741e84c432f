"""libnftables, called in-process through ctypes.

pynet talks to nftables through the library the ``nft`` tool is built on (Debian's
``libnftables1``): one batch of commands in ``nft -f`` syntax is one atomic kernel transaction,
and running it in-process saves the fork and exec of an ``nft`` per change (the README has
the measurement). ctypes releases the GIL during the call, so other requests go
on while the kernel works. pyroute2's nftables support (0.9) builds rules from raw netlink
expressions, which would make pynet re-implement what nft's parser already does; it serves
a question libnftables answers slowly (``tables``); the ruleset's generation, asked twice per
change, is one bare netlink request (``generation``).
"""

import ctypes
import json
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]
from pyroute2.nftables.main import NFTables as PyrouteNFTables  # type: ignore[import-untyped]

from plugin.errors import KernelError

_OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON in <nftables/libnftables.h>
_NETLINK_NETFILTER = 12  # <linux/netlink.h>
LIBRARY = "libnftables.so.1"
# <sys/select.h>: libnftables waits for its netlink socket with select(), and the C library
# aborts the whole process when that socket's descriptor number is this or more.
FD_SETSIZE = 1024
# Other threads (gunicorn's accepts, pyroute2's sockets) may open descriptors between the
# probe and libnftables' socket: a context is refused this close to FD_SETSIZE already.
FD_HEADROOM = 64


class Nft:
    """One libnftables context. Calls are serialised: a context is not thread-safe. It is
    made on first use, so a process that forks (gunicorn) or a test thread that entered a
    network namespace gets a socket of its own, in its own namespace."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lib: Any = None
        self._ctx: int | None = None

    def _context(self) -> tuple[Any, int]:
        if self._ctx is None:
            try:
                lib = ctypes.CDLL(LIBRARY)
            except OSError as exc:
                raise KernelError(f"the nftables firewall backend needs {LIBRARY} (Debian "
                                  f"package libnftables1): {exc}; install it or set "
                                  "PYNET_FIREWALL_BACKEND=iptables") from exc
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
                getattr(lib, name).argtypes = [ctypes.c_void_p]
            for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
                getattr(lib, name).argtypes = [ctypes.c_void_p]
                getattr(lib, name).restype = ctypes.c_char_p
            lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            _check_descriptor_room()
            ctx = lib.nft_ctx_new(0)
            if not ctx:
                raise KernelError("nft_ctx_new failed: out of memory?")
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            self._lib, self._ctx = lib, ctx
        return self._lib, self._ctx

    def run(self, commands: str, json_output: bool = False) -> str:
        """Run ``commands`` (nft syntax, one transaction); their output. Raises KernelError
        with nft's own message (it names the offending line) on failure."""
        with self._lock:
            lib, ctx = self._context()
            lib.nft_ctx_output_set_flags(ctx, _OUTPUT_JSON if json_output else 0)
            rc = lib.nft_run_cmd_from_buffer(ctx, commands.encode())
            output = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
            error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode()
        if rc != 0:
            first = commands.strip().splitlines()[0] if commands.strip() else ""
            raise KernelError(f"nft failed on a batch starting {first!r}: "
                              f"{error.strip() or f'exit {rc}'}")
        return output

    def table(self, family: str, name: str) -> list[dict[str, Any]] | None:
        """The JSON objects of table ``family name`` (chains, rules, sets), or None if it
        does not exist."""
        if name not in tables(family):
            return None
        try:
            listing = self.run(f"list table {family} {name}", json_output=True)
        except KernelError:
            if name not in tables(family):
                return None  # deleted meanwhile
            raise
        objects = json.loads(listing)
        return [item for item in objects.get("nftables", []) if "metainfo" not in item]


def _check_descriptor_room() -> None:
    """Refuse to make a context whose socket could get a descriptor select() cannot take.

    A context keeps the socket it opens for its lifetime, and pynet makes its context at
    start (the start-up reconcile reads or writes the table), when few descriptors are open;
    this turns the case where that did not happen (a process already holding a thousand
    connections) into an error instead of an abort of every call in flight. The lowest free
    number is what the socket gets if no other thread opens one first: a bound, hence the
    headroom. With no descriptor free at all, libnftables would exit the process."""
    try:
        probe = os.open(os.devnull, os.O_RDONLY)
    except OSError as exc:
        raise KernelError(f"no file descriptor is free for libnftables' socket ({exc}); "
                          "raise pynet's open-file limit or restart it") from exc
    os.close(probe)
    if probe >= FD_SETSIZE - FD_HEADROOM:
        raise KernelError(f"libnftables' socket would get descriptor {probe} or near it, and "
                          f"it cannot wait on descriptors from {FD_SETSIZE} up (the process "
                          "would abort); restart pynet so that it sets up nftables before it "
                          "serves, or set PYNET_FIREWALL_BACKEND=iptables")


# What a netlink request answers without libnftables, which loads a cache of the tables it
# touches first (every list of it, even of the table names, reads every rule and element):
# the table names, and the ruleset's generation, which every nftables transaction on the
# host (pynet's, dockerd's, iptables-nft's) advances.
_FAMILIES = {"inet": 1, "ip": 2, "ip6": 10}


def _netlink(request: Callable[[PyrouteNFTables], Any]) -> Any:
    try:
        sock = PyrouteNFTables(nfgen_family=0)  # NFPROTO_UNSPEC: every family
    except OSError as exc:
        raise KernelError(f"nftables netlink socket: {exc}") from exc
    try:
        return request(sock)
    except (OSError, NetlinkError) as exc:
        raise KernelError(f"nftables netlink request failed: {exc}") from exc
    finally:
        sock.close()


def tables(family: str) -> list[str]:
    """The names of the tables of ``family`` ("inet", "ip" or "ip6")."""
    number = _FAMILIES[family]
    return [t.get_attr("NFTA_TABLE_NAME") for t in _netlink(lambda s: s.get_tables())
            if t["nfgen_family"] == number]


# NFT_MSG_GETGEN (nftables subsystem 10, message 16) as a bare request, answered by
# NFT_MSG_NEWGEN (15): every change asks for the generation before and after it (NFTables._run),
# and building a pyroute2 socket for it would cost more than the rest of a small change's
# Python.
_GETGEN = (10 << 8) | 16
_NEWGEN = (10 << 8) | 15
_NLMSG_ERROR = 2
_NFTA_GEN_ID = 1


def generation() -> int:
    """The nftables ruleset's generation: unchanged means no table changed."""
    header = struct.Struct("=IHHII")  # struct nlmsghdr
    request = header.pack(header.size + 4, _GETGEN, 1, 1, 0) + bytes(4)  # NLM_F_REQUEST
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER) as sock:
            sock.settimeout(5)
            sock.send(request)
            reply = sock.recv(4096)
        length, kind, _flags, _seq, _pid = header.unpack_from(reply)
        if kind == _NLMSG_ERROR:
            code = -struct.unpack_from("=i", reply, header.size)[0]
            raise KernelError(f"nftables generation: {os.strerror(code)}")
        if kind != _NEWGEN:
            raise KernelError(f"nftables generation: the kernel answered message type {kind}")
        at, end = header.size + 4, min(length, len(reply))  # attributes follow struct nfgenmsg
        while at + 4 <= end:
            size, attribute = struct.unpack_from("=HH", reply, at)
            if size < 4:
                break
            if attribute & 0x3FFF == _NFTA_GEN_ID:
                return int(struct.unpack_from(">I", reply, at + 4)[0])
            at += (size + 3) & ~3
    except (OSError, struct.error) as exc:
        raise KernelError(f"nftables netlink request for the generation failed: {exc}") from exc
    raise KernelError("nftables generation: the kernel's answer has no NFTA_GEN_ID")
