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

import datetime as _dt
import html
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from alignkit.io import JsonlError, atomic_write, numbered_jsonl
from alignkit.report.plots import is_number, metrics_figures, ordered_groups, per_example_section, split_order

MAX_SAMPLES = 100
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
    """(line number, object) for each non-blank line. A torn last line (a run killed mid-append) is dropped
    with a warning; any other bad line raises naming file and line."""
    rows = []
    try:
        for lineno, obj in numbered_jsonl(path):
            if not isinstance(obj, dict):
                raise ReportError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            rows.append((lineno, obj))
    except JsonlError as err:
        raise ReportError(str(err)) from None
    return rows


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
            if is_number(value):
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
        f"<tr><th>{html.escape(k)}</th><td class=\"{'num' if is_number(v) else ''}\">"
        f"{html.escape(_fmt(v))}</td></tr>"
        for k, v in rows
    )
    return f"<table>{body}</table>"


def _latest_table(series: dict[str, dict[str, list[tuple[int, float]]]]) -> str:
    splits = sorted({s for per in series.values() for s in per}, key=split_order)
    head = "".join(f"<th>{html.escape(s)} (last)</th>" for s in splits)
    rows = []
    for _, keys in ordered_groups(series):
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
            figs = metrics_figures(series)
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
                         per_example_section(_read_table(table_path), table_path)))
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

    def write(tmp: Path) -> None:
        tmp.write_text(document, encoding="utf-8")
        os.chmod(tmp, 0o644)  # temporary files are private; a report is meant to be shared

    # write-then-rename: a browser or CI artifact upload never sees a half-written report
    atomic_write(out_path, write)
    return out_path
