"""Reports: self-contained ``report.html`` pages with inline SVG plots, built from a run's JSON."""

from .html import Raw, esc, page, table
from .plots import dot_plot, interval_bars
from .probe import render_probe_report, write_probe_report

__all__ = ["Raw", "dot_plot", "esc", "interval_bars", "page", "render_probe_report", "table",
           "write_probe_report"]
