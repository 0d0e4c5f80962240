"""Plots as inline SVG strings: no plotting library, nothing loaded from outside the page.

Every label goes through :func:`html.escape`, so model output can be a label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def interval_bars(rows: Sequence[tuple[str, dict | None]], title: str, width: int = 640,
                  colour: str = "#c44") -> str:
    """Horizontal bars for rates in [0, 1], with interval whiskers.

    ``rows`` are ``(label, interval)`` with ``interval`` an :class:`Interval` dict
    (``estimate``, ``low``, ``high``); ``None`` or a NaN estimate draws no bar.
    """
    bar_h, left, right, top = 18, 240, 20, 24
    height = top + bar_h * len(rows) + 22
    scale = width - left - right
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f"<title>{escape(title)}</title>",
             f'<text x="{left}" y="14" font-size="12" font-weight="bold">{escape(title)}</text>']
    for tick in (0, 0.25, 0.5, 0.75, 1):
        x = left + tick * scale
        parts.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 18}" stroke="#ddd"/>'
                     f'<text x="{x:.1f}" y="{height - 6}" font-size="10" text-anchor="middle">{tick:g}</text>')
    for i, (label, iv) in enumerate(rows):
        y = top + i * bar_h
        parts.append(f'<text x="{left - 6}" y="{y + 12}" font-size="11" text-anchor="end">{escape(label)}</text>')
        if not iv or not _finite(iv.get("estimate")):
            parts.append(f'<text x="{left + 4}" y="{y + 12}" font-size="10" fill="#888">n/a</text>')
            continue
        mid = y + bar_h / 2
        parts.append(f'<rect x="{left}" y="{y + 3}" width="{iv["estimate"] * scale:.1f}" height="{bar_h - 6}" '
                     f'fill="{colour}"><title>{escape(label)}: {iv["estimate"]:.2f} '
                     f'[{iv["low"]:.2f}, {iv["high"]:.2f}]</title></rect>'
                     f'<line x1="{left + iv["low"] * scale:.1f}" y1="{mid:.1f}" x2="{left + iv["high"] * scale:.1f}" '
                     f'y2="{mid:.1f}" stroke="#222" stroke-width="1.5"/>')
    parts.append("</svg>")
    return "".join(parts)


def dot_plot(rows: Sequence[tuple[str, float | None]], title: str, width: int = 640,
             axis_label: str = "") -> str:
    """One dot per row on a shared horizontal axis that always shows 0 (e.g. log-odds)."""
    values = [v for _, v in rows if _finite(v)]
    lo, hi = min(values + [0.0]), max(values + [0.0])
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    pad = (hi - lo) * 0.05
    lo, hi = lo - pad, hi + pad
    row_h, left, right, top = 18, 240, 20, 24
    height = top + row_h * len(rows) + 34
    scale = (width - left - right) / (hi - lo)

    def x(v: float) -> float:
        return left + (v - lo) * scale

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f"<title>{escape(title)}</title>",
             f'<text x="{left}" y="14" font-size="12" font-weight="bold">{escape(title)}</text>',
             f'<line x1="{x(0):.1f}" y1="{top - 4}" x2="{x(0):.1f}" y2="{height - 30}" stroke="#888" '
             f'stroke-dasharray="3,3"/>']
    for tick in (lo + pad, 0.0, hi - pad):
        parts.append(f'<text x="{x(tick):.1f}" y="{height - 18}" font-size="10" text-anchor="middle">{tick:.2g}</text>')
    if axis_label:
        parts.append(f'<text x="{left + (width - left - right) / 2:.1f}" y="{height - 4}" font-size="10" '
                     f'text-anchor="middle">{escape(axis_label)}</text>')
    for i, (label, v) in enumerate(rows):
        y = top + i * row_h
        parts.append(f'<text x="{left - 6}" y="{y + 12}" font-size="11" text-anchor="end">{escape(label)}</text>')
        if _finite(v):
            parts.append(f'<circle cx="{x(v):.1f}" cy="{y + row_h / 2:.1f}" r="4" fill="{"#c44" if v < 0 else "#27a"}">'
                         f"<title>{escape(label)}: {v:.3f}</title></circle>")
    parts.append("</svg>")
    return "".join(parts)
