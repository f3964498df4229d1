"""Pair metrics: how a model ranks chosen against rejected responses, and why.

:func:`evaluate_preferences` scores every pair with the policy (and a reference and an earlier checkpoint
when given) through the engine's one pair-scoring path (:func:`alignkit.engine.pairs.score_pairs`), then
reports likelihood ranking accuracy (summed and length-normalised), DPO implicit-reward accuracy and
margins (Rafailov et al., NeurIPS 2023, arXiv:2305.18290), the idealized ranking accuracy R*, the
alignment gap, per-example difficulty and the share of initially mis-ranked pairs that flipped (Chen et
al., "Preference Learning Algorithms Do Not Learn Preference Rankings", NeurIPS 2024, arXiv:2405.19534).
All arithmetic is in :mod:`alignkit.eval.metrics`, so the table and the summary cannot disagree.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from alignkit.data.records import PreferencePair
from alignkit.data.tokenize import EncodedPair, PromptEncoder, TruncationStats, encode_pair
from alignkit.engine.pairs import PairRows, score_pairs
from alignkit.eval import metrics
from alignkit.eval.common import EvalResult, clean, pair_layout, prompt_id, same_tokenizer
from alignkit.parallel import gather_in_order, my_share, process_group
from alignkit.progress import Bars

ALPHA_KEY = "agreement"


@dataclass
class PairLogps:
    """Per-pair summed response log-probs and response token counts, in the input order."""

    chosen: np.ndarray
    rejected: np.ndarray
    tokens_chosen: np.ndarray
    tokens_rejected: np.ndarray


def encode_pairs(tokenizer: Any, pairs: Sequence[PreferencePair], max_length: int, max_prompt_length: int
                 ) -> tuple[list[EncodedPair], TruncationStats]:
    """Token ids for every pair exactly as training sees them (chat template, EOS, truncation)."""
    encoder = PromptEncoder(tokenizer)
    stats = TruncationStats()
    encoded = []
    for pair in pairs:
        item = encode_pair(encoder, pair.prompt, pair.chosen, pair.rejected, pair.system, max_length,
                           max_prompt_length)
        stats.add(item)
        encoded.append(item)
    return encoded, stats


def score_encoded(
    model: nn.Module,
    encoded: Sequence[EncodedPair],
    pad_id: int,
    batch_size: int = 8,
    autocast_dtype: torch.dtype | None = None,
    advance: Callable[[int], None] | None = None,
    layout: Literal["auto", "shared", "padded"] = "auto",
) -> PairLogps:
    """Summed log-probs of chosen and rejected under ``model``, in the input order, by the engine's
    :func:`~alignkit.engine.pairs.score_pairs`. ``layout="auto"`` feeds each prompt once for both responses
    (shared-prefix rows, packed) when the engine confirms that is exact for this model, else one padded row
    per response."""
    chosen = {"auto": None, "shared": "shared_prefix", "padded": "padded"}[layout]
    # several processes (torchrun): each scores every world-th pair, then all gather them back in input order
    rank, world = process_group()
    mine = my_share(len(encoded), rank, world)
    rows = [PairRows(encoded[i].prompt, encoded[i].chosen, encoded[i].rejected) for i in mine]
    scores = score_pairs(model, rows, pad_id, batch_size, chosen or pair_layout(model, pad_id),
                         autocast_dtype=autocast_dtype, advance=advance)
    local = list(zip(scores.chosen.logps.tolist(), scores.rejected.logps.tolist(), scores.chosen.tokens.tolist(),
                     scores.rejected.tokens.tolist(), strict=True))
    columns = np.array(gather_in_order(len(encoded), mine, local, world), dtype=np.float64).reshape(-1, 4).T
    return PairLogps(columns[0], columns[1], columns[2], columns[3])


def _alphas(pairs: Sequence[PreferencePair], alpha: float, alpha_key: str, alpha_max: float
            ) -> tuple[np.ndarray, int, int]:
    """Per-pair α (metadata ``alpha_key`` where present, else ``alpha``) clipped into [1−alpha_max, alpha_max].

    Annotator agreement is often exactly 1 (everyone agreed), but α = 1 makes (1/β)·log(α/(1−α)) infinite and
    every pair trivially "flippable" (Chen et al. 2024), so such values are smoothed by clipping. Returns
    (alphas, number taken from metadata, number clipped).
    """
    if not 0.5 <= alpha_max < 1:
        raise ValueError(f"alpha_max must be in [0.5, 1), got {alpha_max}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    values = np.full(len(pairs), float(alpha))
    from_metadata = 0
    for i, pair in enumerate(pairs):
        if alpha_key in pair.metadata and pair.metadata[alpha_key] is not None:
            raw = pair.metadata[alpha_key]
            if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 <= raw <= 1:
                raise ValueError(f"pair {i}: metadata {alpha_key!r} must be a number in [0, 1] "
                                 f"(P(chosen preferred)), got {raw!r}")
            values[i] = float(raw)
            from_metadata += 1
    clipped = np.clip(values, 1.0 - alpha_max, alpha_max)
    return clipped, from_metadata, int(np.sum(clipped != values))


def evaluate_preferences(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    reference: nn.Module | None = None,
    before: nn.Module | None = None,
    beta: float = 0.1,
    alpha: float = 0.75,
    batch_size: int = 8,
    max_length: int = 512,
    max_prompt_length: int = 256,
    *,
    alpha_key: str = ALPHA_KEY,
    alpha_max: float = 0.99,
    reference_tokenizer: Any | None = None,
    before_tokenizer: Any | None = None,
    autocast_dtype: torch.dtype | None = None,
    n_bootstrap: int = 1000,
    progress: bool = False,
) -> EvalResult:
    """Likelihood-ranking, implicit-reward and idealized-ranking evaluation of ``model`` on ``pairs``.

    * ``reference``: π_ref for implicit rewards (β·h), R*, difficulty. Without one, the policy serves as its
      own reference for R* and difficulty ("what could DPO from this model reach") and no implicit-reward
      metrics are reported. Passing the policy object itself reuses its log-probs instead of a second pass.
    * ``before``: an earlier checkpoint; reports the share of pairs it mis-ranked that ``model`` ranks right.
    * ``alpha``: preference strength P(y_w ≻ y_l) for R* where a pair's metadata has no ``alpha_key``.
    * ``reference_tokenizer``/``before_tokenizer`` default to ``tokenizer``; if they tokenize differently the
      pairs are encoded separately for that model.

    Per-example rows hold the prompt id, log-probs, token counts, correctness flags, α, the R* condition, the
    difficulty ``c = log π_ref(y_l) − log π_ref(y_w)`` and its DPO-loss threshold, and the margin
    ``β·(h_w − h_l)``. ``summary`` keys mirror the training metrics (``ranking/accuracy``, ``rewards/...``).
    """
    if not pairs:
        raise ValueError("no preference pairs to evaluate")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    encoded, stats = encode_pairs(tokenizer, pairs, max_length, max_prompt_length)
    alphas, n_alpha_meta, n_alpha_clipped = _alphas(pairs, alpha, alpha_key, alpha_max)

    bars = Bars(progress)
    with bars.open():
        def run(name: str, scored_model: nn.Module, scored_tokenizer: Any | None) -> PairLogps:
            t0 = time.perf_counter()
            tok = tokenizer if scored_tokenizer is None else scored_tokenizer
            items = encoded if same_tokenizer(tok, tokenizer) else encode_pairs(
                tok, pairs, max_length, max_prompt_length)[0]
            result = score_encoded(scored_model, items, tok.pad_token_id, batch_size, autocast_dtype,
                                   bars.task(f"scoring {name}", len(pairs)))
            seconds[name] = time.perf_counter() - t0
            return result

        policy = run("policy", model, tokenizer)
        ref = None
        if reference is not None:
            ref = policy if reference is model else run("reference", reference, reference_tokenizer)
        early = None
        if before is not None:
            early = policy if before is model else run("before", before, before_tokenizer)

    rows = _pair_rows(pairs, encoded, policy, ref, early, alphas, beta)
    summary = _pair_summary(rows, policy, ref, early, alphas, beta, n_bootstrap,
                            "given" if reference is not None else "policy (no reference given)",
                            {"alpha_from_metadata": n_alpha_meta, "alpha_constant": alpha,
                             "alpha_clipped": n_alpha_clipped})
    summary["truncation"] = {"prompts": stats.prompt_truncated, "responses": stats.response_truncated,
                             "max_length": max_length, "max_prompt_length": max_prompt_length}
    seconds["total"] = time.perf_counter() - t_start
    summary["seconds"] = seconds
    return EvalResult(clean(summary), rows)


def _pair_rows(pairs: Sequence[PreferencePair], encoded: Sequence[EncodedPair], policy: PairLogps,
               ref: PairLogps | None, early: PairLogps | None, alphas: np.ndarray, beta: float
               ) -> list[dict[str, Any]]:
    """One flat row per pair (see :func:`evaluate_preferences`)."""
    pc, pr, tc, tr = policy.chosen, policy.rejected, policy.tokens_chosen, policy.tokens_rejected
    correct = pc > pr
    correct_norm = pc / np.maximum(tc, 1) > pr / np.maximum(tr, 1)
    base = ref if ref is not None else policy  # π_ref for R* and difficulty
    diff = metrics.difficulty(base.chosen, base.rejected)
    threshold = metrics.difficulty_loss_threshold(base.chosen, base.rejected, beta)
    ideal = base.chosen - base.rejected + np.log(alphas / (1.0 - alphas)) / beta > 0
    margins = metrics.reward_margins(pc, pr, ref.chosen, ref.rejected, beta) if ref is not None else None
    rows = []
    for i, pair in enumerate(pairs):
        row: dict[str, Any] = {
            "index": i,
            "prompt_id": prompt_id(pair, pair.prompt),
            "logp_chosen": float(pc[i]), "logp_rejected": float(pr[i]),
            "tokens_chosen": int(tc[i]), "tokens_rejected": int(tr[i]),
            "prompt_tokens": len(encoded[i].prompt),
            "truncated": bool(encoded[i].prompt_truncated or encoded[i].response_truncated),
            "correct": bool(correct[i]), "correct_normalized": bool(correct_norm[i]),
        }
        if ref is not None:
            row.update({
                "ref_logp_chosen": float(ref.chosen[i]), "ref_logp_rejected": float(ref.rejected[i]),
                "reward_chosen": float(beta * (pc[i] - ref.chosen[i])),
                "reward_rejected": float(beta * (pr[i] - ref.rejected[i])),
                "margin": float(margins[i]), "reward_correct": bool(margins[i] > 0),
            })
        row.update({"alpha": float(alphas[i]), "ideal_correct": bool(ideal[i]), "difficulty": float(diff[i]),
                    "difficulty_loss_threshold": float(threshold[i])})
        if early is not None:
            before_correct = bool(early.chosen[i] > early.rejected[i])
            row.update({"before_logp_chosen": float(early.chosen[i]),
                        "before_logp_rejected": float(early.rejected[i]),
                        "before_correct": before_correct,
                        # None for pairs that were already right: "flipped" only applies to mis-ranked ones.
                        "flipped": None if before_correct else bool(correct[i])})
        family = pair.metadata.get("family")
        if isinstance(family, str):
            row["family"] = family
        rows.append(row)
    return rows


def _pair_summary(rows: list[dict[str, Any]], policy: PairLogps, ref: PairLogps | None, early: PairLogps | None,
                  alphas: np.ndarray, beta: float, n_bootstrap: int, reference_label: str,
                  alpha_counts: dict[str, Any]) -> dict[str, Any]:
    """The summary's metric sections, from the same arrays as :func:`_pair_rows`."""
    pc, pr, tc, tr = policy.chosen, policy.rejected, policy.tokens_chosen, policy.tokens_rejected
    base = ref if ref is not None else policy
    diff = metrics.difficulty(base.chosen, base.rejected)
    threshold = metrics.difficulty_loss_threshold(base.chosen, base.rejected, beta)
    r = metrics.ranking_accuracy(pc, pr)
    r_ci = metrics.bootstrap_ci((pc > pr).astype(float), n_resamples=n_bootstrap) if n_bootstrap else None
    r_star = metrics.idealized_ranking_accuracy(base.chosen, base.rejected, beta, alphas)
    summary: dict[str, Any] = {
        "n_examples": len(rows),
        "beta": beta,
        "reference": reference_label,
        "ranking": {
            "accuracy": r,
            "accuracy_ci_low": r_ci.low if r_ci else None, "accuracy_ci_high": r_ci.high if r_ci else None,
            "accuracy_normalized": metrics.ranking_accuracy(pc, pr, tc, tr, length_normalized=True),
            "ties": int(np.sum(pc == pr)),
        },
        "logps": {"chosen": float(pc.mean()), "rejected": float(pr.mean()),
                  "tokens_chosen": float(tc.mean()), "tokens_rejected": float(tr.mean())},
    }
    if ref is not None:
        margins = metrics.reward_margins(pc, pr, ref.chosen, ref.rejected, beta)
        acc_ci = metrics.bootstrap_ci((margins > 0).astype(float), n_resamples=n_bootstrap) if n_bootstrap else None
        margin_ci = metrics.bootstrap_ci(margins, n_resamples=n_bootstrap) if n_bootstrap else None
        summary["rewards"] = {
            "accuracies": metrics.implicit_reward_accuracy(pc, pr, ref.chosen, ref.rejected, beta),
            "accuracies_ci_low": acc_ci.low if acc_ci else None, "accuracies_ci_high": acc_ci.high if acc_ci else None,
            "margins": float(margins.mean()),
            "margins_ci_low": margin_ci.low if margin_ci else None,
            "margins_ci_high": margin_ci.high if margin_ci else None,
            "margins_median": float(np.median(margins)),
            "chosen": float(beta * (pc - ref.chosen).mean()),
            "rejected": float(beta * (pr - ref.rejected).mean()),
        }
        summary["ranking"]["reference_accuracy"] = metrics.ranking_accuracy(ref.chosen, ref.rejected)
    summary["idealized"] = {"r_star": r_star, "alignment_gap": metrics.alignment_gap(r_star, r),
                            "alpha_mean": float(alphas.mean()), **alpha_counts}
    summary["difficulty"] = {
        "mean": float(diff.mean()), "median": float(np.median(diff)),
        "p90": float(np.percentile(diff, 90)),
        "share_misranked_by_reference": float(np.mean(diff >= 0)),  # ties count as mis-ranked
        "loss_threshold_median": float(np.median(threshold)),
    }
    if early is not None:
        flips = metrics.flipped_share(early.chosen, early.rejected, pc, pr)
        summary["flips"] = {"share": flips.share, "n_flipped": flips.n_flipped,
                            "n_misranked_before": flips.n_misranked,
                            "before_accuracy": metrics.ranking_accuracy(early.chosen, early.rejected)}
    families = sorted({row["family"] for row in rows if "family" in row})
    if families:
        summary["ranking"]["by_family"] = {
            f: float(np.mean([row["correct"] for row in rows if row.get("family") == f])) for f in families}
    return summary
