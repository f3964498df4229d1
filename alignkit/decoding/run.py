"""The Python API of decoding-time alignment: :func:`decode` (loaded model, prompts in memory) and
:func:`run_generate` (what ``alignkit generate`` runs: model spec and prompt file in, JSON Lines out).

Each output line holds ``prompt`` (and ``system`` when set), ``text`` (the selected response),
``candidates`` (each with its text, tokens, log-prob and scores), ``selected``, ``strategy`` and its
``settings``, ``reward`` (the spec), ``tokens_generated`` (every token decoded for the prompt, discarded
samples and lookaheads included) and ``seconds`` (its batch's wall time shared equally among the batch).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from alignkit.data.records import Text
from alignkit.decoding.base import Context, Decoded, DecodeSettings, get_strategy
from alignkit.decoding.rewards import Reward, build_reward, source_spec, split_weight
from alignkit.decoding.strategies import pass_rate_curve
from alignkit.io import atomic_write_json, write_jsonl
from alignkit.progress import Bars


def _items(prompts: Sequence[Any]) -> list[tuple[Text, str | None]]:
    return [p if isinstance(p, tuple) else (p, None) for p in prompts]


def decode(model, tokenizer, prompts: Sequence[Any], strategy: str = "greedy", reward: Any = None,
           settings: DecodeSettings | None = None, progress: Callable[[int, int], None] | None = None,
           log=print, **overrides: Any) -> list[dict[str, Any]]:
    """One output row per prompt (a text, messages, or a ``(prompt, system)`` tuple), in input order.

    ``reward`` is a spec or list of specs (``"verifier:synthetic"``, ``"reward_model:DIR"``,
    ``"judge:MODEL"``, ``"0.5*SPEC"``), a reward source, or a :class:`~alignkit.decoding.rewards.Reward`.
    ``overrides`` replace fields of ``settings`` (``n=4``, ``deal_lambda=2.0``). ``progress(prompts,
    tokens)`` is called after every batch of ``settings.batch_size`` prompts.
    """
    settings = replace(settings or DecodeSettings(), **overrides)
    chosen = get_strategy(strategy)
    scorer = build_reward(reward, device=str(next(model.parameters()).device), batch_size=settings.reward_batch_size,
                          log=log, policy=(model, tokenizer))  # lsc: specs sample their reference point from it
    if chosen.needs_reward and scorer is None:
        raise ValueError(f"strategy {strategy!r} needs a reward: pass --reward (e.g. verifier:synthetic, "
                         "reward_model:DIR or judge:MODEL)")
    ctx = Context(model, tokenizer, settings, scorer, log)
    items = _items(prompts)
    rows: list[dict[str, Any]] = []
    recorded = chosen.settings + (("system",) if settings.system else ())
    for start in range(0, len(items), settings.batch_size):
        batch = items[start:start + settings.batch_size]
        t0 = time.perf_counter()
        decoded = chosen.fn(ctx, batch)
        _score_unscored(scorer, batch, decoded)
        seconds = (time.perf_counter() - t0) / max(1, len(batch))
        for (prompt, system), d in zip(batch, decoded, strict=True):
            rows.append({"prompt": prompt, **({"system": system} if system else {}), "text": d.text,
                         "candidates": [c.to_json() for c in d.candidates], "selected": d.selected,
                         "strategy": strategy, "settings": settings.pick(recorded),
                         "reward": scorer.describe() if scorer else None, "tokens_generated": d.tokens_generated,
                         "seconds": round(seconds, 4)})
        if progress is not None:
            progress(len(batch), sum(d.tokens_generated for d in decoded))
    return rows


def _score_unscored(scorer: Reward | None, items, decoded: list[Decoded]) -> None:
    """With a scalar reward, score the selected text of strategies that do not use one (greedy, sample)."""
    if scorer is None or scorer.is_judge:
        return
    todo = [(p, d.candidates[d.selected]) for (p, _), d in zip(items, decoded, strict=True)
            if d.candidates[d.selected].reward is None]
    if todo:
        for (_, c), r in zip(todo, scorer.score([p for p, _ in todo], [c.text for _, c in todo]), strict=True):
            c.reward = r


def verifier_curve(rows: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
    """Best-of-N' pass-rate curve from rows whose candidates carry 1/0 verifier rewards."""
    return pass_rate_curve([[c.get("reward", 0.0) >= 1.0 for c in row["candidates"]] for row in rows])


class _Rate:
    """A progress-bar description that reads the current prompts/s and tokens/s whenever it is drawn."""

    def __init__(self, label: str) -> None:
        self.label, self.prompts, self.tokens, self.start = label, 0, 0, time.perf_counter()

    def __format__(self, spec: str) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return format(f"{self.label} {self.prompts / elapsed:.2f} prompts/s {self.tokens / elapsed:.0f} tok/s", spec)

    def __str__(self) -> str:
        return format(self, "")


def curve_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".gz").removesuffix(".jsonl") + ".curve.json")


def run_generate(model_spec: str, prompts_file: str, out: str | Path, strategy: str = "greedy",
                 reward: Sequence[str] | None = None, settings: DecodeSettings | None = None,
                 limit: int | None = None, device: str = "auto", dtype: str = "float32", progress: bool = True,
                 column_map: dict[str, str] | None = None, log=print) -> dict[str, Any]:
    """Load, decode every prompt of ``prompts_file`` and write ``out`` atomically; returns a summary (and writes
    the best-of-N pass-rate curve next to ``out`` when the reward is a verifier)."""
    from alignkit.data.prompts import load_prompts
    from alignkit.models import load_model

    settings = settings or DecodeSettings()
    chosen = get_strategy(strategy)
    if chosen.needs_reward and not reward:
        raise ValueError(f"strategy {strategy!r} needs a reward: give --reward (e.g. verifier:synthetic, "
                         "reward_model:DIR or judge:MODEL)")
    for spec in reward or ():  # a bad spec fails before any model loads
        source_spec(split_weight(spec)[1])
    items = load_prompts(prompts_file, column_map=column_map, limit=limit, log=log)
    t0 = time.perf_counter()
    model, tokenizer = load_model(model_spec, dtype=dtype, device=device, log=log)
    model.eval().requires_grad_(False)
    load_seconds = time.perf_counter() - t0
    scorer = build_reward(list(reward) if reward else None, device=str(next(model.parameters()).device),
                          batch_size=settings.reward_batch_size, log=log, policy=(model, tokenizer))
    bars = Bars(enabled=progress)
    rate = _Rate(f"generate ({strategy})")
    with bars.open():
        advance = bars.task(rate, total=len(items))  # type: ignore[arg-type] - formatted afresh at every draw

        def tick(prompts: int, tokens: int) -> None:
            rate.prompts += prompts
            rate.tokens += tokens
            advance(prompts)

        rows = decode(model, tokenizer, items, strategy, scorer, settings, progress=tick, log=log)
    seconds = time.perf_counter() - rate.start
    out = Path(out)
    write_jsonl(out, rows)
    summary: dict[str, Any] = {"out": str(out), "prompts": len(rows), "strategy": strategy,
                               "reward": scorer.describe() if scorer else None, "seconds": round(seconds, 2),
                               "load_seconds": round(load_seconds, 2), "tokens_generated": rate.tokens,
                               "prompts_per_second": round(len(rows) / max(seconds, 1e-9), 3),
                               "tokens_per_second": round(rate.tokens / max(seconds, 1e-9), 1)}
    rewards = [r["candidates"][r["selected"]].get("reward") for r in rows]
    if scorer is not None and all(r is not None for r in rewards):
        summary["mean_reward"] = sum(rewards) / len(rewards)
    if scorer is not None and scorer.is_verifier and strategy == "best_of_n":
        summary["pass_rate_curve"] = verifier_curve(rows)
        atomic_write_json(curve_path(out), {**summary, "settings": settings.pick(chosen.settings)})
        summary["curve_file"] = str(curve_path(out))
    return summary
