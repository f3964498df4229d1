"""Figures and the HTML section of a probe run: bar and radar charts (matplotlib ``Figure`` objects on the Agg
canvas, never pyplot, so nothing opens a window) and a self-contained ``report.html`` with the summary
table, the figures inline and the first rows of items.jsonl.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from typing import Any

MAX_ROWS = 50
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def bar_figure(title: str, groups: dict[str, dict[str, float | None]], ylabel: str = "",
               ylim: tuple[float, float] | None = (0.0, 1.0)) -> Any:
    """Grouped bars: ``groups[series][category] = value`` (None is drawn as a gap)."""
    from matplotlib.figure import Figure

    categories = list(dict.fromkeys(c for values in groups.values() for c in values))
    fig = Figure(figsize=(max(4.0, 0.9 * len(categories) * max(1, len(groups)) + 1.5), 3.2))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(groups))
    for s, (series, values) in enumerate(groups.items()):
        xs = [c + s * width for c in range(len(categories))]
        ys = [values.get(c) for c in categories]
        ax.bar([x for x, y in zip(xs, ys, strict=True) if y is not None], [y for y in ys if y is not None],
               width, label=series, color=COLORS[s % len(COLORS)])
    ax.set_xticks([c + 0.4 - width / 2 for c in range(len(categories))], categories, rotation=20, ha="right")
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(groups) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def radar_figure(title: str, axes: Sequence[str], series: dict[str, Sequence[float]],
                 limit: float = 100.0) -> Any:
    """One closed polygon per series over ``axes`` (e.g. agreement with each party, 0..``limit``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6, 4.6))
    ax = fig.add_subplot(projection="polar")
    angles = [2 * math.pi * i / len(axes) for i in range(len(axes))]
    for s, (name, values) in enumerate(series.items()):
        ax.plot(angles + angles[:1], list(values) + list(values[:1]), color=COLORS[s % len(COLORS)], label=name)
        ax.fill(angles + angles[:1], list(values) + list(values[:1]), color=COLORS[s % len(COLORS)], alpha=0.12)
    ax.set_xticks(angles, list(axes), fontsize=8)
    ax.set_ylim(0, limit)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def robustness_figures(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    """The mcq battery's bars: consistency, position bias and unparseable rate per mode; agreement with
    the modal answer per variant factor."""
    modes = summary.get("modes", {})
    if not modes:
        return []
    keys = ("consistency", "uniform_consistency", "normalised_entropy", "position_bias", "unparseable_rate")
    figures = [("robustness", bar_figure("Robustness across variants", {m: {k: v.get(k) for k in keys}
                                                                        for m, v in modes.items()}))]
    factors = {m: {f"{factor}={value}": share for factor, values in v.get("agreement_with_mode_by_factor", {}).items()
                   for value, share in values.items()} for m, v in modes.items()}
    if any(factors.values()):
        figures.append(("factors", bar_figure("Agreement with the item's modal answer, per variant factor",
                                              factors)))
    return figures


def png_bytes(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.4g}</td>'
    if isinstance(value, dict | list):
        return f"<td><code>{html.escape(json.dumps(value, ensure_ascii=False)[:400])}</code></td>"
    return f"<td>{html.escape(str(value))}</td>"


def _summary_rows(summary: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested summary as dotted keys (lists of records stay one cell)."""
    rows: list[tuple[str, Any]] = []
    for key, value in summary.items():
        if isinstance(value, dict) and value:
            rows += _summary_rows(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def render_section(suite: str, summary: dict[str, Any], figures: Sequence[tuple[str, bytes]],
                   rows: Sequence[dict[str, Any]]) -> str:
    """The probe's ``<section>``: summary table, figures (inline PNG) and the first rows of items.jsonl."""
    parts = [f'<section id="probe-{html.escape(suite)}"><h2>Probe: {html.escape(suite)}</h2>']
    parts.append("<table>" + "".join(f"<tr><th>{html.escape(k)}</th>{_cell(v)}</tr>"
                                     for k, v in _summary_rows(summary)) + "</table>")
    for stem, png in figures:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<h3>{html.escape(stem)}</h3><img alt="{html.escape(stem)}" src="data:image/png;base64,{data}">')
    if rows:
        columns = list(dict.fromkeys(k for row in rows[:MAX_ROWS] for k in row))
        parts.append(f"<h3>First {min(len(rows), MAX_ROWS)} of {len(rows)} rows (items.jsonl)</h3><table>")
        parts.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>")
        parts += ["<tr>" + "".join(_cell(row.get(c, "")) for c in columns) + "</tr>" for row in rows[:MAX_ROWS]]
        parts.append("</table>")
    parts.append("</section>")
    return "\n".join(parts)


def render_page(suite: str, model: str, section: str) -> str:
    """A standalone page around the section, with the run report's stylesheet and no-network policy."""
    from alignkit.report.html import CSP, CSS

    title = f"alignkit probe {html.escape(suite)}: {html.escape(model)}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}"><title>{title}</title>'
            f"<style>{CSS}</style></head><body><header><h1>{title}</h1></header><main>{section}</main></body></html>\n")
