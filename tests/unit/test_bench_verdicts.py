"""The benchmark's floor verdict: pynet against the floor remote driver, sample by sample."""

from lab.bench import BRIDGE
from lab.bench.verdicts import Figure, judge


def connect_figures(pynet: list[float], floor: list[float]) -> dict[str, Figure]:
    connect = Figure("connect", "network connect", "ms", "floor", 1.10, floor="connect_floor")
    below = Figure("connect_floor", "network connect, floor remote driver", "ms", "info")
    connect.samples = {BRIDGE: [50.0] * len(pynet), "pynet": pynet}
    below.samples = {BRIDGE: [], "pynet": floor}
    return {f.key: f for f in (connect, below)}


def test_pynet_near_the_floor_sample_by_sample_passes_though_the_medians_drift_apart() -> None:
    # The host slows down while the rounds go on; pynet's sample is 2 ms above the floor's
    # beside it but once, and the two medians are 20 ms apart.
    floor = [60.0, 61.0, 62.0, 90.0, 91.0]
    pynet = [f + 2.0 for f in floor[:2]] + [82.0, 92.0, 93.0]
    figs = connect_figures(pynet, floor)
    row = judge(figs["connect"], figs)
    assert row.pynet == 82.0 and row.verdict == "PASS"
    assert row.target == "≤ 1.10× or floor +3 ms (+2.0)"


def test_pynet_further_above_the_floor_than_the_margin_misses() -> None:
    floor = [60.0, 61.0, 62.0]
    figs = connect_figures([f + 3.5 for f in floor], floor)
    row = judge(figs["connect"], figs)
    assert row.verdict == "MISS" and row.target.endswith("(+3.5)")


def test_the_ratio_alone_passes_a_figure_far_above_the_floor() -> None:
    figs = connect_figures([54.0, 55.0], [20.0, 21.0])
    assert judge(figs["connect"], figs).verdict == "PASS"  # 1.09× of bridge's 50
