"""Charts as inline SVG, drawn in Python: they render offline, with no script and no fetch.

Every chart is an ``<svg class="chart" data-chart=ID data-marks=N>``; each of
its N data marks (a bar, a line, a point) carries ``class="mark"`` and a
``<title>`` (the browser's tooltip). The report's page script and its tests
count them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Final

__all__ = ["PALETTE", "Chart", "hbar_chart", "line_chart", "nice_ticks"]

#: Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
PALETTE: Final = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#D55E00",
    "#CC79A7",
    "#56B4E9",
    "#F0E442",
    "#000000",
)

_FONT = 12  # px, label text
#: Whiskers may widen a bar chart's axis to this many times its longest bar.
CLIP_FACTOR = 2.5
_CHAR_W = 6.8  # px, rough width of one label character at _FONT
_PAD = 10


@dataclass(frozen=True, slots=True)
class Chart:
    """An SVG chart and the number of data marks it draws."""

    svg: str
    marks: int


def _attr(value: str) -> str:
    return escape(value, quote=True)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering ``[low, high]`` (steps of 1, 2 or 5 times a power of ten)."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0]
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def _whisker(a: float, b: float, y: float, cut: tuple[bool, bool]) -> str:
    """An interval from x=a to x=b at height y: caps at its ends, arrow heads where cut."""
    left = (
        f"M{a + 5:.1f},{y - 3:.1f}L{a:.1f},{y:.1f}L{a + 5:.1f},{y + 3:.1f}"
        if cut[0]
        else f"M{a:.1f},{y - 3:.1f}v6"
    )
    right = (
        f"M{b - 5:.1f},{y - 3:.1f}L{b:.1f},{y:.1f}L{b - 5:.1f},{y + 3:.1f}"
        if cut[1]
        else f"M{b:.1f},{y - 3:.1f}v6"
    )
    return f'<path class="whisker" d="{left}M{a:.1f},{y:.1f}H{b:.1f}{right}"/>'


def _tick_formatter(ticks: Sequence[float]) -> Callable[[float], str]:
    """Labels with as many decimals as the tick step needs (and no ``-0``)."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0

    def label(value: float) -> str:
        text = f"{value:,.{decimals}f}"
        return text[1:] if text.startswith("-") and float(value) == 0 else text

    return label


def _legend(series: Sequence[str], x: float, y: float) -> tuple[str, float]:
    """Legend items in one wrapped row from (x, y); returns the SVG and its height."""
    parts = []
    cx, cy = x, y
    for index, name in enumerate(series):
        width = 18 + len(name) * _CHAR_W + 14
        if cx + width > 880 and cx > x:
            cx, cy = x, cy + 18
        color = PALETTE[index % len(PALETTE)]
        parts.append(
            f'<rect class="legend" x="{cx:.1f}" y="{cy:.1f}" width="12" height="12" '
            f'fill="{color}"/><text x="{cx + 16:.1f}" y="{cy + 10:.1f}">{escape(name)}</text>'
        )
        cx += width
    return "".join(parts), cy - y + 18


def hbar_chart(
    chart_id: str,
    title: str,
    rows: Sequence[str],
    series: Sequence[str],
    values: Mapping[tuple[str, str], float],
    *,
    value_format: Callable[[float], str],
    axis_label: str,
    intervals: Mapping[tuple[str, str], tuple[float, float]] | None = None,
    stacked: bool = False,
    domain: tuple[float, float] | None = None,
    tick_format: Callable[[float], str] | None = None,
    width: int = 900,
) -> Chart:
    """Horizontal bars: one group per row, one bar per series (or one stacked bar per row).

    ``values`` maps (row, series) to a number; a missing key draws no bar (a
    zero draws a zero-length bar, except in a stack). ``intervals`` adds
    whiskers (e.g. 95% confidence intervals). Negative values extend left of 0.
    """
    bar_h = 14 if stacked or len(series) == 1 else 11
    group_h = bar_h * (1 if stacked else len(series)) + 10
    # Labels up to ~45 characters ("resistance + pharmacotherapy (n=9, small)") fit whole.
    label_w = min(340.0, max(60.0, max((len(r) for r in rows), default=4) * _CHAR_W + 14))
    value_w = 70.0
    plot_x = label_w
    plot_w = width - label_w - value_w - _PAD
    top = 28.0
    legend_svg, legend_h = ("", 0.0)
    if len(series) > 1:
        legend_svg, legend_h = _legend(series, plot_x, top)
    top += legend_h + 6
    plot_h = max(group_h * len(rows), 20)

    if stacked:
        totals = [sum(values.get((r, s), 0.0) for s in series) for r in rows]
        extent = [0.0, *totals]
    else:
        extent = [0.0, *values.values()]
        # Whiskers widen the axis up to CLIP_FACTOR times the largest bar; a wider
        # one is cut at the edge (drawn with an arrow head), so one tiny arm's
        # interval cannot flatten every other bar.
        reach = CLIP_FACTOR * max((abs(v) for v in values.values()), default=0.0)
        for low, high in (intervals or {}).values():
            extent.extend((max(low, -reach), min(high, reach)) if reach else (low, high))
    if domain is not None:
        lo, hi = domain
    else:
        lo, hi = min(extent), max(extent)
        # Room for the value labels beside the longest bars, on either side of 0.
        room = 0.14 * ((hi - lo) or 1.0)
        lo, hi = (lo - room if lo < 0 else lo), (hi + room if hi > 0 or lo >= 0 else hi)
    ticks = nice_ticks(lo, hi)
    lo, hi = min(lo, ticks[0]), max(hi, ticks[-1])
    span = hi - lo or 1.0
    tick_label = tick_format if tick_format is not None else _tick_formatter(ticks)

    def sx(value: float) -> float:
        return plot_x + (value - lo) / span * plot_w

    out = [
        f'<text class="title" x="{_PAD}" y="18">{escape(title)}</text>',
        legend_svg,
    ]
    axis_y = top + plot_h + 4
    for tick in ticks:
        x = sx(tick)
        out.append(
            f'<line class="grid" x1="{x:.1f}" y1="{top - 4:.1f}" x2="{x:.1f}" y2="{axis_y:.1f}"/>'
            f'<text class="tick" x="{x:.1f}" y="{axis_y + 14:.1f}" text-anchor="middle">'
            f"{escape(tick_label(tick))}</text>"
        )
    zero = sx(0.0)
    out.append(
        f'<line class="axis" x1="{zero:.1f}" y1="{top - 4:.1f}" x2="{zero:.1f}" y2="{axis_y:.1f}"/>'
    )
    marks = 0
    for row_index, row in enumerate(rows):
        gy = top + row_index * group_h
        out.append(
            f'<text class="label" x="{plot_x - 6:.1f}" y="{gy + group_h / 2 + 1:.1f}" '
            f'text-anchor="end" dominant-baseline="middle">{escape(row)}</text>'
        )
        cursor = 0.0
        for s_index, name in enumerate(series):
            key = (row, name)
            if key not in values:
                continue
            value = values[key]
            color = PALETTE[s_index % len(PALETTE)]
            if stacked:
                if value <= 0:
                    continue
                x0, x1, y = sx(cursor), sx(cursor + value), gy + 5
                cursor += value
            else:
                x0, x1 = sorted((sx(0.0), sx(value)))
                y = gy + 5 + s_index * bar_h
            label = (
                f"{row} · {name}: {value_format(value)}"
                if len(series) > 1
                else (f"{row}: {value_format(value)}")
            )
            out.append(
                f'<rect class="mark" data-row="{_attr(row)}" data-series="{_attr(name)}" '
                f'x="{x0:.1f}" y="{y:.1f}" width="{x1 - x0:.1f}" height="{bar_h - 2}" '
                f'fill="{color}"><title>{escape(label)}</title></rect>'
            )
            marks += 1
            interval = (intervals or {}).get(key)
            if interval is not None and not stacked:
                cut = (interval[0] < lo, interval[1] > hi)
                interval = (max(interval[0], lo), min(interval[1], hi))
                wy = y + (bar_h - 2) / 2
                out.append(_whisker(sx(interval[0]), sx(interval[1]), wy, cut))
            if not stacked:
                end = max(x1, sx(interval[1]) if interval is not None else x1)
                if value < 0:
                    text_x, anchor = min(x0, sx(interval[0]) if interval else x0) - 4, "end"
                else:
                    text_x, anchor = end + 4, "start"
                out.append(
                    f'<text class="value" x="{text_x:.1f}" y="{y + bar_h / 2:.1f}" '
                    f'text-anchor="{anchor}" dominant-baseline="middle">'
                    f"{escape(value_format(value))}</text>"
                )
        if stacked and cursor > 0:
            out.append(
                f'<text class="value" x="{sx(cursor) + 4:.1f}" y="{gy + 5 + bar_h / 2:.1f}" '
                f'dominant-baseline="middle">{escape(value_format(cursor))}</text>'
            )
    height = axis_y + 22 + (16 if axis_label else 0)
    if axis_label:
        out.append(
            f'<text class="axis-label" x="{plot_x + plot_w / 2:.1f}" y="{height - 6:.1f}" '
            f'text-anchor="middle">{escape(axis_label)}</text>'
        )
    if not rows:
        out.append(f'<text class="empty" x="{plot_x:.1f}" y="{top + 14:.1f}">no data</text>')
    return _svg(chart_id, title, width, height, marks, out)


#: Pixels kept right of a line chart's plot for its last x label (about half a date label).
_LAST_LABEL_ROOM = 28.0


def line_chart(
    chart_id: str,
    title: str,
    x_labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    value_format: Callable[[float], str],
    axis_label: str,
    width: int = 900,
    height: int = 320,
) -> Chart:
    """Lines over categorical x positions (e.g. weeks): one path and one point per value."""
    names = list(series)
    legend_svg, legend_h = _legend(names, 60, 28) if len(names) > 1 else ("", 0.0)
    top = 28.0 + legend_h + 8
    # Room on the right for half of the last x label, which is centred on the last point.
    plot_x, plot_w = 60.0, width - 60.0 - 2 * _PAD - _LAST_LABEL_ROOM
    bottom = height - 48.0
    plot_h = bottom - top
    hi = max((v for values in series.values() for v in values), default=0.0)
    ticks = nice_ticks(0.0, hi)
    top_value = ticks[-1] or 1.0
    count = len(x_labels)

    def sx(index: int) -> float:
        return plot_x + (index / (count - 1) if count > 1 else 0.5) * plot_w

    def sy(value: float) -> float:
        return bottom - value / top_value * plot_h

    out = [f'<text class="title" x="{_PAD}" y="18">{escape(title)}</text>', legend_svg]
    for tick in ticks:
        y = sy(tick)
        out.append(
            f'<line class="grid" x1="{plot_x:.1f}" y1="{y:.1f}" x2="{plot_x + plot_w:.1f}" '
            f'y2="{y:.1f}"/><text class="tick" x="{plot_x - 6:.1f}" y="{y + 4:.1f}" '
            f'text-anchor="end">{escape(value_format(tick))}</text>'
        )
    out.append(
        f'<line class="axis" x1="{plot_x:.1f}" y1="{bottom:.1f}" x2="{plot_x + plot_w:.1f}" '
        f'y2="{bottom:.1f}"/>'
    )
    every = max(1, math.ceil(count / 12))
    labelled = set(range(0, count, every))
    if count and count - 1 not in labelled:
        # The last x (the newest week) is always labelled; a label too close before it yields.
        if (count - 1) - max(labelled) < every:
            labelled.discard(max(labelled))
        labelled.add(count - 1)
    for index, label in enumerate(x_labels):
        if index in labelled:
            out.append(
                f'<text class="tick" x="{sx(index):.1f}" y="{bottom + 16:.1f}" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    marks = 0
    radius = 3 if count <= 60 else 2
    for s_index, name in enumerate(names):
        values = series[name]
        color = PALETTE[s_index % len(PALETTE)]
        if not values:
            continue
        d = "".join(
            f"{'M' if i == 0 else 'L'}{sx(i):.1f},{sy(v):.1f}" for i, v in enumerate(values)
        )
        if len(values) == 1:
            d += "h0.01"  # a zero-length path has no box to draw
        out.append(
            f'<path class="mark line" data-series="{_attr(name)}" d="{d}" stroke="{color}" '
            f'fill="none"><title>{escape(name)}</title></path>'
        )
        marks += 1
        for i, v in enumerate(values):
            out.append(
                f'<circle class="mark point" data-series="{_attr(name)}" cx="{sx(i):.1f}" '
                f'cy="{sy(v):.1f}" r="{radius}" fill="{color}"><title>{escape(name)}, '
                f"{escape(x_labels[i])}: {escape(value_format(v))}</title></circle>"
            )
            marks += 1
    out.append(
        f'<text class="axis-label" x="{plot_x + plot_w / 2:.1f}" y="{height - 6:.1f}" '
        f'text-anchor="middle">{escape(axis_label)}</text>'
    )
    if not count:
        out.append(f'<text class="empty" x="{plot_x + 10:.1f}" y="{top + 20:.1f}">no data</text>')
    return _svg(chart_id, title, width, height, marks, out)


def _svg(
    chart_id: str, title: str, width: int, height: float, marks: int, body: list[str]
) -> Chart:
    svg = (
        f'<svg class="chart" data-chart="{_attr(chart_id)}" data-marks="{marks}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{_attr(title)}" '
        f'width="{width}" height="{height:.0f}" viewBox="0 0 {width} {height:.0f}">'
        + "".join(body)
        + "</svg>"
    )
    return Chart(svg, marks)
