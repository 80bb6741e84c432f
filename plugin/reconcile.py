"""Bring the kernel back in line with the records: at start, periodically, or on demand.

The plan is computed first as a list of described actions, so ``pynet reconcile --dry-run`` can
print exactly what a real run would do, and the log says what was repaired. Only objects pynet
owns are touched: links carrying this instance's alias, and this instance's chains.
"""

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from plugin.netlink import Interface, Link, LinkEvents, Netlink
from plugin.store import DELETING, READY, EndpointRecord, NetworkRecord, Store

log = logging.getLogger(__name__)

# An endpoint's container end sits in the host namespace between CreateEndpoint and the moment
# dockerd moves it into the container; only after this long does it mean "container gone".
PEER_GRACE_SECONDS = 60.0
# The periodic check looks at every link and address at least this often, even when nothing
# seemed to change: a safety net for whatever the skip's conditions (Looks) did not foresee.
FULL_LOOK_SECONDS = 60.0


class Repairable(Protocol):
    """What reconciling needs of the driver: its records and links to read, and the repairs
    it already knows how to make (plugin.driver.Driver is one)."""

    store: Store
    netlink: Netlink

    @property
    def epoch(self) -> int: ...

    def locked(self) -> AbstractContextManager[None]: ...

    def reap(self) -> None: ...

    def teardown_endpoint(self, record: EndpointRecord) -> None: ...

    def teardown_network(self, record: NetworkRecord, rules_gone: bool = False) -> None: ...

    def rebuild_network(self, record: NetworkRecord) -> None: ...

    def owner_of(self, alias: str) -> str | None: ...

    def firewall_repair(self) -> str | None: ...

    def sync_firewall(self, fresh: bool = False, keep: bool = False) -> bool: ...

    def hold_ports(self) -> None: ...

    def ipv6_off_everywhere(self) -> None: ...


@dataclass
class Action:
    """One repair: what it fixes, and how."""

    description: str
    run: Callable[[], object]


def plan(driver: Repairable) -> list[Action]:
    """Every repair the kernel needs to match the records, in a safe order.

    It runs every few seconds, so it reads the kernel in a fixed number of dumps (links,
    addresses, rules), however many networks there are.
    """
    return _link_actions(driver, deletes=True) + _firewall_actions(driver)


def _link_actions(driver: Repairable, deletes: bool,
                  links: dict[str, Link] | None = None) -> list[Action]:
    """Repairs of links, addresses and records; with ``deletes`` False, records marked for
    deletion are left to the reaper, which is already on them. ``links``: a dump already
    made, else one is made."""
    store, netlink = driver.store, driver.netlink
    if links is None:
        links = _links(driver)
    addresses = netlink.all_addresses()
    actions: list[Action] = []
    endpoints = store.endpoints()
    networks = store.networks()
    endpoints_of: dict[str, list[EndpointRecord]] = {}
    for e in endpoints:
        endpoints_of.setdefault(e.network_id, []).append(e)
    for e in endpoints:
        if e.state == DELETING and not deletes:
            continue
        reason = _dead_endpoint(e, links)
        if reason:
            actions.append(Action(f"remove endpoint {e.id[:12]}: {reason}",
                                  _bind(driver.teardown_endpoint, e)))
    for n in networks:
        if n.state == DELETING and not deletes:
            continue
        if n.state != READY:
            actions.append(Action(f"remove network {n.id[:12]} ({n.bridge}): a call was "
                                  f"interrupted while {n.state}",
                                  _bind(driver.teardown_network, n)))
            continue
        problem = _network_problem(n, links, addresses, endpoints_of.get(n.id, []))
        if problem:
            actions.append(Action(f"restore network {n.id[:12]}: {problem}",
                                  _bind(driver.rebuild_network, n)))
    live = {e.id for e in endpoints} | {n.id for n in networks}
    for link in links.values():
        owner = driver.owner_of(link.alias)
        if owner is not None and owner not in live:
            actions.append(Action(f"delete {link.kind or 'link'} {link.name}: left by "
                                  f"{owner[:12]}, which pynet no longer has",
                                  _bind(netlink.delete, link.name)))
    return actions


def _dead_endpoint(e: EndpointRecord, links: dict[str, Link]) -> str | None:
    if e.state != READY:
        return f"a call was interrupted while {e.state}"
    if e.host_veth not in links:
        return f"its veth {e.host_veth} is gone (container stopped or host rebooted)"
    if e.peer_veth in links and (e.in_container or time.time() - e.created > PEER_GRACE_SECONDS):
        return (f"its container end {e.peer_veth} is back on the host (the container stopped "
                "while pynet could not be told)")
    return None


def _links(driver: Repairable) -> dict[str, Link]:
    return {link.name: link for link in driver.netlink.links()}


def note_in_container(driver: Repairable, links: dict[str, Link] | None = None) -> int:
    """Mark endpoints whose container end has left the host namespace; return how many.

    Without this, a container end found on the host is ambiguous for PEER_GRACE_SECONDS: not
    yet moved in, or moved back out because the container stopped while pynet was down.
    """
    names = links if links is not None else _links(driver)
    marked = 0
    for e in driver.store.endpoints():
        if (e.state == READY and not e.in_container and e.host_veth in names
                and e.peer_veth not in names):
            driver.store.mark_in_container(e.id)
            marked += 1
    return marked


def _network_problem(n: NetworkRecord, links: dict[str, Link],
                     addresses: dict[int, set[Interface]],
                     endpoints: list[EndpointRecord]) -> str | None:
    link = links.get(n.bridge)
    if link is None:
        return f"bridge {n.bridge} is missing"
    if not link.up:
        return f"bridge {n.bridge} is down"
    config = n.config
    for gateway in config.bridge_addresses():
        if gateway not in addresses.get(link.index, set()):
            return f"bridge {n.bridge} lacks its address {gateway}"
    for e in endpoints:
        veth = links.get(e.host_veth)
        if veth is not None and veth.master != link.index:
            return f"veth {e.host_veth} is not on the bridge"
        if veth is not None and config.mtu and veth.mtu != config.mtu:
            return f"veth {e.host_veth} has MTU {veth.mtu}, not {config.mtu}"
    return None


def _firewall_actions(driver: Repairable) -> list[Action]:
    repair = driver.firewall_repair()
    if repair is None:
        return []
    return [Action(f"repair {repair}",
                   _bind(driver.sync_firewall, True))]


def _bind(func: Callable[..., object], *args: object) -> Callable[[], object]:
    return lambda: func(*args)


def run(driver: Repairable, dry_run: bool = False) -> list[str]:
    """Plan and (unless ``dry_run``) apply; one line per action: ``would ...`` for a plan,
    ``did: ...`` or ``failed to ...: <error>`` for what was applied."""
    if not dry_run:
        note_in_container(driver)
    actions = plan(driver)
    if dry_run:
        return [f"would {a.description}" for a in actions]
    return [f"did: {a.description}" if error is None else f"failed to {a.description}: {error}"
            for a, error in zip(actions, _execute(actions), strict=True)]


def _execute(actions: list[Action]) -> list[str | None]:
    """Run each action; per action None, or the error that stopped it (logged too)."""
    errors: list[str | None] = []
    for action in actions:
        try:
            action.run()
            log.info("reconcile: %s", action.description)
            errors.append(None)
        except Exception as exc:
            log.exception("reconcile: failed to %s", action.description)
            errors.append(str(exc) or type(exc).__name__)
    return errors


def _applied(actions: list[Action]) -> list[str]:
    """Run ``actions``; the descriptions of those that succeeded."""
    return [a.description for a, error in zip(actions, _execute(actions), strict=True)
            if error is None]


@dataclass(frozen=True)
class _Seen:
    """What a look at the links started from: the driver's epoch, the records, and when
    (on the Looks' clock)."""

    epoch: int
    networks: tuple[NetworkRecord, ...]
    endpoints: list[EndpointRecord]
    at: float


class Looks:
    """Whether the periodic check must dump every link and address again.

    The dumps cost in proportion to the links on the host (with a thousand bridges, a large
    part of a CPU's second per pass), and nearly always find nothing. What they check can
    change in four ways: the kernel's links and addresses (``LinkEvents`` hears of every
    change), the records (the networks' tuple is the same object until one changes; the
    endpoints are compared), a call (the epoch), or time alone (an endpoint whose container
    end is still on the host turns dead when its grace period ends). A look is skipped only
    when none of these moved since the last one, and that look was quiet (no call ran) and
    found nothing; and never for longer than FULL_LOOK_SECONDS.
    """

    def __init__(self, events: LinkEvents | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._events = events  # None: no socket could be made; every pass looks
        self._clock = clock
        self._clean: _Seen | None = None  # the last look, if it was quiet and found nothing

    def start(self, driver: Repairable) -> _Seen | None:
        """Before a look: what it starts from, or None if it can be skipped. Taken before
        the dumps, so whatever changes during them makes the next pass look again."""
        changed = self._events is None or self._events.changed()
        seen = _Seen(driver.epoch, driver.store.networks(), driver.store.endpoints(),
                     self._clock())
        last = self._clean
        if (last is None or changed or seen.epoch != last.epoch
                or seen.networks is not last.networks or seen.endpoints != last.endpoints
                or seen.at - last.at >= FULL_LOOK_SECONDS
                or any(e.state == READY and not e.in_container for e in seen.endpoints)):
            self._clean = None
            return seen
        return None

    def finished(self, seen: _Seen, clean: bool) -> None:
        """After a look from ``seen``: ``clean`` if it was quiet and found nothing."""
        self._clean = seen if clean else None

    def close(self) -> None:
        """Release the events socket."""
        if self._events is not None:
            self._events.close()


def periodic(driver: Repairable, looks: Looks) -> list[str]:
    """One periodic pass: finish answered deletes, look without the lock (unless ``looks``
    says nothing changed since a clean look), repair what a quiet look found.

    Looking takes a few dumps (tens of milliseconds with hundreds of networks) and nearly
    always finds nothing; holding the driver's lock for it would stall every call meanwhile.
    But from outside, a call in progress looks like damage (a record without its bridge or
    rules yet), so a difference counts only if no call ran while looking (the driver's
    epoch); the next pass looks again. Links are then planned again under the lock. Rules
    need no driver lock: a firewall write always converges on the records, under the
    firewall's own lock.
    """
    driver.reap()  # also retries what it failed at before
    done: list[str] = []
    seen = looks.start(driver)
    if seen is not None:
        links = _links(driver)  # one dump serves both looks (each decodes every link)
        note_in_container(driver, links)
        found = _link_actions(driver, deletes=False, links=links)
        quiet = _quiet(driver, seen.epoch)
        if found and quiet:
            with driver.locked():
                done += _applied(_link_actions(driver, deletes=False))
        looks.finished(seen, clean=quiet and not found)
    epoch = driver.epoch
    rules = _firewall_actions(driver)
    if rules and _quiet(driver, epoch):
        done += _applied(rules)
    return done


def _quiet(driver: Repairable, since: int) -> bool:
    """No call was running at ``since`` and none ran after it."""
    return since % 2 == 0 and driver.epoch == since


def restore(driver: Repairable) -> list[str]:
    """Start-up: repair everything, then re-take the port reservations of live endpoints."""
    done = run(driver)
    driver.ipv6_off_everywhere()
    driver.hold_ports()
    return done
