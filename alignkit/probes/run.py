"""The probe harness's Python API: :func:`run_probe` (what ``alignkit probe`` runs).

It checks everything it can before a model loads (the suite name, its ``--option`` keys, every item's
required fields with ``file:line`` errors, the output directory), loads the model, calls the suite and
writes ``OUT/`` whole (``alignkit.io.atomic_directory``: a kill leaves the old directory or the new one):

* ``summary.json``: the suite's numbers plus a ``run`` block (model, items file, options, seconds);
* ``items.jsonl``: one row per item (and per variant, persona and mode where the suite has them);
* ``<figure>.png``: the suite's bar/radar charts;
* ``report.html``: a self-contained page; ``section.html``: the same ``<section>`` alone, to embed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from alignkit.configs import ConfigError, one_line
from alignkit.io import atomic_directory, atomic_write_json, atomic_write_text, numbered_jsonl, remove_stale_siblings
from alignkit.io import write_jsonl as write_rows
from alignkit.probes.base import SAMPLES, WHERE, ProbeContext, Suite, get_suite
from alignkit.probes.report import png_bytes, render_page, render_section

DEFAULT_OUT = Path("runs/probes")


def parse_option_values(pairs: list[str] | None) -> dict[str, Any]:
    """``["k=v", ...]`` -> {k: v} with v read as bool (true/false), int, float or kept as text."""
    options: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option takes key=value, got {pair!r}")
        value: Any = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for cast in (int, float):
                try:
                    value = cast(raw)
                    break
                except ValueError:
                    continue
        options[key.strip()] = value
    return options


def items_file(suite: Suite, items_path: str | Path | None) -> Path:
    if items_path is not None:
        return Path(items_path)
    if suite.sample is None:
        raise ValueError(f"suite {suite.name!r} ships no sample items; give --items FILE")
    return SAMPLES / suite.sample


def read_items(path: str | Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every JSON object of a JSON Lines file, each with ``_where`` = "file:line"; a line that is not an
    object or lacks a required field is a one-line error naming the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such items file")
    items = []
    for line, value in numbered_jsonl(path, tolerate_torn_tail=False):
        if not isinstance(value, dict):
            raise ValueError(f"{path}:{line}: an item must be a JSON object, got {type(value).__name__}")
        missing = [name for name in required if name not in value]
        if missing:
            raise ValueError(f"{path}:{line}: item is missing required field {missing[0]!r}"
                             + (f" (and {', '.join(map(repr, missing[1:]))})" if missing[1:] else ""))
        items.append({**value, WHERE: f"{path}:{line}"})
    if not items:
        raise ValueError(f"{path}: no items")
    return items


def check_options(suite: Suite, options: dict[str, Any]) -> None:
    """Unknown or ill-typed ``--option`` keys fail before any model loads (suites that declare a model)."""
    if suite.options is None:
        return
    try:
        suite.options(**options)
    except ValidationError as error:
        raise ConfigError(one_line(error, prefix=f"{suite.name} --option ")) from None


def _load(model: Any, tokenizer: Any, device: str, dtype: str, log) -> tuple[Any, Any, str]:
    if isinstance(model, str | Path):
        from alignkit.models import load_model

        loaded, tok = load_model(str(model), dtype=dtype, device=device, log=log)
        loaded.eval().requires_grad_(False)
        return loaded, tok, str(model)
    if isinstance(model, tuple):
        model, tokenizer = model
    if tokenizer is None:
        raise ValueError("a loaded model needs its tokenizer: pass tokenizer= or (model, tokenizer)")
    name = getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__
    return model, tokenizer, name


def _judge(judge: Any, device: str, dtype: str, log) -> Any:
    if not isinstance(judge, str | Path):
        return judge
    from alignkit.models import load_model
    from alignkit.rewards.judge import LMJudge

    model, tokenizer = load_model(str(judge), dtype=dtype, device=device, log=log)
    return LMJudge(model.eval().requires_grad_(False), tokenizer)


def run_probe(model: Any, suite: str, items_path: str | Path | None = None, out_dir: str | Path | None = None,
              judge: Any = None, options: dict[str, Any] | None = None, *, tokenizer: Any = None,
              overwrite: bool = False, device: str = "auto", dtype: str = "float32", batch_size: int = 8,
              max_new_tokens: int = 64, seed: int = 0, progress: bool = False, log=print) -> dict[str, Any]:
    """Run suite ``suite`` on ``model`` (a spec such as ``"smollm2-135m-instruct"``, a loaded model with
    ``tokenizer=``, or a (model, tokenizer) pair) and write ``out_dir`` (default ``runs/probes/<suite>``).

    ``items_path`` defaults to the suite's shipped sample file; ``judge`` is a model spec or a judge object;
    ``options`` are the suite's settings. An existing non-empty ``out_dir`` is refused unless ``overwrite``.
    Returns the summary written to ``summary.json``."""
    chosen = get_suite(suite)
    options = dict(options or {})
    check_options(chosen, options)
    source = items_file(chosen, items_path)
    items = read_items(source, chosen.required)
    out = Path(out_dir) if out_dir is not None else DEFAULT_OUT / suite
    remove_stale_siblings(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ValueError(f"{out} already exists and is not empty; pass --overwrite to replace it")
    start = time.perf_counter()
    loaded, tok, name = _load(model, tokenizer, device, dtype, log)
    ctx = ProbeContext(loaded, tok, device=next(loaded.parameters()).device, judge=_judge(judge, device, dtype, log),
                       options=options, batch_size=batch_size, max_new_tokens=max_new_tokens, seed=seed,
                       progress=progress, log=log)
    load_seconds = time.perf_counter() - start
    result = chosen.run(ctx, items)
    seconds = time.perf_counter() - start - load_seconds
    summary = {**result.summary, "run": {"suite": suite, "model": name, "items": str(source), "options": options,
                                         "seed": seed, "max_new_tokens": max_new_tokens,
                                         "load_seconds": round(load_seconds, 2), "seconds": round(seconds, 2)}}
    write_outputs(out, suite, name, summary, result.rows, result.figures)
    log(f"wrote {out} ({len(result.rows)} rows, {seconds:.0f} s)")
    return summary


def write_outputs(out: Path, suite: str, model: str, summary: dict[str, Any], rows: list[dict[str, Any]],
                  figures: list[tuple[str, Any]]) -> Path:
    """summary.json, items.jsonl, PNGs, report.html and section.html, swapped in as one directory."""
    pngs = [(stem, png_bytes(fig)) for stem, fig in figures]
    section = render_section(suite, summary, pngs, rows)

    def fill(tmp: Path) -> None:
        atomic_write_json(tmp / "summary.json", summary)
        write_rows(tmp / "items.jsonl", rows)
        for stem, png in pngs:
            (tmp / f"{stem}.png").write_bytes(png)
        atomic_write_text(tmp / "section.html", section + "\n")
        atomic_write_text(tmp / "report.html", render_page(suite, model, section))

    return atomic_directory(out, fill)
