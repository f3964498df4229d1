"""Evaluating a reward model on preference pairs: what ``alignkit eval RM_DIR --data PAIRS`` runs when RM_DIR is a
sequence-classification model (its ``config.json`` names a ``*ForSequenceClassification`` architecture).

Every pair's chosen and rejected response is scored by the one reward scorer,
:class:`alignkit.rewards.RewardModel` (score at the last token of the conversation in the model's chat
template); the margin is m = r(chosen) − r(rejected) and the Bradley-Terry model (Bradley & Terry, Biometrika
1952) reads σ(m) as the predicted P(chosen ≻ rejected). Reported (``summary.json``, section ``reward_model``):

* ``reward/accuracy``: share of pairs with m > 0 (ties count as wrong), with a percentile bootstrap CI
  (:func:`alignkit.eval.metrics.bootstrap_ci`); the mean and median margin; mean rewards per side.
* **length buckets** (the long-response bias of reward models: Singhal et al., "A Long Way to Go: Investigating
  Length Correlations in RLHF", arXiv 2310.03716): accuracy per quantile bucket of the pair's mean response
  length, accuracy when the chosen response is the longer / the shorter one, and how often the model prefers
  the longer response.
* **calibration**: a reliability table of predicted σ(m) against observed outcomes and the expected calibration
  error (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017, arXiv 1706.04599). A pair's observed
  outcome in its given order is always "chosen wins", so each pair counts in both orders (σ(m) with outcome 1,
  1 − σ(m) with outcome 0): equal-width bins over [0, 1], symmetric about ½; the ECE is the confidence-form ECE
  of the prediction "the response with the higher reward is the chosen one".
* **RewardBench subsets** (Lambert et al., "RewardBench", arXiv 2403.13787): files with a ``subset`` column
  (``prompt``, ``chosen``, ``rejected``, ``subset``) get accuracy per subset.

The per-example table holds both rewards, the margin, σ(m), correctness and response token counts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from alignkit.eval import metrics
from alignkit.eval.common import EvalResult, prompt_id
from alignkit.eval.config import EvalConfig


def is_reward_model(spec: str) -> bool:
    """Whether ``spec`` is a local model directory whose ``config.json`` names a sequence classifier."""
    config = Path(spec).expanduser() / "config.json"
    if not config.is_file():
        return False
    try:
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return False
    return any(str(a).endswith("ForSequenceClassification") for a in architectures)


# ---------------------------------------------------------------- pure metrics


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # stable for large |x|


def calibration_table(margins: np.ndarray, n_bins: int = 10) -> tuple[list[dict[str, Any]], float]:
    """(bins, ECE) of the predictions σ(m) (see the module docstring: each pair in both orders). A bin row:
    ``low``, ``high``, ``n``, ``predicted`` (mean σ), ``observed`` (share of outcomes 1); empty bins are kept
    with None."""
    p = _sigmoid(np.asarray(margins, dtype=np.float64))
    predicted = np.concatenate([p, 1.0 - p])
    outcome = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, predicted, side="right") - 1, 0, n_bins - 1)
    rows, ece = [], 0.0
    for b in range(n_bins):
        inside = index == b
        n = int(inside.sum())
        row: dict[str, Any] = {"low": float(edges[b]), "high": float(edges[b + 1]), "n": n,
                               "predicted": None, "observed": None}
        if n:
            row["predicted"], row["observed"] = float(predicted[inside].mean()), float(outcome[inside].mean())
            ece += n / predicted.size * abs(row["observed"] - row["predicted"])
        rows.append(row)
    return rows, float(ece)


def length_buckets(correct: np.ndarray, tokens_chosen: np.ndarray, tokens_rejected: np.ndarray,
                   margins: np.ndarray, n_buckets: int = 4) -> dict[str, Any]:
    """Accuracy by quantile bucket of the pair's mean response length, by which side is longer, and the share
    of pairs (with unequal lengths) where the model rewards the longer response more."""
    mean_length = (tokens_chosen + tokens_rejected) / 2.0
    edges = np.unique(np.quantile(mean_length, np.linspace(0, 1, n_buckets + 1)))
    index = np.clip(np.searchsorted(edges, mean_length, side="right") - 1, 0, max(len(edges) - 2, 0))
    buckets = []
    for b in range(max(len(edges) - 1, 1)):
        inside = index == b
        if inside.any():
            buckets.append({"tokens_low": float(edges[b]), "tokens_high": float(edges[min(b + 1, len(edges) - 1)]),
                            "n": int(inside.sum()), "accuracy": float(correct[inside].mean())})
    longer = tokens_chosen > tokens_rejected
    shorter = tokens_chosen < tokens_rejected
    unequal = longer | shorter
    prefers_longer = np.where(longer, margins > 0, margins < 0)

    def share(mask: np.ndarray, values: np.ndarray) -> float | None:
        return float(values[mask].mean()) if mask.any() else None

    return {"buckets": buckets,
            "chosen_longer": {"n": int(longer.sum()), "accuracy": share(longer, correct)},
            "chosen_shorter": {"n": int(shorter.sum()), "accuracy": share(shorter, correct)},
            "prefers_longer": share(unequal, prefers_longer)}


def reward_summary(chosen: np.ndarray, rejected: np.ndarray, tokens_chosen: np.ndarray, tokens_rejected: np.ndarray,
                   subsets: list[str | None], n_bootstrap: int = 1000, calibration_bins: int = 10,
                   n_length_buckets: int = 4) -> dict[str, Any]:
    """The ``reward_model`` summary section from per-pair rewards (pure; see the module docstring)."""
    margins = chosen - rejected
    correct = (margins > 0).astype(float)
    ci = metrics.bootstrap_ci(correct, n_resamples=n_bootstrap) if n_bootstrap else None
    bins, ece = calibration_table(margins, calibration_bins)
    summary: dict[str, Any] = {
        "n_examples": int(margins.size),
        "reward/accuracy": float(correct.mean()),
        "reward/accuracy_ci_low": ci.low if ci else None, "reward/accuracy_ci_high": ci.high if ci else None,
        "reward/margin": float(margins.mean()), "reward/margin_median": float(np.median(margins)),
        "reward/chosen": float(chosen.mean()), "reward/rejected": float(rejected.mean()),
        "reward/ece": ece, "ties": int(np.sum(margins == 0)),
        "length": length_buckets(correct, tokens_chosen, tokens_rejected, margins, n_length_buckets),
        "calibration": bins,
    }
    named = sorted({s for s in subsets if s is not None})
    if named:
        flags = np.array([s is not None for s in subsets])
        summary["by_subset"] = {
            s: {"n": int(sum(x == s for x in subsets)),
                "accuracy": float(correct[np.array([x == s for x in subsets])].mean())} for s in named}
        if not flags.all():
            summary["by_subset"]["(none)"] = {"n": int((~flags).sum()), "accuracy": float(correct[~flags].mean())}
    return summary


# ---------------------------------------------------------------- scoring and the run


def _response_text(response: Any) -> str:
    """A response as text: strings unchanged, a message list as its last message's content."""
    if isinstance(response, str):
        return response
    last = response[-1]
    return last["content"] if isinstance(last, dict) else last.content


def evaluate_reward_model(scorer: Any, pairs: list[Any], n_bootstrap: int = 1000, calibration_bins: int = 10,
                          n_length_buckets: int = 4, subset_key: str = "subset") -> EvalResult:
    """Score every pair with ``scorer`` (a :class:`alignkit.rewards.RewardModel`) and summarise it. Sides are
    scored longest first (similar lengths share a batch) and put back in order."""
    t0 = time.perf_counter()
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    texts = [_response_text(response) for response in responses]
    order = sorted(range(len(texts)), key=lambda i: -(len(json.dumps(prompts[i], default=str)) + len(texts[i])))
    scores = np.zeros(len(texts))
    sorted_scores = scorer([prompts[i] for i in order], [texts[i] for i in order])
    scores[np.array(order, dtype=np.int64)] = np.asarray(sorted_scores, dtype=np.float64)
    n = len(pairs)
    chosen, rejected = scores[:n], scores[n:]
    tokens = np.array([len(scorer.tokenizer(t, add_special_tokens=False).input_ids) for t in texts], dtype=float)
    subsets = [p.metadata.get(subset_key) if isinstance(p.metadata.get(subset_key), str) else None for p in pairs]
    summary = reward_summary(chosen, rejected, tokens[:n], tokens[n:], subsets, n_bootstrap, calibration_bins,
                             n_length_buckets)
    margins = chosen - rejected
    probability = _sigmoid(margins)
    rows = []
    for i, pair in enumerate(pairs):
        row: dict[str, Any] = {"index": i, "prompt_id": prompt_id(pair, pair.prompt),
                               "reward_chosen": float(chosen[i]), "reward_rejected": float(rejected[i]),
                               "margin": float(margins[i]), "p_chosen": float(probability[i]),
                               "correct": bool(margins[i] > 0), "tokens_chosen": int(tokens[i]),
                               "tokens_rejected": int(tokens[n + i])}
        if subsets[i] is not None:
            row["subset"] = subsets[i]
        rows.append(row)
    summary["seconds"] = {"total": time.perf_counter() - t0}
    return EvalResult(summary, rows)


def run_reward_eval(config: EvalConfig, log: Any = print) -> Any:
    """``alignkit eval RM_DIR --data PAIRS`` for a reward model: ``OUT/eval/{summary.json, per_example.*}``."""
    from alignkit.eval.pipeline import EvalError, EvalRun, default_out, load_pairs
    from alignkit.eval.writers import write_result
    from alignkit.rewards import load_reward_model

    t_start = time.perf_counter()
    unsupported = [flag for flag, value in (("--reference", config.reference), ("--before", config.before),
                                            ("--generate", config.generation.enabled), ("--report", config.report))
                   if value]
    if unsupported:
        raise EvalError(f"{config.model} is a reward model (a sequence classifier): it is evaluated on preference "
                        f"pairs only; drop {', '.join(unsupported)}")
    if config.data.path is None:
        raise EvalError(f"{config.model} is a reward model: give --data PAIRS (data.path)")
    pairs, data_info = load_pairs(config, log)
    log(f"data: {len(pairs)} pairs from {data_info['source']}")
    pref, section = config.preferences, config.reward_model
    try:
        scorer = load_reward_model(config.model, device=config.device, dtype=config.dtype,
                                   batch_size=pref.batch_size, max_length=pref.max_length)
    except (FileNotFoundError, ValueError) as err:
        raise EvalError(str(err)) from None
    result = evaluate_reward_model(scorer, pairs, pref.n_bootstrap, section.calibration_bins, section.length_buckets,
                                   section.subset_key)
    rm = result.summary
    summary = {"model": config.model, "kind": "reward_model", "data": data_info, "reward_model": rm,
               "settings": {"max_length": pref.max_length, "batch_size": pref.batch_size, "dtype": config.dtype,
                            "device": str(next(scorer.model.parameters()).device)},
               "seconds": {"reward_model": rm["seconds"]["total"], "total": time.perf_counter() - t_start}}
    ci = (f" [{rm['reward/accuracy_ci_low']:.3f}, {rm['reward/accuracy_ci_high']:.3f}]"
          if rm["reward/accuracy_ci_low"] is not None else "")
    log(f"reward/accuracy {rm['reward/accuracy']:.4f}{ci} on {rm['n_examples']} pairs; mean margin "
        f"{rm['reward/margin']:.4f}; ECE {rm['reward/ece']:.4f}; prefers the longer response "
        f"{rm['length']['prefers_longer'] if rm['length']['prefers_longer'] is not None else float('nan'):.3f}")
    for name, part in rm.get("by_subset", {}).items():
        log(f"  subset {name}: accuracy {part['accuracy']:.4f} ({part['n']} pairs)")
    out_dir = config.out if config.out is not None else default_out(config.model)
    paths = write_result(out_dir, summary, result.per_example, None, fmt=config.format,
                         config=config.model_dump(mode="json"))
    return EvalRun(summary, paths)
