"""Tables and plots of scenario results."""

from __future__ import annotations

from .common import ScenarioResult


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


def plot_timeline(result: ScenarioResult, path: str) -> None:
    """Leader agreement and the smallest membership view over simulated time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not result.timeline:
        raise ValueError(f"scenario {result.scenario} records no timeline to plot")
    times = [t for t, *_ in result.timeline]
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 5))
    top.step(times, [row[1] for row in result.timeline], where="post", label="workers that know a leader")
    top.step(times, [row[2] for row in result.timeline], where="post", label="distinct leaders")
    top.set_ylabel("workers")
    top.legend(loc="lower right")
    bottom.step(times, [row[3] for row in result.timeline], where="post", color="tab:red")
    bottom.set_ylabel("smallest live view")
    bottom.set_xlabel("simulated seconds")
    figure.suptitle(f"{result.scenario}, {result.workers} workers, seed {result.seed}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
