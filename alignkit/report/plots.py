"""The report's figures: training curves per metric group, per-example histograms and accuracy by
difficulty, rendered with matplotlib's Agg canvas into inline base64 PNG ``<img>`` tags."""

from __future__ import annotations

import base64
import html
import io
import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

PANELS_PER_FIGURE = 9
SPLIT_STYLE = {"train": dict(color="#1f77b4", linestyle="-", linewidth=1.4),
               "eval": dict(color="#d62728", linestyle="-", linewidth=1.6, marker="o", markersize=3.5)}


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


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
    if "kl" in k or "entropy" in k or "logratio_mixture" in k:  # IPO-MD's E_mixture[log pi/pi_ref], a KL proxy
        return "KL and entropy"
    return "Other"


GROUP_ORDER = ["Loss", "Ranking", "Rewards", "Log-probs", "Logits", "KL and entropy", "Optimisation",
               "Throughput"]


def ordered_groups(keys: Iterable[str]) -> list[tuple[str, list[str]]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for key in sorted(keys):
        groups[_group_of(key)].append(key)

    def rank(name: str) -> tuple[int, str]:
        if name in GROUP_ORDER:
            return GROUP_ORDER.index(name), ""
        return (len(GROUP_ORDER) + (1 if name == "Other" else 0), name)

    return [(name, groups[name]) for name in sorted(groups, key=rank)]


def split_order(split: str) -> tuple[int, str]:
    return ({"train": 0, "eval": 1}.get(split, 2), split)


def _fixed_layout(fig: Figure, nrows: int, width: float, height: float, top_band: float = 0.0) -> None:
    # Margins in inches, set by hand: constrained/tight layout doubles the render time of a report.
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.2 / width, bottom=0.5 / height,
                        top=1 - (0.35 + top_band) / height, wspace=0.32, hspace=0.55 if nrows > 1 else 0.2)


def metrics_figures(series: dict[str, dict[str, list[tuple[int, float]]]]) -> list[tuple[str, str]]:
    """[(group name, <img> html)]: one figure per group, one panel per key, one legend per figure."""
    out = []
    for group, keys in ordered_groups(series):
        for start in range(0, len(keys), PANELS_PER_FIGURE):
            chunk = keys[start:start + PANELS_PER_FIGURE]
            ncols = min(3, len(chunk))
            nrows = math.ceil(len(chunk) / ncols)
            width, height = 4.4 * ncols, 2.9 * nrows + 0.35
            fig = Figure(figsize=(width, height))
            axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
            handles: dict[str, Any] = {}
            for ax, key in zip(axes, chunk, strict=False):
                for split in sorted(series[key], key=split_order):
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
            labels = sorted(handles, key=split_order)
            fig.legend([handles[k] for k in labels], labels, loc="upper center", ncols=len(labels),
                       fontsize=9, frameon=False)
            _fixed_layout(fig, nrows, width, height, top_band=0.3)
            out.append((group, _img(fig, f"{group}: {', '.join(chunk)}")))
    return out


def _floats(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if is_number(v) or isinstance(v, bool)]


def _hist(ax: Any, values: list[float], title: str, xlabel: str, color: str) -> None:
    if values:
        ax.hist(values, bins=min(40, max(5, int(math.sqrt(len(values))) * 2)), color=color, alpha=0.85)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.axvline(0.0, color="#333", linewidth=0.8, linestyle=":")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(labelsize=8)


def per_example_section(table: dict[str, list[Any]], source: Path) -> str:
    def col(name: str) -> list[Any] | None:
        return table.get(name)

    n = max((len(v) for v in table.values()), default=0)
    panels: list[tuple[str, str, list[float], str]] = []
    lc, lr = col("logp_chosen"), col("logp_rejected")
    rc, rr = col("ref_logp_chosen"), col("ref_logp_rejected")

    def diff(a: list[Any], b: list[Any]) -> list[float]:
        return [float(x) - float(y) for x, y in zip(a, b, strict=False) if is_number(x) and is_number(y)]

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
             if all(is_number(v) for v in (a, b, c, d))]
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
                 if is_number(d) and (isinstance(c, bool) or is_number(c))]
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
