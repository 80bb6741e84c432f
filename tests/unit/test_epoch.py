"""The driver's epoch under concurrent updates (calls under the lock, deferred deletes without)."""

import sys
import threading

from plugin.driver import Epoch


def test_concurrent_advances_are_never_lost() -> None:
    """A lost update would leave the epoch odd for good, and periodic repairs would stop."""
    epoch = Epoch()
    rounds, threads = 20_000, 4
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible

    def call() -> None:
        for _ in range(rounds):
            epoch.advance(1)
            epoch.advance(1)

    def deferred_delete() -> None:
        for _ in range(rounds):
            epoch.advance(2)
    try:
        workers = [threading.Thread(target=call if i % 2 else deferred_delete)
                   for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        sys.setswitchinterval(interval)
    assert epoch.value == 2 * rounds * threads
