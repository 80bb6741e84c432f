"""libnftables, called in-process through ctypes.

pynet talks to nftables through the library the ``nft`` tool is built on (Debian's
``libnftables1``): one batch of commands in ``nft -f`` syntax is one atomic kernel transaction,
and running it in-process saves the fork and exec of an ``nft`` per change (``scripts/bench.py``
and the README compare the two). ctypes releases the GIL during the call, so other requests go
on while the kernel works. pyroute2's nftables support (0.9) builds rules from raw netlink
expressions, which would make pynet re-implement what nft's parser already does.
"""

import ctypes
import json
import threading
from typing import Any

from plugin.errors import KernelError

_OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON in <nftables/libnftables.h>
LIBRARY = "libnftables.so.1"


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

    def tables(self, family: str) -> list[str]:
        """The names of the tables of ``family``."""
        listing = self.run(f"list tables {family}", json_output=True)
        return [item["table"]["name"] for item in json.loads(listing or "{}")
                .get("nftables", []) if "table" in item]

    def table(self, family: str, name: str) -> list[dict[str, Any]] | None:
        """The JSON objects of table ``family name`` (chains, rules, sets), or None if it
        does not exist."""
        if name not in self.tables(family):
            return None
        objects = json.loads(self.run(f"list table {family} {name}", json_output=True))
        return [item for item in objects.get("nftables", []) if "metainfo" not in item]


def available() -> bool:
    """Whether libnftables can be loaded here."""
    try:
        ctypes.CDLL(LIBRARY)
    except OSError:
        return False
    return True
