"""DeferredRules' decisions, with a counting write and a real single-worker executor."""

from concurrent import futures

import pytest

from plugin.deferred_rules import DeferredRules
from plugin.errors import KernelError, KernelTimeout


class Writes:
    """Counts writes; ``fail`` is raised by the next ones until cleared."""

    def __init__(self) -> None:
        self.count = 0
        self.fail: Exception | None = None

    def __call__(self) -> None:
        self.count += 1
        if self.fail is not None:
            raise self.fail


@pytest.fixture
def side() -> futures.ThreadPoolExecutor:
    executor = futures.ThreadPoolExecutor(max_workers=1)
    yield executor
    executor.shutdown(wait=True)


def test_the_first_settle_writes_even_with_nothing_owed_then_only_what_is_owed(
        side: futures.ThreadPoolExecutor) -> None:
    writes = Writes()
    due = DeferredRules(writes, side)
    due.settle()  # the start-up reconcile's write may have failed: nothing is taken on trust
    due.settle()
    assert writes.count == 1
    due.owe()
    assert due.busy()
    due.start()
    due.settle()
    assert writes.count == 2 and not due.busy()


@pytest.mark.parametrize("failure,writes_by_then", [
    # a tool that timed out is not run again in the same call: it fails within one timeout
    (KernelTimeout("iptables-nft-restore timed out after 5s"), 2),
    # any other failure after the answer is retried at settle (which fails here too)
    (KernelError("iptables-nft-restore exited 1"), 3),
])
def test_a_failed_write_fails_the_call_and_the_next_settle_writes(
        side: futures.ThreadPoolExecutor, failure: KernelError, writes_by_then: int) -> None:
    writes = Writes()
    due = DeferredRules(writes, side)
    due.settle()
    writes.fail = failure
    due.owe()
    due.start()
    with pytest.raises(type(failure)):
        due.settle()
    assert writes.count == writes_by_then
    assert not due.busy(), "a failed write is damage for the periodic check to repair"
    writes.fail = None
    due.settle()
    assert writes.count == writes_by_then + 1


def test_nothing_starts_once_the_executor_is_shut_down(
        side: futures.ThreadPoolExecutor) -> None:
    writes = Writes()
    due = DeferredRules(writes, side)
    side.shutdown(wait=True)
    due.owe()
    due.start()
    assert due.busy(), "still owed"
    due.settle()  # written here instead
    assert writes.count == 1 and not due.busy()


def test_a_write_that_a_settle_runs_is_busy_until_it_is_done(
        side: futures.ThreadPoolExecutor) -> None:
    """CreateEndpoint's settle may write what was owed itself: meanwhile a look at the
    firewall would find the rules missing, as during a write on the side thread."""
    seen: list[bool] = []
    due = DeferredRules(lambda: seen.append(due.busy()), side)
    due.owe()
    due.settle()
    assert seen == [True] and not due.busy()
