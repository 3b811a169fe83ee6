"""The queue depth chart: sampled depths laid out as inline SVG coordinates (no script needed)."""

from __future__ import annotations

from dataclasses import dataclass

WIDTH = 800
"""Default width of the chart's SVG viewBox, in SVG units (about its width on a desktop, so
its text keeps its size; a narrow screen gets a second, narrower layout)."""
HEIGHT = 220
"""Default height of the chart's SVG viewBox, in SVG units."""
_LEFT, _RIGHT, _TOP, _BOTTOM = 44, 12, 12, 26
SERIES_CLASSES = 8
"""How many distinct series styles the stylesheet defines (``.s0`` .. ``.s7``); more repeat."""


@dataclass(frozen=True)
class Series:
    """One queue's line: its name, style index, SVG ``points`` and the dots of its samples."""

    name: str
    style: int
    points: str
    dots: list[tuple[float, float]]
    last: int
    peak: int


@dataclass(frozen=True)
class Tick:
    """An axis label at SVG position ``at`` (x for the time axis, y for the depth axis)."""

    at: float
    label: str


@dataclass(frozen=True)
class Chart:
    """Everything the template needs to draw the chart; empty ``series`` means no samples yet."""

    series: list[Series]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    left: float
    right: float
    top: float
    bottom: float
    width: int
    height: int


def _nice_ceiling(value: int) -> int:
    """Return the smallest of 1, 2, 5 x 10^n that is at least ``value`` (at least 4)."""
    value = max(value, 4)
    scale = 1
    while True:
        for step in (1, 2, 5):
            if step * scale >= value:
                return step * scale
        scale *= 10


def depth_chart(
    times: list[int],
    depths: dict[str, list[int]],
    *,
    now: int,
    window_ms: int,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> Chart:
    """Lay out depth samples over the window ending at ``now``.

    Args:
        times: Sample times, epoch ms, oldest first (as ``TaskService.depth_history`` returns).
        depths: Per queue, its depth at each of ``times``.
        now: The right edge of the chart, epoch ms.
        window_ms: The span of the chart, ms (the left edge is ``now - window_ms``).
        width: The viewBox width, SVG units.
        height: The viewBox height, SVG units.

    Returns:
        The chart: one :class:`Series` per queue (by name), time ticks every quarter of the
        window, and depth ticks at 0, half and the top of a rounded scale (1, 2 or 5 x 10^n,
        at least 4).
    """
    left, right = float(_LEFT), float(width - _RIGHT)
    top, bottom = float(_TOP), float(height - _BOTTOM)
    start = now - window_ms
    peak = max((max(values) for values in depths.values() if values), default=0)
    scale = _nice_ceiling(peak)

    def x(at: int) -> float:
        return round(left + (right - left) * max(0, at - start) / window_ms, 1)

    def y(depth: float) -> float:
        return round(bottom - (bottom - top) * depth / scale, 1)

    series = []
    for style, (name, values) in enumerate(depths.items()):
        coordinates = [(x(at), y(depth)) for at, depth in zip(times, values, strict=True)]
        series.append(
            Series(
                name=name,
                style=style % SERIES_CLASSES,
                points=" ".join(f"{px},{py}" for px, py in coordinates),
                # Dots only while they are few: with a sample a minute a line says it better.
                dots=coordinates if len(coordinates) <= 30 else [],
                last=values[-1] if values else 0,
                peak=max(values, default=0),
            )
        )
    minutes = window_ms // 60_000
    x_ticks = [
        Tick(x(start + window_ms * quarter // 4), f"-{minutes - minutes * quarter // 4} min")
        for quarter in range(4)
    ]
    x_ticks.append(Tick(right, "now"))
    y_ticks = [Tick(y(value), f"{value:g}") for value in (0, scale / 2, scale)]
    return Chart(series, x_ticks, y_ticks, left, right, top, bottom, width, height)
