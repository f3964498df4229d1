"""One self-contained HTML report for a training run.

Everything is inline: CSS in a <style> block, plots as base64 PNG data URIs rendered with matplotlib's Agg
canvas, no scripts and no external URLs. A Content-Security-Policy meta tag enforces that, so a report
opened from an untrusted run directory cannot fetch anything or run anything.

Inputs, all inside ``run_dir`` and all optional except that missing pieces get a short note:

* ``metrics.jsonl``: one JSON object per line with an integer ``step``, a ``split`` ("train"/"eval") and any
  numeric keys. Every numeric key is plotted against step, train and eval in the same panel.
* ``config.yaml``: shown verbatim.
* ``samples.jsonl`` (or ``eval/samples.jsonl``, written by ``alignkit eval`` with a baseline):
  ``{"prompt", "before", "after"[, "verified_before", "verified_after"]}`` side by side.
* ``eval/per_example.parquet`` or ``eval/per_example.jsonl``: per-pair log-probs -> histograms.
* ``eval/summary.json``: shown as a table.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

MAX_SAMPLES = 100
PANELS_PER_FIGURE = 9
SPLIT_STYLE = {"train": dict(color="#1f77b4", linestyle="-", linewidth=1.4),
               "eval": dict(color="#d62728", linestyle="-", linewidth=1.6, marker="o", markersize=3.5)}
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 0; color: #1d2330; background: #f6f7f9; }
header { background: #1d2330; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header .meta { color: #b8c0d0; font-size: 12px; }
main { padding: 8px 28px 40px; max-width: 1400px; }
nav { margin: 14px 0; font-size: 13px; }
nav a { margin-right: 14px; color: #2b5fb8; text-decoration: none; }
section { background: #fff; border: 1px solid #dde1e8; border-radius: 6px; padding: 12px 18px;
          margin: 16px 0; }
h2 { font-size: 18px; margin: 4px 0 10px; }
h3 { font-size: 15px; margin: 14px 0 6px; color: #3a4256; }
img { max-width: 100%; height: auto; display: block; margin: 6px 0; }
pre { background: #f1f3f6; padding: 10px; overflow-x: auto; font-size: 12px; border-radius: 4px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
th, td { border: 1px solid #dde1e8; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f1f3f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.samples { width: 100%; table-layout: fixed; }
table.samples td { white-space: pre-wrap; word-wrap: break-word; font-size: 12px; }
table.samples col.idx { width: 3em; }
.note { color: #6b7385; font-style: italic; }
.ok { color: #17803d; font-weight: 600; } .bad { color: #b42318; font-weight: 600; }
"""


class ReportError(ValueError):
    """An input file in the run directory is malformed; the message names the file and line."""


# --------------------------------------------------------------------------------------------------
# Reading inputs
# --------------------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; any bad line raises naming file and line."""
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                msg = f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})"
                raise ReportError(msg) from None
            if not isinstance(obj, dict):
                raise ReportError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            rows.append((lineno, obj))
    return rows


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _read_metrics(path: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """key -> split -> [(step, value)], keeping only finite numeric values."""
    series: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for lineno, row in _read_jsonl(path):
        step = row.get("step")
        if isinstance(step, float) and step.is_integer():
            step = int(step)
        if not isinstance(step, int) or isinstance(step, bool):
            raise ReportError(f"{path}:{lineno}: 'step' must be an integer, got {step!r}")
        split = row.get("split", "train")
        if not isinstance(split, str):
            raise ReportError(f"{path}:{lineno}: 'split' must be a string, got {split!r}")
        for key, value in row.items():
            if key in ("step", "split"):
                continue
            if isinstance(value, bool):
                value = float(value)
            if _is_number(value):
                series[key][split].append((step, float(value)))
    return series


def _read_table(path: Path) -> dict[str, list[Any]]:
    """Column dict from a .parquet or .jsonl per-example table."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pydict()
        except Exception as err:  # pyarrow raises several unrelated types for corrupt files
            raise ReportError(f"{path}: cannot read parquet table ({err})") from err
    columns: dict[str, list[Any]] = defaultdict(list)
    rows = _read_jsonl(path)
    keys = {k for _, row in rows for k in row}
    for _, row in rows:
        for k in keys:
            columns[k].append(row.get(k))
    return dict(columns)


# --------------------------------------------------------------------------------------------------
# Plotting
# --------------------------------------------------------------------------------------------------


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig: Figure, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{_png(fig)}">'


def _group_of(key: str) -> str:
    if "/" in key:
        prefix = key.split("/", 1)[0]
        return {"rewards": "Rewards", "logps": "Log-probs", "logits": "Logits", "eval": "Eval"}.get(
            prefix, prefix.replace("_", " ").capitalize()
        )
    k = key.lower()
    if "loss" in k:
        return "Loss"
    if "ranking" in k or "accurac" in k or k in ("alignment_gap", "r_star"):
        return "Ranking"
    if k in ("learning_rate", "lr", "grad_norm", "epoch") or "grad" in k or "norm" in k:
        return "Optimisation"
    if "per_second" in k or "per_sec" in k or "time" in k or "memory" in k or "throughput" in k:
        return "Throughput"
    if "kl" in k or "entropy" in k:
        return "KL and entropy"
    return "Other"


GROUP_ORDER = ["Loss", "Ranking", "Rewards", "Log-probs", "Logits", "KL and entropy", "Optimisation",
               "Throughput"]


def _ordered_groups(keys: Iterable[str]) -> list[tuple[str, list[str]]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for key in sorted(keys):
        groups[_group_of(key)].append(key)

    def rank(name: str) -> tuple[int, str]:
        if name in GROUP_ORDER:
            return GROUP_ORDER.index(name), ""
        return (len(GROUP_ORDER) + (1 if name == "Other" else 0), name)

    return [(name, groups[name]) for name in sorted(groups, key=rank)]


def _split_order(split: str) -> tuple[int, str]:
    return ({"train": 0, "eval": 1}.get(split, 2), split)


def _fixed_layout(fig: Figure, nrows: int, width: float, height: float, top_band: float = 0.0) -> None:
    # Margins in inches, set by hand: constrained/tight layout doubles the render time of a report.
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.2 / width, bottom=0.5 / height,
                        top=1 - (0.35 + top_band) / height, wspace=0.32, hspace=0.55 if nrows > 1 else 0.2)


def _metrics_figures(series: dict[str, dict[str, list[tuple[int, float]]]]) -> list[tuple[str, str]]:
    """[(group name, <img> html)]: one figure per group, one panel per key, one legend per figure."""
    out = []
    for group, keys in _ordered_groups(series):
        for start in range(0, len(keys), PANELS_PER_FIGURE):
            chunk = keys[start:start + PANELS_PER_FIGURE]
            ncols = min(3, len(chunk))
            nrows = math.ceil(len(chunk) / ncols)
            width, height = 4.4 * ncols, 2.9 * nrows + 0.35
            fig = Figure(figsize=(width, height))
            axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
            handles: dict[str, Any] = {}
            for ax, key in zip(axes, chunk, strict=False):
                for split in sorted(series[key], key=_split_order):
                    points = sorted(series[key][split])
                    style = SPLIT_STYLE.get(split, dict(linestyle="--", marker="s", markersize=3))
                    if len(points) == 1:  # a lone point draws no line; give it a marker
                        style = {**style, "marker": style.get("marker", "o")}
                    (line,) = ax.plot([p[0] for p in points], [p[1] for p in points], label=split, **style)
                    handles.setdefault(split, line)
                ax.set_title(key, fontsize=10)
                ax.set_xlabel("step", fontsize=8)
                ax.tick_params(labelsize=8)
                ax.grid(alpha=0.3)
            for ax in axes[len(chunk):]:
                ax.set_visible(False)
            labels = sorted(handles, key=_split_order)
            fig.legend([handles[k] for k in labels], labels, loc="upper center", ncols=len(labels),
                       fontsize=9, frameon=False)
            _fixed_layout(fig, nrows, width, height, top_band=0.3)
            out.append((group, _img(fig, f"{group}: {', '.join(chunk)}")))
    return out


def _floats(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if _is_number(v) or isinstance(v, bool)]


def _hist(ax: Any, values: list[float], title: str, xlabel: str, color: str) -> None:
    if values:
        ax.hist(values, bins=min(40, max(5, int(math.sqrt(len(values))) * 2)), color=color, alpha=0.85)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.axvline(0.0, color="#333", linewidth=0.8, linestyle=":")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(labelsize=8)


def _per_example_section(table: dict[str, list[Any]], source: Path) -> str:
    def col(name: str) -> list[Any] | None:
        return table.get(name)

    n = max((len(v) for v in table.values()), default=0)
    panels: list[tuple[str, str, list[float], str]] = []
    lc, lr = col("logp_chosen"), col("logp_rejected")
    rc, rr = col("ref_logp_chosen"), col("ref_logp_rejected")

    def diff(a: list[Any], b: list[Any]) -> list[float]:
        return [float(x) - float(y) for x, y in zip(a, b, strict=False) if _is_number(x) and _is_number(y)]

    if lc is not None and lr is not None:
        panels.append(("Ranking margin", "log π(y_w) − log π(y_l)", diff(lc, lr), "#1f77b4"))
    c_label = "c = log π_ref(y_l) − log π_ref(y_w)"
    if col("difficulty") is not None:
        panels.append(("Difficulty", c_label, _floats(col("difficulty")), "#9467bd"))
    elif rc is not None and rr is not None:
        panels.append(("Difficulty", c_label, diff(rr, rc), "#9467bd"))
    if col("margin") is not None:
        panels.append(("Reward margin", "margin column: β·(h_w − h_l)", _floats(col("margin")), "#2ca02c"))
    elif None not in (lc, lr, rc, rr):
        h = [(float(a) - float(c)) - (float(b) - float(d)) for a, b, c, d in zip(lc, lr, rc, rr, strict=False)
             if all(_is_number(v) for v in (a, b, c, d))]
        panels.append(("Log-ratio margin", "h_w − h_l (not scaled by β)", h, "#2ca02c"))

    parts = [f"<p>{n} examples from <code>{html.escape(str(source))}</code>."]
    correct = col("correct")
    if correct is not None:
        vals = _floats(correct)
        if vals:
            parts.append(f" Ranking accuracy (mean of <code>correct</code>): {sum(vals) / len(vals):.4f}.")
    parts.append("</p>")
    if not panels:
        parts.append('<p class="note">No known columns (logp_chosen, logp_rejected, ref_logp_chosen, '
                     "ref_logp_rejected, margin, difficulty) to plot.</p>")
        return "".join(parts)
    width, height = 4.4 * len(panels), 3.0
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    _fixed_layout(fig, 1, width, height)
    for ax, (title, xlabel, values, color) in zip(axes, panels, strict=True):
        _hist(ax, values, title, xlabel, color)
    parts.append(_img(fig, "Per-example histograms: " + ", ".join(p[0] for p in panels)))
    difficulty = col("difficulty")
    if difficulty is not None and correct is not None:
        pairs = [(float(d), float(c)) for d, c in zip(difficulty, correct, strict=False)
                 if _is_number(d) and (isinstance(c, bool) or _is_number(c))]
        if len(pairs) >= 10:
            parts.append(_accuracy_by_difficulty(pairs))
    return "".join(parts)


def _accuracy_by_difficulty(pairs: list[tuple[float, float]], bins: int = 10) -> str:
    """Ranking accuracy within equal-count bins of difficulty: where the model ranks pairs correctly."""
    pairs = sorted(pairs)
    bins = min(bins, len(pairs))
    edges = [round(i * len(pairs) / bins) for i in range(bins + 1)]
    groups = [pairs[a:b] for a, b in zip(edges, edges[1:], strict=False) if b > a]
    accuracy = [sum(c for _, c in g) / len(g) for g in groups]
    labels = [f"{g[0][0]:.3g}…{g[-1][0]:.3g}" for g in groups]
    width, height = 8.8, 3.0
    fig = Figure(figsize=(width, height))
    ax = fig.subplots()
    _fixed_layout(fig, 1, width, height)
    ax.bar(range(len(groups)), accuracy, color="#1f77b4", alpha=0.85)
    ax.set_xticks(range(len(groups)), labels, rotation=20, fontsize=7)
    ax.set_ylim(0, 1)
    ax.axhline(0.5, color="#333", linewidth=0.8, linestyle=":")
    ax.set_title(f"Ranking accuracy by difficulty ({len(groups)} equal-count bins of c)", fontsize=10)
    ax.set_ylabel("share ranked correctly", fontsize=9)
    return _img(fig, "Ranking accuracy by difficulty bin")


# --------------------------------------------------------------------------------------------------
# HTML pieces
# --------------------------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, dict | list):
        return json.dumps(v)
    return str(v)


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.extend(_flatten(v, key + "/"))
        else:
            out.append((key, v))
    return out


def _kv_table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(
        f"<tr><th>{html.escape(k)}</th><td class=\"{'num' if _is_number(v) else ''}\">"
        f"{html.escape(_fmt(v))}</td></tr>"
        for k, v in rows
    )
    return f"<table>{body}</table>"


def _latest_table(series: dict[str, dict[str, list[tuple[int, float]]]]) -> str:
    splits = sorted({s for per in series.values() for s in per}, key=_split_order)
    head = "".join(f"<th>{html.escape(s)} (last)</th>" for s in splits)
    rows = []
    for _, keys in _ordered_groups(series):
        for key in keys:
            cells = []
            for s in splits:
                pts = sorted(series[key].get(s, []))
                if pts:
                    step, value = pts[-1]
                    cells.append(f'<td class="num">{_fmt(value)} <span class="note">@{step}</span></td>')
                else:
                    cells.append("<td></td>")
            rows.append(f"<tr><th>{html.escape(key)}</th>{''.join(cells)}</tr>")
    return f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>"


def _verified_badge(v: Any) -> str:
    if v is None:
        return ""
    ok = bool(v)
    return f'<div class="{"ok" if ok else "bad"}">verified: {"✓" if ok else "✗"}</div>'


def _samples_section(rows: list[tuple[int, dict[str, Any]]]) -> str:
    shown = rows[:MAX_SAMPLES]
    note = (f'<p class="note">Showing the first {len(shown)} of {len(rows)} samples.</p>'
            if len(rows) > len(shown) else "")
    body = []
    for i, (_, row) in enumerate(shown):
        def text(key: str, row: dict[str, Any] = row) -> str:
            v = row.get(key)
            return "" if v is None else html.escape(v if isinstance(v, str) else json.dumps(v))

        body.append(
            f"<tr><td>{i}</td><td>{text('prompt')}</td>"
            f"<td>{text('before')}{_verified_badge(row.get('verified_before'))}</td>"
            f"<td>{text('after')}{_verified_badge(row.get('verified_after'))}</td></tr>"
        )
    return (f'{note}<table class="samples"><colgroup><col class="idx"><col><col><col></colgroup>'
            f"<tr><th>#</th><th>prompt</th><th>before</th><th>after</th></tr>{''.join(body)}</table>")


def _missing(what: str, path: Path) -> str:
    return f'<p class="note">No {what}: <code>{html.escape(str(path))}</code> not found.</p>'


def _find_eval_table(run_dir: Path, eval_table: Path | None) -> Path | None:
    if eval_table is not None:
        if not eval_table.is_file():
            raise FileNotFoundError(f"eval table {eval_table} not found")
        return eval_table
    for name in ("per_example.parquet", "per_example.jsonl"):
        if (run_dir / "eval" / name).is_file():
            return run_dir / "eval" / name
    return None


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def write_report(run_dir: Path, out_path: Path | None = None, eval_table: Path | None = None) -> Path:
    """Render ``run_dir`` into one self-contained HTML file and return its path.

    ``out_path`` defaults to ``run_dir / "report.html"``. ``eval_table`` overrides the per-example eval table
    (default ``run_dir/eval/per_example.parquet``, then ``.jsonl``); its directory's ``summary.json`` is used
    when ``run_dir/eval/summary.json`` is absent. Missing inputs are omitted with a note; a malformed line in
    a JSONL file raises :class:`ReportError` naming the file and line.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} not found")
    out_path = Path(out_path) if out_path is not None else run_dir / "report.html"
    eval_table = Path(eval_table) if eval_table is not None else None

    sections: list[tuple[str, str, str]] = []  # (anchor, title, html)

    metrics_path = run_dir / "metrics.jsonl"
    if metrics_path.is_file():
        series = _read_metrics(metrics_path)
        if series:
            figs = _metrics_figures(series)
            body = "".join(f"<h3>{html.escape(group)}</h3>{img}" for group, img in figs)
            sections.append(("metrics", "Training metrics", body))
            sections.append(("latest", "Latest values", _latest_table(series)))
        else:
            sections.append(("metrics", "Training metrics",
                             f'<p class="note"><code>{html.escape(str(metrics_path))}</code> has no numeric '
                             "metrics.</p>"))
    else:
        sections.append(("metrics", "Training metrics", _missing("training metrics", metrics_path)))

    table_path = _find_eval_table(run_dir, eval_table)
    summary_path = run_dir / "eval" / "summary.json"
    if not summary_path.is_file() and table_path is not None:
        summary_path = table_path.parent / "summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ReportError(f"{summary_path}:{err.lineno}: malformed JSON ({err.msg})") from None
        rows = _flatten(summary) if isinstance(summary, dict) else [("value", summary)]
        sections.append(("summary", "Evaluation summary", _kv_table(rows)))
    else:
        sections.append(("summary", "Evaluation summary", _missing("evaluation summary", summary_path)))

    if table_path is not None:
        sections.append(("per-example", "Per-example evaluation",
                         _per_example_section(_read_table(table_path), table_path)))
    else:
        expected = run_dir / "eval" / "per_example.{parquet,jsonl}"
        sections.append(("per-example", "Per-example evaluation", _missing("per-example evaluation", expected)))

    samples_path = run_dir / "samples.jsonl"  # a training run's; else an eval's baseline-vs-model samples
    if not samples_path.is_file() and (run_dir / "eval" / "samples.jsonl").is_file():
        samples_path = run_dir / "eval" / "samples.jsonl"
    if samples_path.is_file():
        sections.append(("samples", "Samples before / after", _samples_section(_read_jsonl(samples_path))))
    else:
        sections.append(("samples", "Samples before / after", _missing("samples", samples_path)))

    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        config_html = f"<pre>{html.escape(config_path.read_text(encoding='utf-8'))}</pre>"
    else:
        config_html = _missing("config", config_path)
    sections.append(("config", "Resolved config", config_html))

    title = f"alignkit report: {run_dir.resolve().name}"
    generated = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t, _ in sections)
    body = "".join(f'<section id="{a}"><h2>{html.escape(t)}</h2>{h}</section>' for a, t, h in sections)
    document = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1><div class=\"meta\">{html.escape(str(run_dir.resolve()))}"
        f" · generated {generated}</div></header>"
        f"<main><nav>{nav}</nav>{body}</main></body></html>\n"
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Write-then-rename so a browser or CI artifact upload never sees a half-written report.
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=".report-", suffix=".html")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(document)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is meant to be shared
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_path
