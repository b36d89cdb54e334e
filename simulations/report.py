"""Tables and plots of scenario results."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .common import ScenarioResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def summary_table(results: list[ScenarioResult]) -> str:
    """One row per figure: p50, p99, max and how many runs produced it."""
    names = list(dict.fromkeys(name for r in results for name in r.metrics))
    rows = [f"{'figure':<28} {'p50':>10} {'p99':>10} {'max':>10} {'runs':>8}"]
    for name in names:
        values = [r.metrics[name] for r in results if r.metrics.get(name) is not None]
        missing = sum(1 for r in results if r.metrics.get(name) is None)
        if not values:
            rows.append(f"{name:<28} {'-':>10} {'-':>10} {'-':>10} {'0/' + str(len(results)):>8}")
            continue
        rows.append(
            f"{name:<28} {percentile(values, 0.5):>10.3f} {percentile(values, 0.99):>10.3f} "
            f"{max(values):>10.3f} {f'{len(values)}/{len(results)}':>8}" + (f"  ({missing} never)" if missing else "")
        )
    violations = sum(len(r.violations) for r in results)
    rows.append(f"{'invariant violations':<28} {violations:>10}")
    return "\n".join(rows)


MARK_STYLES = ("--", ":", "-.")


def timeline_figure(result: ScenarioResult) -> Figure:
    """Leaders and membership over simulated time, with the scenario's marks.

    Three stacked panels share the time axis, each with its own y axis: workers that
    know a leader (0..N), distinct leaders (small integers, so a split into two is
    visible), and the smallest live view (0..N). Each mark (fault, heal, convergence)
    is a vertical line through every panel; the legend naming them sits outside the
    panels, so it covers no line. The x axis ends at the last sample, which ``finish``
    takes ``PLOT_TAIL`` seconds after the scenario stops (converged, when it waits for
    that), so the final state is visible.
    Raises ValueError when the result has no timeline (run it with ``timeline=True``).
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not result.timeline:
        raise ValueError(f"scenario {result.scenario} recorded no timeline: run it with timeline=True")
    times = [row[0] for row in result.timeline]
    figure = Figure(figsize=(10, 6.5))
    known, leaders, smallest = figure.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2, 3]})
    known.step(times, [row[1] for row in result.timeline], where="post", color="tab:blue")
    known.set_ylabel("workers that\nknow a leader")
    known.set_ylim(-0.5, result.workers + 0.5)
    leaders.step(times, [row[2] for row in result.timeline], where="post", color="tab:orange")
    leaders.set_ylabel("distinct\nleaders")
    leaders.set_ylim(-0.25, max(2, max(row[2] for row in result.timeline)) + 0.25)
    leaders.yaxis.set_major_locator(MaxNLocator(integer=True))
    smallest.step(times, [row[3] for row in result.timeline], where="post", color="tab:red")
    smallest.set_ylabel("smallest\nlive view")
    smallest.set_ylim(-0.5, result.workers + 0.5)
    smallest.set_xlabel("simulated seconds")
    smallest.set_xlim(times[0], times[-1] + 0.02 * max(times[-1] - times[0], 1e-9))
    for index, (at, what) in enumerate(result.marks):
        style = {"color": f"C{(index + 2) % 10}", "linestyle": MARK_STYLES[index % len(MARK_STYLES)], "linewidth": 1.2}
        for axes in (known, leaders, smallest):
            axes.axvline(at, **style, label=f"{what} ({at:.2f} s)" if axes is known else None)
    if result.marks:
        known.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    figure.suptitle(f"{result.scenario}, {result.workers} workers, seed {result.seed}")
    figure.tight_layout()
    return figure


def plot_timeline(result: ScenarioResult, path: str) -> None:
    """Write :func:`timeline_figure` of ``result`` as a PNG to ``path``."""
    timeline_figure(result).savefig(path, dpi=100, bbox_inches="tight")
