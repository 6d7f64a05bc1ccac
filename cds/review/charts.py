"""Inline SVG charts, drawn on the server (no JavaScript library, nothing from a CDN).

Pure functions: values in, SVG markup out. Every time axis is hours relative to the
anchor (0, drawn as a vertical line; negative is before). Text is escaped, so values
from the timeline can never inject markup. Colours come from CSS classes (the pages'
Content-Security-Policy allows no inline styles).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

_HOUR = 3600.0
_NICE_HOURS = (0.25, 0.5, 1, 2, 3, 6, 12, 24, 48, 72, 168, 336, 720)


@dataclass(frozen=True)
class Mark:
    """One input on the timeline.

    Attributes:
        seconds: time relative to the anchor, seconds.
        label: tooltip text (display name, value, time).
        css: extra class (``superseded``, ``missing`` ...), may be empty.
    """

    seconds: float
    label: str
    css: str = ""


@dataclass(frozen=True)
class Point:
    """One value of a series.

    Attributes:
        seconds: time relative to the anchor, seconds.
        value: the numeric value.
        label: tooltip text.
        contribution: the model's signed attribution for this value, if any.
    """

    seconds: float
    value: float
    label: str
    contribution: float | None = None


def _tick_step(span_h: float, most: int = 8) -> float:
    for step in _NICE_HOURS:
        if span_h / step <= most:
            return step
    return _NICE_HOURS[-1]


def _hours(value: float) -> str:
    return f"{value:+g} h" if value else "0"


class _Axis:
    """Linear map of relative seconds onto ``[left, right]`` pixels."""

    def __init__(self, start_s: float, end_s: float, left: float, right: float) -> None:
        if end_s <= start_s:
            end_s = start_s + _HOUR
        self.start, self.end, self.left, self.right = start_s, end_s, left, right

    def x(self, seconds: float) -> float:
        frac = (seconds - self.start) / (self.end - self.start)
        return self.left + min(1.0, max(0.0, frac)) * (self.right - self.left)

    def ticks(self, top: float, bottom: float) -> list[str]:
        step = _tick_step((self.end - self.start) / _HOUR)
        first = math.ceil(self.start / _HOUR / step) * step
        parts = []
        value = first
        while value * _HOUR <= self.end + 1e-6:
            x = self.x(value * _HOUR)
            parts.append(
                f'<line class="grid" x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}"/>'
                f'<text class="tick" x="{x:.1f}" y="{bottom + 14:.1f}" '
                f'text-anchor="middle">{_hours(value)}</text>'
            )
            value += step
        if self.start <= 0 <= self.end:
            x0 = self.x(0)
            parts.append(
                f'<line class="anchor" x1="{x0:.1f}" y1="{top - 4:.1f}" '
                f'x2="{x0:.1f}" y2="{bottom:.1f}"/>'
                f'<text class="anchor-label" x="{x0 + 3:.1f}" y="{top + 6:.1f}">anchor</text>'
            )
        return parts


def timeline_svg(
    lanes: Sequence[tuple[str, Sequence[Mark]]], *, start_s: float, end_s: float
) -> str:
    """Every input of a bundle, one lane per modality, on one axis around the anchor.

    Args:
        lanes: (modality name, its marks), drawn top to bottom.
        start_s, end_s: the bundle window relative to the anchor, seconds.
    """
    lane_h, left, right, top = 28.0, 110.0, 880.0, 16.0
    height = top + lane_h * max(1, len(lanes)) + 24
    axis = _Axis(start_s, end_s, left, right)
    bottom = top + lane_h * max(1, len(lanes))
    parts = [
        f'<svg class="chart timeline" viewBox="0 0 900 {height:.0f}" role="img" '
        f'aria-label="Inputs relative to the anchor" xmlns="http://www.w3.org/2000/svg">',
        *axis.ticks(top, bottom),
    ]
    for row, (name, marks) in enumerate(lanes):
        y = top + lane_h * row + lane_h / 2
        parts.append(
            f'<text class="lane" x="{left - 8:.1f}" y="{y + 4:.1f}" '
            f'text-anchor="end">{escape(name)}</text>'
            f'<line class="lane-line" x1="{left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}"/>'
        )
        for mark in marks:
            css = f"mark {escape(mark.css)}".strip()
            parts.append(
                f'<circle class="{css}" cx="{axis.x(mark.seconds):.1f}" cy="{y:.1f}" r="5">'
                f"<title>{escape(mark.label)}</title></circle>"
            )
    parts.append("</svg>")
    return "".join(parts)


def series_svg(
    title: str, unit: str, points: Sequence[Point], *, start_s: float, end_s: float
) -> str:
    """A small line chart of one lab or vital sign over the bundle window.

    Points the model weighed are coloured by the sign of their contribution (``up``
    raised the risk, ``down`` lowered it) and sized by its magnitude.
    """
    width, height, left, right, top, bottom = 420.0, 170.0, 48.0, 405.0, 26.0, 136.0
    axis = _Axis(start_s, end_s, left, right)
    ordered = sorted(points, key=lambda p: p.seconds)
    values = [p.value for p in ordered] or [0.0]
    low, high = min(values), max(values)
    pad = (high - low) * 0.15 or max(abs(high) * 0.1, 1.0)
    low, high = low - pad, high + pad

    def y(value: float) -> float:
        return bottom - (value - low) / (high - low) * (bottom - top)

    heading = f"{title} ({unit})" if unit else title
    parts = [
        f'<svg class="chart series" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
        f'aria-label="{escape(heading)}" xmlns="http://www.w3.org/2000/svg">',
        f'<text class="chart-title" x="{left:.1f}" y="14">{escape(heading)}</text>',
        *axis.ticks(top, bottom),
        f'<text class="tick" x="{left - 6:.1f}" y="{y(high - pad) + 4:.1f}" '
        f'text-anchor="end">{_number(high - pad)}</text>',
        f'<text class="tick" x="{left - 6:.1f}" y="{y(low + pad) + 4:.1f}" '
        f'text-anchor="end">{_number(low + pad)}</text>',
    ]
    if len(ordered) > 1:
        path = " ".join(f"{axis.x(p.seconds):.1f},{y(p.value):.1f}" for p in ordered)
        parts.append(f'<polyline class="line" points="{path}"/>')
    biggest = max((abs(p.contribution or 0.0) for p in ordered), default=0.0) or 1.0
    for p in ordered:
        css = "point"
        radius = 3.5
        if p.contribution is not None:
            css += " up" if p.contribution > 0 else " down"
            radius += 4.0 * abs(p.contribution) / biggest
        parts.append(
            f'<circle class="{css}" cx="{axis.x(p.seconds):.1f}" cy="{y(p.value):.1f}" '
            f'r="{radius:.1f}"><title>{escape(p.label)}</title></circle>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _number(value: float) -> str:
    return f"{value:.3g}"
