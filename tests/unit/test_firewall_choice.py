"""Which backend writes pynet's rules, and how a move between backends keeps isolation."""

from collections.abc import Callable

import pytest

from plugin.errors import KernelError
from plugin.firewall.choice import Selected, dockerd_runs_nftables
from plugin.firewall.rules import Desired

NOTHING = Desired([], [])


class Recording:
    """A backend stub that logs what is asked of it into a shared journal."""

    def __init__(self, name: str, journal: list[str], has_rules: bool = False,
                 broken: bool = False) -> None:
        self.name = name
        self.journal = journal
        self.has_rules = has_rules
        self.broken = broken

    def apply(self, desired: Callable[[], Desired], fresh: bool = False,
              keep: bool = False) -> bool:
        self.journal.append(f"{self.name} apply fresh={fresh}")
        self.has_rules = True
        return False

    def repair_needed(self, desired: Callable[[], Desired]) -> str | None:
        return None

    def remove_all(self) -> bool:
        self.journal.append(f"{self.name} remove")
        if self.broken:
            raise KernelError(f"{self.name} tools are missing")
        had, self.has_rules = self.has_rules, False
        return had

    def layout(self) -> str:
        return f"{self.name} layout"


def selected(choice: str, dockerd: list[bool], journal: list[str],
             **stub: bool) -> Selected:
    backends = {"iptables": Recording("iptables", journal, **stub),
                "nftables": Recording("nftables", journal)}
    return Selected(choice, backends, lambda: dockerd[0])  # type: ignore[arg-type]


def test_auto_follows_dockerd_and_writes_before_it_removes() -> None:
    journal: list[str] = []
    dockerd = [False]
    fw = selected("auto", dockerd, journal, has_rules=True)
    assert fw.repair_needed(lambda: NOTHING) is None  # a process that never wrote (dry run)
    fw.apply(lambda: NOTHING)
    assert fw.name == "iptables"
    assert journal == ["iptables apply fresh=True", "nftables remove", "iptables apply fresh=False"]
    journal.clear()
    fw.apply(lambda: NOTHING)  # not fresh: no look at dockerd, no move
    assert journal == ["iptables apply fresh=False"]
    dockerd[0] = True  # dockerd restarted with its nftables backend
    assert fw.repair_needed(lambda: NOTHING) == "pynet's rules must move from iptables to nftables"
    journal.clear()
    assert fw.apply(lambda: NOTHING, fresh=True)
    assert journal == ["nftables apply fresh=True", "iptables remove", "nftables apply fresh=True"]
    assert fw.name == "nftables"
    assert fw.repair_needed(lambda: NOTHING) is None


@pytest.mark.parametrize("choice", ["iptables", "nftables"])
def test_a_named_backend_ignores_dockerd(choice: str) -> None:
    journal: list[str] = []
    fw = selected(choice, [choice == "iptables"], journal)
    fw.apply(lambda: NOTHING)
    assert fw.name == choice
    assert fw.repair_needed(lambda: NOTHING) is None
    assert f"PYNET_FIREWALL_BACKEND={choice}" in fw.layout()


def test_auto_without_libnftables_is_iptables() -> None:
    def no_library() -> bool:
        raise KernelError("libnftables.so.1: cannot open shared object file")
    backends = {"iptables": Recording("iptables", []), "nftables": Recording("nftables", [])}
    fw = Selected("auto", backends, no_library)  # type: ignore[arg-type]
    assert fw.name == "iptables"


def test_uninstall_removes_both_and_tolerates_the_unused_ones_tools() -> None:
    journal: list[str] = []
    fw = selected("nftables", [True], journal, broken=True)
    fw.apply(lambda: NOTHING)
    assert fw.remove_all()
    assert "iptables remove" in journal and "nftables remove" in journal


class Failing(Recording):
    """A backend whose writes fail (no libnftables, say)."""

    def apply(self, desired: Callable[[], Desired], fresh: bool = False,
              keep: bool = False) -> bool:
        self.journal.append(f"{self.name} apply failed")
        raise KernelError(f"{self.name}: cannot write")


def test_a_failing_move_keeps_and_repairs_the_current_backend() -> None:
    journal: list[str] = []
    dockerd = [False]
    backends = {"iptables": Recording("iptables", journal),
                "nftables": Failing("nftables", journal)}
    fw = Selected("auto", backends, lambda: dockerd[0])  # type: ignore[arg-type]
    fw.apply(lambda: NOTHING)
    dockerd[0] = True
    journal.clear()
    assert fw.apply(lambda: NOTHING, fresh=True) is False
    assert journal == ["nftables apply failed", "iptables apply fresh=True"]
    assert fw.name == "iptables"
    assert fw.repair_needed(lambda: NOTHING) == \
        "pynet's rules must move from iptables to nftables"


def test_auto_falls_back_to_iptables_when_nftables_fails_at_start() -> None:
    journal: list[str] = []
    backends = {"iptables": Recording("iptables", journal),
                "nftables": Failing("nftables", journal)}
    fw = Selected("auto", backends, lambda: True)  # type: ignore[arg-type]
    fw.apply(lambda: NOTHING)
    assert fw.name == "iptables"
    named = Selected("nftables", backends, lambda: True)  # type: ignore[arg-type]
    with pytest.raises(KernelError):
        named.apply(lambda: NOTHING)


def test_dockerd_runs_nftables_only_without_its_iptables_jumps() -> None:
    """A dockerd restarted with iptables leaves its nftables table behind."""
    assert dockerd_runs_nftables(lambda: True, lambda: False)
    assert not dockerd_runs_nftables(lambda: True, lambda: True)
    assert not dockerd_runs_nftables(lambda: False, lambda: False)
