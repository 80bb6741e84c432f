"""When the periodic check may skip dumping every link and address (reconcile.Looks)."""

from dataclasses import dataclass, field, replace
from typing import cast

from plugin import reconcile
from plugin.netlink import LinkEvents
from plugin.reconcile import FULL_LOOK_SECONDS, Looks
from plugin.store import DELETING, EndpointRecord, NetworkRecord
from tests.unit.test_reconcile_decisions import endpoint


class Events:
    """LinkEvents as the check sees it: whether anything happened since it last asked."""

    def __init__(self) -> None:
        self.pending = False

    def changed(self) -> bool:
        seen, self.pending = self.pending, False
        return seen

    def close(self) -> None:
        """Nothing to release."""


@dataclass
class Records:
    """The store as Looks reads it."""

    networks_: tuple[NetworkRecord, ...] = ()
    endpoints_: list[EndpointRecord] = field(default_factory=list)

    def networks(self) -> tuple[NetworkRecord, ...]:
        return self.networks_

    def endpoints(self) -> list[EndpointRecord]:
        return list(self.endpoints_)  # a new list each time, as the store's


@dataclass
class Driver:
    """The driver as Looks reads it: its records and its epoch."""

    store: Records = field(default_factory=Records)
    epoch: int = 0


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def setup() -> tuple[Looks, Events, Driver, Clock]:
    events, clock = Events(), Clock()
    looks = Looks(cast(LinkEvents, events), clock=clock)
    return looks, events, Driver(store=Records(endpoints_=[endpoint(in_container=True)])), clock


def look(looks: Looks, driver: Driver, clean: bool = True) -> bool:
    """One pass's decision; a look made is finished as ``clean`` says. True if it looked."""
    seen = looks.start(cast(reconcile.Repairable, driver))
    if seen is not None:
        looks.finished(seen, clean)
    return seen is not None


def test_the_first_pass_looks_and_a_clean_look_is_not_repeated_while_nothing_changes() -> None:
    looks, _, driver, clock = setup()
    assert look(looks, driver)
    clock.now += 5
    assert not look(looks, driver)
    clock.now += 5
    assert not look(looks, driver)


def test_a_link_or_address_event_makes_the_next_pass_look() -> None:
    looks, events, driver, _ = setup()
    look(looks, driver)
    events.pending = True
    assert look(looks, driver)
    assert not look(looks, driver)


def test_a_look_that_found_something_or_was_not_quiet_is_repeated() -> None:
    looks, _, driver, _ = setup()
    look(looks, driver, clean=False)
    assert look(looks, driver)
    assert not look(looks, driver)


def test_a_call_makes_the_next_pass_look() -> None:
    looks, _, driver, _ = setup()
    look(looks, driver)
    driver.epoch += 2
    assert look(looks, driver)


def test_changed_records_make_the_next_pass_look() -> None:
    looks, _, driver, _ = setup()
    look(looks, driver)
    driver.store.networks_ = (cast(NetworkRecord, object()),)
    assert look(looks, driver)
    assert not look(looks, driver)
    driver.store.endpoints_ = [replace(driver.store.endpoints_[0], state=DELETING)]
    assert look(looks, driver)


def test_an_endpoint_whose_container_end_may_still_be_on_the_host_is_looked_at_each_pass() -> None:
    """Time alone turns it dead (PEER_GRACE_SECONDS), which no event announces."""
    looks, _, driver, _ = setup()
    driver.store.endpoints_ = [endpoint(in_container=False)]
    look(looks, driver)
    assert look(looks, driver)


def test_a_full_look_comes_at_least_every_full_look_interval() -> None:
    looks, _, driver, clock = setup()
    look(looks, driver)
    clock.now += FULL_LOOK_SECONDS - 1
    assert not look(looks, driver)
    clock.now += 1
    assert look(looks, driver)


def test_without_an_events_socket_every_pass_looks() -> None:
    looks = Looks(None)
    driver = Driver(store=Records(endpoints_=[endpoint(in_container=True)]))
    assert look(looks, driver)
    assert look(looks, driver)
