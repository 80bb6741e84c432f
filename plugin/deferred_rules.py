"""A new network's firewall rules, written after CreateNetwork has answered.

A network's rules matter from its first endpoint on: before that its bridge has no port, and
the only address on it is the host's gateway, which the rules leave alone. Writing them (an
``iptables-restore`` or an nft transaction) would be most of CreateNetwork, so the call answers
once the bridge is built and owes the rules: the HTTP layer starts writing them on the side
thread once the answer is out (``start``), and CreateEndpoint waits for that write, or does it
itself if it was never started or failed (``settle``), before any veth reaches the bridge. A
crash in between loses nothing: the reconcile at start writes every recorded network's rules.

Writes only add (``Driver.sync_firewall(keep=True)``) and read the records when they run, so
one write covers every network created before it started; the side thread runs one at a time.
"""

import logging
import threading
from collections.abc import Callable
from concurrent import futures

from plugin.errors import KernelTimeout
from plugin.faults import checkpoint

log = logging.getLogger(__name__)


class DeferredRules:
    """What is owed and what is being written (see the module docstring)."""

    def __init__(self, write: Callable[[], object], side: futures.Executor) -> None:
        self._write = write
        self._side = side
        self._lock = threading.Lock()
        self._owed = False  # a network was created and no write has started since
        self._pending: futures.Future[object] | None = None
        self._settling = 0  # settles waiting for a write or writing
        # Write at the next settle even if nothing is owed: a write failed, or none has
        # succeeded since this process started (the start-up reconcile's may have failed).
        # Unlike what is owed, this is no reason for the periodic check to look away.
        self._retry = True

    def owe(self) -> None:
        """A network's rules are not written yet (CreateNetwork, before it answers)."""
        with self._lock:
            self._owed = True

    def start(self) -> None:
        """Begin writing what is owed on the side thread (the HTTP layer, after an answer).
        Once the driver is closed nothing starts, and what is owed stays owed."""
        with self._lock:
            if not self._owed:
                return
            try:
                self._pending = self._side.submit(self._written)
            except RuntimeError:  # the executor is shut down: the process is stopping
                return
            self._owed = False

    def _written(self) -> object:
        checkpoint("create_network.answered")
        return self._write()

    def busy(self) -> bool:
        """Whether rules are owed or being written: a look at the firewall meanwhile would
        find them missing (a write that failed is not busy: what it left undone is damage)."""
        with self._lock:
            return self._owed or self._settling > 0 \
                or self._pending is not None and not self._pending.done()

    def settle(self) -> None:
        """Return once every owed rule is in the kernel: wait for the write in flight, and
        write here what was never started, or failed. Raises the error of a write that failed
        (a tool that timed out is not run again: the call fails within one timeout); the next
        settle tries again."""
        with self._lock:
            pending, self._pending = self._pending, None
            write = self._owed or self._retry
            self._owed = False
            self._settling += 1
        try:
            if pending is not None:
                try:
                    pending.result()
                except KernelTimeout:
                    raise
                except Exception as exc:
                    log.warning("writing new networks' rules after their answer failed (%s); "
                                "writing them now", exc)
                    write = True
            if write:
                self._write()
        except Exception:
            with self._lock:
                self._retry = True
            raise
        else:
            with self._lock:
                self._retry = False
        finally:
            with self._lock:
                self._settling -= 1
