"""The moral graph's export: ``moral_graph.json`` (everything :func:`aggregate` computes), ``moral_graph.png``
(one drawing per context: wiser values higher, node size by PageRank, kept wiser-than edges as arrows whose
width is their agreement, rejected ones dashed) and a self-contained ``report.html`` (no scripts, no external
loads, every text escaped) with the picture, the top values and the legitimacy summary."""

from __future__ import annotations

import base64
import html
import math
import textwrap
from pathlib import Path
from typing import Any

from alignkit.io import atomic_write, atomic_write_json, atomic_write_text
from alignkit.label.moral_graph import MoralGraphStore, Scenario, aggregate

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = ("body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d2330;max-width:1200px}"
         "table{border-collapse:collapse;margin:6px 0}th,td{border:1px solid #dde1e8;padding:4px 8px;"
         "text-align:left;vertical-align:top}th{background:#f1f3f6}img{max-width:100%}.note{color:#6b7385}")


def _layout(nodes: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Rows by PageRank (wisest on top), spread left to right within a row."""
    levels = sorted({round(n["pagerank"], 6) for n in nodes}, reverse=True)
    rows: dict[int, list[str]] = {}
    for n in nodes:
        rows.setdefault(levels.index(round(n["pagerank"], 6)), []).append(n["id"])
    return {node: ((i + 1) / (len(ids) + 1), 1 - (level + 0.5) / len(levels))
            for level, ids in rows.items() for i, node in enumerate(ids)}


def draw(summary: dict[str, Any], path: Path) -> Path:
    """One panel per context, saved as a PNG."""
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch

    contexts = summary["contexts"]
    fig = Figure(figsize=(6.5 * len(contexts), 5.5))
    for k, ctx in enumerate(contexts):
        ax = fig.add_subplot(1, len(contexts), k + 1)
        ax.set_axis_off()
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title("\n".join(textwrap.wrap(ctx["text"], 50)), fontsize=10)
        if not ctx["nodes"]:
            continue
        where = _layout(ctx["nodes"])
        for e in ctx["edges"]:
            kept = e["kept"]
            ax.add_patch(FancyArrowPatch(where[e["from"]], where[e["to"]], arrowstyle="-|>", mutation_scale=14,
                                         shrinkA=22, shrinkB=22, linestyle="-" if kept else "--",
                                         linewidth=0.8 + 3 * e["agreement"] if kept else 0.8,
                                         color="#2b5fb8" if kept else "#b0b6c3", connectionstyle="arc3,rad=0.08"))
        top = max(n["pagerank"] for n in ctx["nodes"])
        for n in ctx["nodes"]:
            x, y = where[n["id"]]
            ax.scatter([x], [y], s=300 + 1700 * n["pagerank"] / top, color="#f6c343" if n["id"] in ctx["top"][:1]
                       else "#dfe6f3", edgecolors="#3a4256", zorder=3)
            ax.text(x, y - 0.085, "\n".join(textwrap.wrap(n["title"], 22)) + f"\n{n['pagerank']:.2f}",
                    ha="center", va="top", fontsize=8, zorder=4)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    return path


def _share(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.0f}%"


def _html(summary: dict[str, Any], picture: Path) -> str:
    esc = html.escape
    image = base64.b64encode(picture.read_bytes()).decode("ascii")
    parts = [f"<h1>{esc(summary['title'])}</h1><p>{esc(summary['question'])}</p>",
             f"<p class=note>{summary['participants']} participants</p>",
             f'<img alt="moral graph" src="data:image/png;base64,{image}">']
    for ctx in summary["contexts"]:
        rows = "".join(f"<tr><td>{i + 1}</td><td>{esc(n['title'])}</td><td>{n['pagerank']:.3f}</td>"
                       f"<td>{esc('; '.join(n['policies']))}</td></tr>" for i, n in enumerate(ctx["nodes"]))
        edges = "".join(f"<tr><td>{esc(e['from'])} → {esc(e['to'])}</td><td>{e['votes']['yes']} / {e['votes']['no']}"
                        f" / {e['votes']['unsure']}</td><td>{_share(e['agreement'])}</td>"
                        f"<td>{'kept' if e['kept'] else 'dropped'}</td></tr>" for e in ctx["edges"])
        parts.append(f"<h2>{esc(ctx['text'])}</h2><p class=note>chosen by {ctx['chosen_by']} participants</p>"
                     "<table><tr><th>rank</th><th>value</th><th>PageRank</th><th>attentional policies</th></tr>"
                     f"{rows}</table><table><tr><th>wiser than (from → to)</th><th>yes / no / unsure</th>"
                     f"<th>agreement</th><th>edge</th></tr>{edges}</table>")
    legit = "".join(f"<tr><td>{esc(q['question'])}</td><td>{_share(q['yes_share'])}</td><td>"
                    f"{esc(', '.join(f'{g}: {_share(s)}' for g, s in q['by_group'].items()))}</td></tr>"
                    for q in summary["legitimacy"])
    parts.append("<h2>Legitimacy</h2><table><tr><th>question</th><th>yes (of yes + no)</th><th>by group</th></tr>"
                 f"{legit}</table>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" '
            f'content="{CSP}"><title>{esc(summary["title"])}</title><style>{STYLE}</style></head><body>'
            f"{''.join(parts)}</body></html>\n")


def export(scenario: Scenario, directory: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Aggregate the elicitation in ``directory`` and write the JSON, the picture and the report into ``out``
    (default: the same directory)."""
    out = Path(out) if out is not None else Path(directory)
    summary = aggregate(scenario, MoralGraphStore(directory))
    paths = {"json": out / "moral_graph.json", "png": out / "moral_graph.png", "html": out / "report.html"}
    atomic_write_json(paths["json"], summary)
    draw(summary, paths["png"])
    atomic_write_text(paths["html"], _html(summary, paths["png"]))
    return paths
