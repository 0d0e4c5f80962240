"""Building blocks for self-contained ``report.html`` pages: escaped tables, sections, a page.

Anything that is not markup this module wrote goes through :func:`esc`; model output is never
trusted. Cells given as :class:`Raw` are inserted as they are (for SVG plots and links the
caller built from escaped parts).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from html import escape

CSS = """body{font-family:system-ui,sans-serif;max-width:72em;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right;
vertical-align:top}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
td.text{text-align:left;white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:85%;max-width:34em}
.note{color:#666}.bad{color:#b00;font-weight:bold}.good{color:#075}code{font-size:90%}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto}img{max-width:100%}"""


class Raw(str):
    """Markup that is already safe (built by this package from escaped parts)."""


def esc(value: object) -> str:
    """HTML-escape anything (quotes too), or pass :class:`Raw` through."""
    if isinstance(value, Raw):
        return value
    return escape("" if value is None else str(value), quote=True)


def num(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def interval(iv: dict | None, digits: int = 2) -> str:
    """``0.33 [0.10, 0.70]`` from an Interval dict (the one interval format of every report and
    of the command line)."""
    if not iv or not isinstance(iv.get("estimate"), (int, float)) or not math.isfinite(iv["estimate"]):
        return "n/a"
    return f"{num(iv['estimate'], digits)} [{num(iv['low'], digits)}, {num(iv['high'], digits)}]"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], text_columns: Sequence[int] = ()) -> str:
    """A table; every cell escaped unless it is :class:`Raw`. ``text_columns`` keep line breaks."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(f'<td class="text">{esc(c)}</td>' if i in text_columns else f"<td>{esc(c)}</td>"
                        for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def section(title: str, *parts: str) -> str:
    return f"<h2>{esc(title)}</h2>" + "".join(parts)


def paragraph(text: str, cls: str | None = None) -> str:
    return f'<p class="{esc(cls)}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>"


def bullets(items: Iterable[tuple[str, str | None]]) -> str:
    """A list of ``(text, css class or None)`` items, every text escaped."""
    lines = "".join(f'<li class="{esc(cls)}">{esc(text)}</li>' if cls else f"<li>{esc(text)}</li>"
                    for text, cls in items)
    return f"<ul>{lines}</ul>"


def preformatted(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def image(png: bytes, alt: str) -> str:
    """A PNG embedded in the page (a ``data:`` URI, so the page stays one self-contained file)."""
    import base64

    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" alt="{esc(alt)}">'


def page(title: str, body: Sequence[str]) -> str:
    """A complete HTML document with inline CSS and no external resources."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{esc(title)}</h1>{''.join(body)}</body></html>\n")
