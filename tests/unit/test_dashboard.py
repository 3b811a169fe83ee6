"""The dashboard's pure helpers: the depth chart layout (positions, scale, ticks) and the JSON shown
on a task page, with no I/O."""

from __future__ import annotations

from taskplatform.dashboard.chart import depth_chart
from taskplatform.dashboard.routes import _pretty

HOUR = 3_600_000


def test_samples_are_placed_by_time_and_depth() -> None:
    now = 1_800_000_000_000
    chart = depth_chart(
        [now - HOUR, now - HOUR // 2, now],
        {"default": [0, 0, 0], "emails": [0, 7, 3]},
        now=now,
        window_ms=HOUR,
        width=400,
        height=200,
    )
    default, emails = chart.series
    assert (default.name, default.style, default.peak, default.last) == ("default", 0, 0, 0)
    assert (emails.name, emails.style, emails.peak, emails.last) == ("emails", 1, 7, 3)
    xs = [x for x, _ in emails.dots]
    assert xs[0] == chart.left
    assert xs[2] == chart.right
    assert abs(xs[1] - (chart.left + chart.right) / 2) < 0.1
    ys = [y for _, y in emails.dots]
    assert ys[0] == chart.bottom  # depth 0 on the axis
    assert chart.top < ys[1] < ys[2] < chart.bottom  # 7 above 3
    assert [tick.label for tick in chart.y_ticks] == ["0", "5", "10"]  # 7 rounds up to 10
    assert [tick.label for tick in chart.x_ticks] == [
        "-60 min",
        "-45 min",
        "-30 min",
        "-15 min",
        "now",
    ]
    assert emails.points.count(",") == 3


def test_no_samples_is_an_empty_chart_and_many_samples_need_no_dots() -> None:
    now = 1_800_000_000_000
    assert depth_chart([], {}, now=now, window_ms=HOUR).series == []
    times = [now - HOUR + minute * 60_000 for minute in range(60)]
    chart = depth_chart(times, {"default": list(range(60))}, now=now, window_ms=HOUR)
    assert chart.series[0].dots == []
    assert chart.y_ticks[-1].label == "100"


def test_a_result_nested_beyond_the_stack_is_shown_as_text() -> None:
    """A callback may answer JSON nested deeper than Python's json can indent: shown as it came."""
    deep = b"[" * 5000 + b"]" * 5000
    assert _pretty(deep) == deep.decode()
    assert _pretty(b'{"a": [1]}') == '{\n  "a": [\n    1\n  ]\n}'
