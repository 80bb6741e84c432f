"""The benchmark's figures, their statistics and verdicts, and its tables."""

import statistics
from dataclasses import dataclass, field

from lab.bench import BRIDGE


@dataclass
class Figure:
    """One row of the table: samples per driver and the rule that judges pynet against bridge.

    ``rule`` is one of: ``ratio`` (pynet/bridge medians at most ``limit``), ``equal`` (data
    plane: not worse than bridge beyond the noise of bridge's own samples), ``slope`` (growth:
    pynet's slope not above bridge's beyond two standard errors), ``absolute`` (pynet alone, at
    most ``limit``), ``floor`` (``ratio``, or pynet within FLOOR_MARGIN_MS of the figure
    ``floor`` names, whose samples were taken beside pynet's, one for one), ``info`` (shown,
    not judged).
    """

    key: str
    label: str
    unit: str
    rule: str
    limit: float = 0.0
    higher_is_better: bool = False
    floor: str = ""  # rule "floor": the figure of the floor remote driver it may be near
    samples: dict[str, list[float]] = field(default_factory=lambda: {BRIDGE: [], "pynet": []})
    points: dict[str, list[tuple[float, float]]] = field(
        default_factory=lambda: {BRIDGE: [], "pynet": []})

    def add(self, driver: str, value: float) -> None:
        self.samples[driver].append(value)

    def add_point(self, driver: str, x: float, y: float) -> None:
        self.points[driver].append((x, y))


def figures() -> dict[str, Figure]:
    """Every figure the benchmark reports, in table order."""
    rows = [
        Figure("net_create", "network create", "ms", "ratio", 0.6),
        Figure("net_rm", "network rm", "ms", "ratio", 0.6),
        # The floor remote driver's figures in the pynet column: dockerd's own share, the
        # floor for any remote driver (see FloorDriver).
        Figure("net_floor", "network create, floor remote driver", "ms", "info"),
        # Container run and network connect: at most the ratio, or within 3 ms of the floor
        # remote driver (a veth pair and nothing else), whose rows follow: what dockerd spends
        # on a remote driver's endpoint by itself.
        Figure("run", "container run (create+start)", "ms", "floor", 1.05, floor="run_floor"),
        Figure("run_floor", "container run, floor remote driver", "ms", "info"),
        Figure("rm", "container rm", "ms", "info"),
        Figure("connect", "network connect", "ms", "floor", 1.10, floor="connect_floor"),
        Figure("connect_floor", "network connect, floor remote driver", "ms", "info"),
        # The floor's answers from a Flask app in pynet's gunicorn setup: the share of the
        # HTTP stack pynet is built on (lab.bench.stackfloor).
        Figure("connect_stack", "network connect, floor on pynet's HTTP stack", "ms", "info"),
        Figure("disconnect", "network disconnect", "ms", "info"),
        Figure("ttp", "docker run until ping answers", "ms", "ratio", 1.05),
        Figure("ports", "run+rm with 2 published ports", "ms", "ratio", 1.0),
        Figure("slope_create", "growth: network create slope", "ms/net", "slope"),
        Figure("slope_run", "growth: container run slope", "ms/net", "slope"),
        Figure("tput_c2c", "TCP throughput container→container", "MB/s", "equal",
               higher_is_better=True),
        Figure("rtt_c2c", "ping RTT container→container", "µs", "equal"),
        Figure("tput_pub", "TCP throughput host→published port (host IP)", "MB/s", "equal",
               higher_is_better=True),
        Figure("rtt_pub", "TCP RTT host→published port (host IP)", "µs", "equal"),
        Figure("tput_lo", "TCP throughput host→published port (127.0.0.1)", "MB/s", "equal",
               higher_is_better=True),
        Figure("rtt_lo", "TCP RTT host→published port (127.0.0.1)", "µs", "equal"),
        Figure("rss", "pynet worker RSS after the run", "MiB", "absolute", 60.0),
        Figure("p50", "pynet handler latency p50", "ms", "info"),
        Figure("p99", "pynet handler latency p99", "ms", "absolute", 20.0),
    ]
    return {f.key: f for f in rows}


def slope(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Theil–Sen slope and a robust standard error (0 when there are too few points).

    The median of pairwise slopes, because a shared dockerd throws the odd multi-second
    outlier that would tilt a least-squares line; the error uses the residuals' MAD.
    """
    pairs = [(y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points)
             for x2, y2 in points[i + 1:] if x2 != x1]
    if not pairs:
        return float("nan"), 0.0
    b = statistics.median(pairs)
    mx = statistics.fmean(x for x, _ in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    resid = [y - b * x for x, y in points]
    centre = statistics.median(resid)
    sigma = 1.4826 * statistics.median(abs(r - centre) for r in resid)
    return b, sigma / sxx ** 0.5


def spread(values: list[float]) -> float:
    """Relative interquartile range: how much bridge disagrees with itself in this run."""
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    middle = statistics.median(values)
    return (q3 - q1) / middle if middle else 0.0


@dataclass
class Row:
    """A judged figure, as printed and as written to JSON."""

    key: str
    label: str
    unit: str
    bridge: float | None
    pynet: float | None
    ratio: float | None
    target: str
    verdict: str

    def cells(self) -> list[str]:
        def num(v: float | None) -> str:
            if v is None:
                return "—"
            return f"{v:.3f}" if abs(v) < 1 else f"{v:.1f}"
        return [f"{self.label} ({self.unit})", num(self.bridge), num(self.pynet),
                "—" if self.ratio is None else f"{self.ratio:.2f}×", self.target, self.verdict]


FLOOR_MARGIN_MS = 3.0


def judge(fig: Figure, figs: dict[str, Figure]) -> Row:
    """Medians, ratio and PASS/MISS for one figure (``figs``: the others, for floors)."""
    if fig.rule == "slope":
        (b, b_se), (p, p_se) = slope(fig.points[BRIDGE]), slope(fig.points["pynet"])
        allowed = 2 * (b_se ** 2 + p_se ** 2) ** 0.5
        ok = p <= b + allowed
        return Row(fig.key, fig.label, fig.unit, b, p, p / b if b else None,
                   f"≤ bridge +{allowed:.2f} (2σ)", "PASS" if ok else "MISS")
    mb = statistics.median(fig.samples[BRIDGE]) if fig.samples[BRIDGE] else None
    mp = statistics.median(fig.samples["pynet"]) if fig.samples["pynet"] else None
    if fig.rule == "absolute":
        ok = mp is not None and mp <= fig.limit
        return Row(fig.key, fig.label, fig.unit, None, mp, None, f"≤ {fig.limit:g} {fig.unit}",
                   "PASS" if ok else "MISS")
    ratio = mp / mb if mp is not None and mb else None
    if fig.rule == "info":
        return Row(fig.key, fig.label, fig.unit, mb, mp, ratio, "—", "info")
    if fig.rule == "ratio":
        ok = ratio is not None and ratio <= fig.limit
        return Row(fig.key, fig.label, fig.unit, mb, mp, ratio, f"≤ {fig.limit:.2f}×",
                   "PASS" if ok else "MISS")
    if fig.rule == "floor":
        # pynet's samples and the floor's were taken side by side (in the same slot or round):
        # the median of their differences, which drift between rounds does not move as it
        # moves two medians taken apart.
        above = statistics.median(p - f for p, f in zip(
            fig.samples["pynet"], figs[fig.floor].samples["pynet"], strict=True)) \
            if fig.samples["pynet"] else None
        ok = ratio is not None and ratio <= fig.limit or (
            above is not None and above <= FLOOR_MARGIN_MS)
        return Row(fig.key, fig.label, fig.unit, mb, mp, ratio,
                   f"≤ {fig.limit:.2f}× or floor +{FLOOR_MARGIN_MS:g} ms"
                   + (f" ({above:+.1f})" if above is not None else ""),
                   "PASS" if ok else "MISS")
    noise = max(0.05, spread(fig.samples[BRIDGE]))
    if fig.higher_is_better:
        ok = ratio is not None and ratio >= 1 - noise
        target = f"1.00× (≥ {1 - noise:.2f}×)"
    else:
        ok = ratio is not None and ratio <= 1 + noise
        target = f"1.00× (≤ {1 + noise:.2f}×)"
    return Row(fig.key, fig.label, fig.unit, mb, mp, ratio, target, "PASS" if ok else "MISS")


def table(rows: list[Row]) -> str:
    """A Markdown table, so the README can carry it as printed."""
    head = ["figure", "bridge", "pynet", "pynet/bridge", "target", "result"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)



def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank: a p99 that is a real observed call)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def method_table(calls: dict[str, list[float]]) -> str:
    """Per-method p50/p99/max, for finding which handler is slow."""
    lines = ["| pynet call | n | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
    for method, values in sorted(calls.items(), key=lambda kv: -percentile(kv[1], 99)):
        lines.append(f"| {method} | {len(values)} | {percentile(values, 50):.1f} | "
                     f"{percentile(values, 99):.1f} | {max(values):.1f} |")
    return "\n".join(lines)
