"""The simulator's timeline plots (issue 10 item 17), read back through matplotlib's API."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402

from simulations.__main__ import SCENARIOS, main  # noqa: E402
from simulations.report import timeline_figure  # noqa: E402
from simulations.scenarios import partition  # noqa: E402


@pytest.fixture(scope="module")
def partitioned():
    result = partition(9, 4, 100, 1000, timeline=True)
    assert result.ok, result.violations
    return result


def vertical_lines(axes) -> list[float]:
    return [line.get_xdata()[0] for line in axes.get_lines() if len(set(line.get_xdata())) == 1]


def panel(figure, label: str):
    [axes] = [a for a in figure.axes if label in " ".join(a.get_ylabel().split())]
    return axes


def test_partition_and_heal_times_are_marked_on_every_panel(partitioned):
    marks = dict((what.split()[0], at) for at, what in partitioned.marks)
    assert {"partition", "heal", "converged"} <= set(marks)
    figure = timeline_figure(partitioned)
    assert len(figure.axes) == 3
    for axes in figure.axes:
        lines = vertical_lines(axes)
        assert marks["partition"] in lines and marks["heal"] in lines, (axes.get_ylabel(), lines)
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert any(label.startswith("partition") for label in labels) and any(label.startswith("heal") for label in labels)


def test_distinct_leaders_has_its_own_small_axis(partitioned):
    figure = timeline_figure(partitioned)
    leaders, workers = panel(figure, "distinct leaders"), panel(figure, "know a leader")
    assert max(row[2] for row in partitioned.timeline) == 2  # the split the old shared axis hid
    assert leaders.get_ylim()[1] <= 3 and workers.get_ylim()[1] >= partitioned.workers
    assert [line.get_label() for line in leaders.get_lines() if len(set(line.get_xdata())) > 1]  # its own line


def test_the_legend_covers_no_panel(partitioned):
    figure = timeline_figure(partitioned)
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    legend = figure.axes[0].get_legend().get_window_extent(renderer)
    for axes in figure.axes:
        assert not legend.overlaps(axes.get_window_extent(renderer)), axes.get_ylabel()


def test_the_plot_goes_past_convergence_and_ends_converged(partitioned):
    converged = max(at for at, what in partitioned.marks if what == "converged")
    last = partitioned.timeline[-1]
    assert last[0] > converged
    assert last[1:] == (partitioned.workers, 1, partitioned.workers)  # all know the one leader, full view
    figure = timeline_figure(partitioned)
    assert figure.axes[-1].get_xlim()[1] >= last[0]


def test_a_timeline_changes_no_figure():
    plain, sampled = partition(9, 4, 100, 1000), partition(9, 4, 100, 1000, timeline=True)
    assert plain.metrics == sampled.metrics and not plain.timeline


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_scenario_has_a_plot(name, tmp_path, capsys):
    path = tmp_path / f"{name}.png"
    workers = "8" if name == "swarm" else "5"
    assert main([name, "--workers", workers, "--seed", "2", "--plot", str(path), "--quiet"]) == 0
    assert path.stat().st_size > 10_000
    assert f"plot written to {path}" in capsys.readouterr().out
