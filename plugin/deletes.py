"""Deferred deletes: answered once recorded, finished by a reaper thread.

dockerd waits for DeleteNetwork, DeleteEndpoint and RevokeExternalConnectivity, and the kernel
is slow to unregister a link and to apply an nft batch that deletes rules; none of that need
sit on ``docker rm`` or ``docker network rm``. So a delete only marks its record
``deleting`` (and frees host ports at once: the next ``docker run`` may want them), and the
reaper removes rules, links and records after the answer.

Concurrency contract:

* Marking. Calls mark under the driver lock. A delete that cannot get that lock in time
  (``Driver.defer_delete``) marks without it: ``Store.mark_deleting`` is one atomic update, and
  the store never takes a record out of ``deleting``, so a call holding the lock cannot undo it
  by writing back the record it read before.
* Finishing. ``reap`` runs under the reap lock only, never the driver lock: from the reaper
  thread when woken, from the periodic reconcile pass, and from calls that could collide with
  an unfinished delete (CreateNetwork: the same bridge name or subnet; CreateEndpoint: an
  address whose port rules are still in place), which hold the driver lock and then take the
  reap lock. The reaper never takes the driver lock, so the two are always taken in that
  order. Every teardown step is idempotent: a reconcile or a rollback doing the same at the
  same time is harmless.
* Unpublished addresses. Calls record them (with a serial number per unpublish) under the
  driver lock; ``reap`` forgets one only if it was not unpublished again since the reap
  started. Conntrack flushes queue on a thread-safe queue and run last.
"""

import ipaddress
import itertools
import logging
import queue
import threading
from typing import Protocol

from plugin.store import DELETING, EndpointRecord, NetworkRecord, Store

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

log = logging.getLogger(__name__)


class Teardown(Protocol):
    """What finishing a delete needs from the driver."""

    store: Store

    def sync_firewall(self, fresh: bool = False, keep: bool = False) -> bool: ...

    def teardown_endpoint(self, record: EndpointRecord) -> None: ...

    def teardown_network(self, record: NetworkRecord, rules_gone: bool = False) -> None: ...

    def flush_conntrack(self, address: Address) -> None: ...


class Deletes:
    """The marks and the reaper of one driver (see the module docstring)."""

    def __init__(self, owner: Teardown) -> None:
        self._owner = owner
        self._wake = threading.Event()
        self.reap_lock = threading.Lock()  # held while deletes are finished (module doc)
        self._unflushed: queue.SimpleQueue[Address] = queue.SimpleQueue()
        # Container addresses whose port rules the reaper has not removed yet, each with the
        # serial number of its last unpublish (a tiny lock: calls and the reaper both write).
        self._unpublished: dict[str, int] = {}
        self._unpublished_lock = threading.Lock()
        self._serial = itertools.count()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the reaper thread (a daemon: a clean stop reaps in the foreground)."""
        self._thread = threading.Thread(target=self._reaper, name="reaper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the reaper thread and wait for it: the caller is about to close the database
        and sockets it reads (a query on a closed sqlite connection can crash the process)."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def wake(self) -> None:
        """Something was marked: let the reaper finish it."""
        self._wake.set()

    def unpublished(self, addresses: list[str], flush: bool = False) -> None:
        """The ports of the endpoint at ``addresses`` (its IPv4 and IPv6 one) were released;
        ``flush`` also drops the addresses' conntrack entries once the rules are gone."""
        with self._unpublished_lock:
            for address in addresses:
                self._unpublished[address] = next(self._serial)
        if flush:
            for address in addresses:
                self._unflushed.put(ipaddress.ip_interface(address).ip)
        self._wake.set()

    def rules_pending(self, address: str) -> bool:
        """Whether port rules of an earlier endpoint at ``address`` may still be in place."""
        return address in self._unpublished

    def _reaper(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                self.reap()
            except Exception:
                log.exception("finishing deletes failed; the next reconcile retries")

    def reap(self) -> None:
        """Finish answered deletes: rules first (one batch), then links, then records."""
        owner = self._owner
        with self.reap_lock:
            with self._unpublished_lock:
                unpublished = dict(self._unpublished)
            endpoints = [e for e in owner.store.endpoints() if e.state == DELETING]
            networks = [n for n in owner.store.networks() if n.state == DELETING]
            owner.sync_firewall()
            with self._unpublished_lock:
                for address, serial in unpublished.items():
                    if self._unpublished.get(address) == serial:  # not unpublished again
                        del self._unpublished[address]
            for endpoint in endpoints:
                owner.teardown_endpoint(endpoint)
            for network in networks:
                owner.teardown_network(network, rules_gone=True)
            while not self._unflushed.empty():
                owner.flush_conntrack(self._unflushed.get())
