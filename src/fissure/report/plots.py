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


def _zero_axis_frame(values: list[float], n_rows: int, title: str, width: int, axis_label: str):
    """The opening of a one-row-per-label SVG over a horizontal axis spanning ``values`` and 0: title,
    the dashed zero line, three ticks and the axis label. Returns the parts and the value-to-x map."""
    lo, hi = min(values + [0.0]), max(values + [0.0])
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    pad = (hi - lo) * 0.05
    lo, hi = lo - pad, hi + pad
    row_h, left, right, top = 18, 240, 20, 24
    height = top + row_h * n_rows + 34
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
    return parts, x


def dot_plot(rows: Sequence[tuple[str, float | None]], title: str, width: int = 640,
             axis_label: str = "") -> str:
    """One dot per row on a shared horizontal axis that always shows 0 (e.g. log-odds)."""
    values = [v for _, v in rows if _finite(v)]
    parts, x = _zero_axis_frame(values, len(rows), title, width, axis_label)
    row_h, left, top = 18, 240, 24
    for i, (label, v) in enumerate(rows):
        y = top + i * row_h
        parts.append(f'<text x="{left - 6}" y="{y + 12}" font-size="11" text-anchor="end">{escape(label)}</text>')
        if _finite(v):
            parts.append(f'<circle cx="{x(v):.1f}" cy="{y + row_h / 2:.1f}" r="4" fill="{"#c44" if v < 0 else "#27a"}">'
                         f"<title>{escape(label)}: {v:.3f}</title></circle>")
    parts.append("</svg>")
    return "".join(parts)


def strip_plot(rows: Sequence[tuple[str, Sequence[float], Sequence[float]]], title: str, width: int = 640,
               axis_label: str = "") -> str:
    """Per row, every value of two groups as small dots on a shared axis that shows 0 (a histogram
    that hides nothing at small n): the first group red, a little above the row's middle, the
    second blue, a little below (e.g. projections of restricted prompts and of benign twins)."""
    values = [v for _, a, b in rows for v in (*a, *b) if _finite(v)]
    parts, x = _zero_axis_frame(values, len(rows), title, width, axis_label)
    row_h, left, top = 18, 240, 24
    for i, (label, first, second) in enumerate(rows):
        y = top + i * row_h
        parts.append(f'<text x="{left - 6}" y="{y + 12}" font-size="11" text-anchor="end">{escape(label)}</text>')
        for group, dy, colour in ((first, 5, "#c44"), (second, 13, "#27a")):
            parts.extend(f'<circle cx="{x(v):.1f}" cy="{y + dy}" r="2.5" fill="{colour}" fill-opacity="0.6"/>'
                         for v in group if _finite(v))
    parts.append("</svg>")
    return "".join(parts)


_PALETTE = ("#c44", "#27a", "#2a7", "#a72", "#72a", "#555", "#a27", "#7a2")


def _xy_frame(xs: list[float], ys: list[float], title: str, x_label: str, y_label: str, width: int, height: int,
              right: int, margin: float):
    """The opening of an x-y SVG plot over the range of ``xs`` and ``ys`` (widened by ``margin`` of
    it, or by 0.5 when flat): title, frame, three ticks per axis and the axis labels. Returns the
    parts so far and the data-to-pixel maps ``px``, ``py``."""
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    x0, x1 = (x0 - 0.5, x1 + 0.5) if x1 - x0 < 1e-9 else (x0 - (x1 - x0) * margin, x1 + (x1 - x0) * margin)
    y0, y1 = (y0 - 0.5, y1 + 0.5) if y1 - y0 < 1e-9 else (y0 - (y1 - y0) * margin, y1 + (y1 - y0) * margin)
    left, top, bottom = 70, 28, 44
    sx, sy = (width - left - right) / (x1 - x0), (height - top - bottom) / (y1 - y0)

    def px(x: float) -> float:
        return left + (x - x0) * sx

    def py(y: float) -> float:
        return height - bottom - (y - y0) * sy

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f"<title>{escape(title)}</title>",
             f'<text x="{left}" y="16" font-size="12" font-weight="bold">{escape(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
             f'fill="none" stroke="#ccc"/>']
    for frac in (0, 0.5, 1):
        xv, yv = x0 + frac * (x1 - x0), y0 + frac * (y1 - y0)
        parts.append(f'<text x="{px(xv):.1f}" y="{height - bottom + 14}" font-size="10" text-anchor="middle">'
                     f'{xv:.3g}</text><text x="{left - 6}" y="{py(yv) + 3:.1f}" font-size="10" text-anchor="end">'
                     f'{yv:.3g}</text>')
    parts.append(f'<text x="{left + (width - left - right) / 2:.1f}" y="{height - 8}" font-size="11" '
                 f'text-anchor="middle">{escape(x_label)}</text>')
    parts.append(f'<text x="14" y="{top + (height - top - bottom) / 2:.1f}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 14 {top + (height - top - bottom) / 2:.1f})">{escape(y_label)}</text>')
    return parts, px, py


def paths_plot(series: Sequence[tuple[str, Sequence[tuple[float, float, float | None, float | None]]]], title: str,
               x_label: str, y_label: str, width: int = 640, height: int = 420) -> str:
    """Lines through points ``(x, y, y_low, y_high)`` (whiskers where low/high are given), one per
    series, with a legend: e.g. a fine-tuning run's path from the base model, step by step."""
    pts = [(x, y) for _, s in series for x, y, *_ in s if _finite(x) and _finite(y)]
    lows = [v for _, s in series for _, _, lo, hi in s for v in (lo, hi) if _finite(v)]
    xs, ys = [p[0] for p in pts] or [0.0, 1.0], [p[1] for p in pts] + lows or [0.0, 1.0]
    top, right = 28, 170
    parts, px, py = _xy_frame(xs, ys, title, x_label, y_label, width, height, right=right, margin=0.05)
    for i, (label, points) in enumerate(series):
        colour = _PALETTE[i % len(_PALETTE)]
        good = [(x, y, lo, hi) for x, y, lo, hi in points if _finite(x) and _finite(y)]
        if len(good) > 1:
            line = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y, _, _ in good)
            parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        for x, y, lo, hi in good:
            if _finite(lo) and _finite(hi):
                parts.append(f'<line x1="{px(x):.1f}" y1="{py(lo):.1f}" x2="{px(x):.1f}" y2="{py(hi):.1f}" '
                             f'stroke="{colour}" stroke-opacity="0.5"/>')
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"><title>{escape(label)}: '
                         f'({x:.4g}, {y:.4g})</title></circle>')
        ly = top + 12 + 16 * i
        parts.append(f'<rect x="{width - right + 10}" y="{ly - 8}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{width - right + 24}" y="{ly + 1}" font-size="11">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def interval_dots(rows: Sequence[tuple[str, dict | None]], title: str, width: int = 640,
                  axis_label: str = "") -> str:
    """One dot per row with its interval's whisker, on a shared horizontal axis that always shows 0
    (e.g. a mean log-likelihood gap per filler). ``rows``: ``(label, Interval dict or None)``."""
    ends = [v for _, iv in rows if iv and _finite(iv.get("estimate"))
            for v in (iv["estimate"], iv["low"], iv["high"]) if _finite(v)]
    parts, x = _zero_axis_frame(ends, len(rows), title, width, axis_label)
    row_h, left, top = 18, 240, 24
    for i, (label, iv) in enumerate(rows):
        y, mid = top + i * row_h, top + i * row_h + row_h / 2
        parts.append(f'<text x="{left - 6}" y="{y + 12}" font-size="11" text-anchor="end">{escape(label)}</text>')
        if not iv or not _finite(iv.get("estimate")):
            continue
        v = iv["estimate"]
        if _finite(iv.get("low")) and _finite(iv.get("high")):
            parts.append(f'<line x1="{x(iv["low"]):.1f}" y1="{mid:.1f}" x2="{x(iv["high"]):.1f}" y2="{mid:.1f}" '
                         f'stroke="#222" stroke-width="1.5"/>')
        parts.append(f'<circle cx="{x(v):.1f}" cy="{mid:.1f}" r="4" fill="{"#c44" if v < 0 else "#27a"}">'
                     f'<title>{escape(label)}: {v:.3f} [{iv.get("low", math.nan):.3f}, '
                     f'{iv.get("high", math.nan):.3f}]</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def scatter_plot(points: Sequence[tuple[str, float, float, tuple[float, float] | None, tuple[float, float] | None,
                                    bool]], title: str, x_label: str, y_label: str, width: int = 680,
                 height: int = 440, front_label: str = "Pareto front", marker: tuple[str, float, float] | None = None) -> str:
    """Labelled points ``(label, x, y, x interval or None, y interval or None, highlighted)`` with
    whiskers; the highlighted ones are drawn in colour and joined by a line in x order (a Pareto
    front). ``marker`` = ``(label, x, y)`` adds one reference point (a cross), e.g. human text."""
    good = [p for p in points if _finite(p[1]) and _finite(p[2])]
    xs = [v for p in good for v in (p[1], *(p[3] or ())) if _finite(v)]
    ys = [v for p in good for v in (p[2], *(p[4] or ())) if _finite(v)]
    if marker and _finite(marker[1]) and _finite(marker[2]):
        xs.append(marker[1])
        ys.append(marker[2])
    xs, ys = xs or [0.0, 1.0], ys or [0.0, 1.0]
    parts, px, py = _xy_frame(xs, ys, title, x_label, y_label, width, height, right=20, margin=0.08)
    front = sorted((p for p in good if p[5]), key=lambda p: p[1])
    if len(front) > 1:
        line = " ".join(f"{px(p[1]):.1f},{py(p[2]):.1f}" for p in front)
        parts.append(f'<polyline points="{line}" fill="none" stroke="#c44" stroke-width="1.5" '
                     f'stroke-dasharray="4,3"><title>{escape(front_label)}</title></polyline>')
    for label, x, y, xi, yi, hot in good:
        colour = "#c44" if hot else "#888"
        if xi and _finite(xi[0]) and _finite(xi[1]):
            parts.append(f'<line x1="{px(xi[0]):.1f}" y1="{py(y):.1f}" x2="{px(xi[1]):.1f}" y2="{py(y):.1f}" '
                         f'stroke="{colour}" stroke-opacity="0.5"/>')
        if yi and _finite(yi[0]) and _finite(yi[1]):
            parts.append(f'<line x1="{px(x):.1f}" y1="{py(yi[0]):.1f}" x2="{px(x):.1f}" y2="{py(yi[1]):.1f}" '
                         f'stroke="{colour}" stroke-opacity="0.5"/>')
        parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="{4 if hot else 3}" fill="{colour}">'
                     f'<title>{escape(label)}: ({x:.4g}, {y:.4g})</title></circle>'
                     f'<text x="{px(x) + 6:.1f}" y="{py(y) - 5:.1f}" font-size="10" fill="{colour}">{escape(label)}</text>')
    if marker and _finite(marker[1]) and _finite(marker[2]):
        cx, cy = px(marker[1]), py(marker[2])
        parts.append(f'<path d="M{cx - 5:.1f},{cy - 5:.1f}L{cx + 5:.1f},{cy + 5:.1f}M{cx - 5:.1f},{cy + 5:.1f}'
                     f'L{cx + 5:.1f},{cy - 5:.1f}" stroke="#27a" stroke-width="2"><title>{escape(marker[0])}</title>'
                     f'</path><text x="{cx + 7:.1f}" y="{cy + 4:.1f}" font-size="10" fill="#27a">'
                     f'{escape(marker[0])}</text>')
    parts.append("</svg>")
    return "".join(parts)
