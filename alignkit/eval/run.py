"""The evaluation recipe: score preference pairs and generations with models, tabulate, summarise.

Two entry points, both returning an :class:`EvalResult` (a JSON-ready ``summary`` and one row per example):

* :func:`evaluate_preferences`: log-probs of chosen and rejected responses under the policy (and a reference
  and an earlier checkpoint when given), then the metrics of METHODS.md §1 and §17: likelihood ranking
  accuracy (summed and length-normalised), implicit-reward accuracy and margins, idealized ranking accuracy
  R*, the alignment gap, per-example difficulty and the share of initially mis-ranked pairs that flipped.
* :func:`evaluate_generations`: batched generation on prompts, scored by a verifier, a reward model and/or a
  pairwise judge against baseline answers (win rate with bootstrap CI, length-adjusted win rate, lengths),
  plus a KL(policy || reference) estimate on the policy's own samples.

All metric arithmetic is delegated to :mod:`alignkit.eval.metrics`; this module only produces the inputs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn

from alignkit.data.records import PreferencePair, Text
from alignkit.data.tokenize import EncodedPair, PromptEncoder, TruncationStats, encode_pair, prompt_messages
from alignkit.engine.generation import generate
from alignkit.engine.layouts import collate
from alignkit.engine.logprobs import sequence_logps
from alignkit.eval import metrics
from alignkit.eval.judge import Judge, judge_pair

__all__ = [
    "ALPHA_KEY",
    "EvalResult",
    "RewardModel",
    "evaluate_generations",
    "evaluate_preferences",
    "load_reward_model",
    "prompt_text",
    "synthetic_verifier",
    "write_result",
]

ALPHA_KEY = "agreement"
# Verifier: (prompt, response) -> pass/fail, or None when the prompt is outside its scope.
Verifier = Callable[[str, str], bool | None]
# Reward scorer: (prompts, responses) -> one scalar per response, higher is better.
RewardScorer = Callable[[Sequence[Text], Sequence[str]], Sequence[float]]


@dataclass
class EvalResult:
    """``summary`` is JSON-serialisable; ``per_example`` has one flat dict per pair (or prompt)."""

    summary: dict[str, Any]
    per_example: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------------


class _Bars:
    """Rich progress bars on stderr, or no-ops when disabled (tests, library use).

    Off a terminal (nohup, CI logs) rich draws nothing until the end, so a plain line is printed at every
    tenth of the work instead: a long background run must show that it is alive and how fast it goes.
    """

    def __init__(self, enabled: bool) -> None:
        self.console = Console(stderr=True)
        self.lines = enabled and not self.console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), console=self.console, disable=not enabled or self.lines,
        )

    @contextmanager
    def open(self) -> Iterator[_Bars]:
        with self.progress:
            yield self

    def task(self, description: str, total: int) -> Callable[[int], None]:
        task_id = self.progress.add_task(description, total=total)
        if not self.lines:
            return lambda n: self.progress.advance(task_id, n)
        state = {"done": 0, "next": 0.1, "start": time.perf_counter()}

        def advance(n: int) -> None:
            state["done"] += n
            if total and state["done"] / total >= state["next"] - 1e-9:
                elapsed = time.perf_counter() - state["start"]
                eta = elapsed * (total - state["done"]) / state["done"]
                self.console.print(f"{description}: {state['done']}/{total} ({elapsed:.0f} s, eta {eta:.0f} s)",
                                   highlight=False)
                while state["done"] / total >= state["next"] - 1e-9:
                    state["next"] += 0.1

        return advance


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def prompt_text(prompt: Text) -> str:
    """A prompt as plain text: strings unchanged, chat messages rendered ``Role: content`` per turn."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt_messages(prompt))


def _prompt_id(record: PreferencePair | None, prompt: Text) -> str:
    if record is not None:
        for key in ("task_id", "prompt_id", "id"):
            value = record.metadata.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool):
                return str(value)
    # Content-addressed, so the same prompt gets the same id across runs, files and checkpoints.
    return hashlib.sha256(prompt_text(prompt).encode("utf-8")).hexdigest()[:12]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def same_tokenizer(a: Any, b: Any) -> bool:
    """Whether two tokenizers turn the same text into the same ids (so one encoding serves both models)."""
    if a is b:
        return True
    return (type(a) is type(b) and a.get_vocab() == b.get_vocab()
            and getattr(a, "chat_template", None) == getattr(b, "chat_template", None)
            and (a.bos_token_id, a.eos_token_id) == (b.bos_token_id, b.eos_token_id))


def _float(x: Any) -> float | None:
    """JSON-safe float: NaN/inf become None so summary.json stays valid JSON."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _clean(obj: Any) -> Any:
    """Recursively make ``obj`` JSON-safe (numpy scalars to python, non-finite floats to None)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return _float(obj)
    return obj


# --------------------------------------------------------------------------------------------------
# Scoring pairs with the log-prob engine
# --------------------------------------------------------------------------------------------------


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


def score_pairs(
    model: nn.Module,
    encoded: Sequence[EncodedPair],
    pad_id: int,
    batch_size: int = 8,
    autocast_dtype: torch.dtype | None = None,
    advance: Callable[[int], None] | None = None,
    layout: Literal["auto", "shared", "padded"] = "auto",
) -> PairLogps:
    """Summed log-probs of chosen and rejected under ``model``, in the input order.

    ``layout="auto"`` feeds each prompt once for both responses (shared-prefix rows, packed) when the engine
    confirms that is exact for this model, else one padded row per response.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(encoded)
    out = np.zeros((4, n), dtype=np.float64)
    # Longest first: similar lengths share a batch (little padding) and an out-of-memory error shows at once.
    order = sorted(range(n), key=lambda i: -(len(encoded[i].prompt) + max(len(encoded[i].chosen),
                                                                          len(encoded[i].rejected))))
    device = _device(model)
    shared = layout == "shared" or (layout == "auto" and _shared_prefix_ok(model, pad_id))
    with _eval_mode(model):
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            k = len(idx)
            if shared:
                from alignkit.engine.layouts import build_groups

                groups = [(encoded[i].prompt, [encoded[i].chosen, encoded[i].rejected]) for i in idx]
                result = sequence_logps(model, build_groups(groups, pad_id, pack=True).to(device),
                                        autocast_dtype=autocast_dtype)
                # sequences are numbered group-major: (chosen, rejected) of pair 0, then of pair 1, ...
                logps, tokens = result.logps.double().cpu().numpy(), result.tokens.double().cpu().numpy()
                out[0, idx], out[1, idx] = logps[0::2], logps[1::2]
                out[2, idx], out[3, idx] = tokens[0::2], tokens[1::2]
            else:
                rows = [(encoded[i].prompt, encoded[i].chosen) for i in idx]
                rows += [(encoded[i].prompt, encoded[i].rejected) for i in idx]
                result = sequence_logps(model, collate(rows, pad_id).to(device), autocast_dtype=autocast_dtype)
                logps, tokens = result.logps.double().cpu().numpy(), result.tokens.double().cpu().numpy()
                out[0, idx], out[1, idx] = logps[:k], logps[k:]
                out[2, idx], out[3, idx] = tokens[:k], tokens[k:]
            if advance is not None:
                advance(k)
    return PairLogps(out[0], out[1], out[2], out[3])


def _shared_prefix_ok(model: nn.Module, pad_id: int) -> bool:
    """Whether the engine's shared-prefix layout (prompt fed once for chosen and rejected) is exact here.

    It saves the prompt's second forward pass, which dominates multi-turn data such as HH-RLHF. Anything
    unexpected (layout not available in this build, a model that ignores 4-D masks) means padded rows.
    """
    try:
        from alignkit.engine.exactness import layout_support

        return layout_support(model, pad_id) is None
    except Exception:  # noqa: BLE001 - the padded layout is always correct, so fall back quietly
        return False


def _alphas(pairs: Sequence[PreferencePair], alpha: float, alpha_key: str, alpha_max: float
            ) -> tuple[np.ndarray, int, int]:
    """Per-pair α (metadata ``alpha_key`` where present, else ``alpha``) clipped into [1−alpha_max, alpha_max].

    Annotator agreement is often exactly 1 (everyone agreed), but α = 1 makes (1/β)·log(α/(1−α)) infinite and
    every pair trivially "flippable" (§17), so such values are smoothed by clipping. Returns
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

    bars = _Bars(progress)
    with bars.open():
        def run(name: str, scored_model: nn.Module, scored_tokenizer: Any | None) -> PairLogps:
            t0 = time.perf_counter()
            tok = tokenizer if scored_tokenizer is None else scored_tokenizer
            items = encoded if same_tokenizer(tok, tokenizer) else encode_pairs(
                tok, pairs, max_length, max_prompt_length)[0]
            result = score_pairs(scored_model, items, tok.pad_token_id, batch_size, autocast_dtype,
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

    # ---- per-pair quantities, all via the metrics module so the table and the summary cannot disagree
    pc, pr, tc, tr = policy.chosen, policy.rejected, policy.tokens_chosen, policy.tokens_rejected
    correct = pc > pr
    correct_norm = pc / np.maximum(tc, 1) > pr / np.maximum(tr, 1)
    base = ref if ref is not None else policy  # π_ref for R* and difficulty
    diff = metrics.difficulty(base.chosen, base.rejected)
    threshold = metrics.difficulty_loss_threshold(base.chosen, base.rejected, beta)
    ideal = base.chosen - base.rejected + np.log(alphas / (1.0 - alphas)) / beta > 0
    margins = metrics.reward_margins(pc, pr, ref.chosen, ref.rejected, beta) if ref is not None else None
    flips = None
    if early is not None:
        flips = metrics.flipped_share(early.chosen, early.rejected, pc, pr)

    rows = []
    for i, pair in enumerate(pairs):
        row: dict[str, Any] = {
            "index": i,
            "prompt_id": _prompt_id(pair, pair.prompt),
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

    # ---- summary
    r = metrics.ranking_accuracy(pc, pr)
    r_ci = metrics.bootstrap_ci(correct.astype(float), n_resamples=n_bootstrap) if n_bootstrap else None
    r_star = metrics.idealized_ranking_accuracy(base.chosen, base.rejected, beta, alphas)
    summary: dict[str, Any] = {
        "n_examples": len(pairs),
        "beta": beta,
        "reference": "given" if reference is not None else "policy (no reference given)",
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
        summary["rewards"] = {
            "accuracies": metrics.implicit_reward_accuracy(pc, pr, ref.chosen, ref.rejected, beta),
            "margins": float(margins.mean()),
            "margins_median": float(np.median(margins)),
            "chosen": float(beta * (pc - ref.chosen).mean()),
            "rejected": float(beta * (pr - ref.rejected).mean()),
        }
        summary["ranking"]["reference_accuracy"] = metrics.ranking_accuracy(ref.chosen, ref.rejected)
    summary["idealized"] = {
        "r_star": r_star,
        "alignment_gap": metrics.alignment_gap(r_star, r),
        "alpha_mean": float(alphas.mean()),
        "alpha_from_metadata": n_alpha_meta,
        "alpha_constant": alpha,
        "alpha_clipped": n_alpha_clipped,
    }
    summary["difficulty"] = {
        "mean": float(diff.mean()), "median": float(np.median(diff)),
        "p90": float(np.percentile(diff, 90)),
        "share_misranked_by_reference": float(np.mean(diff >= 0)),  # ties count as mis-ranked (§17)
        "loss_threshold_median": float(np.median(threshold)),
    }
    if flips is not None:
        summary["flips"] = {"share": flips.share, "n_flipped": flips.n_flipped,
                            "n_misranked_before": flips.n_misranked,
                            "before_accuracy": metrics.ranking_accuracy(early.chosen, early.rejected)}
    families = sorted({row["family"] for row in rows if "family" in row})
    if families:
        summary["ranking"]["by_family"] = {
            f: float(np.mean([row["correct"] for row in rows if row.get("family") == f])) for f in families}
    summary["truncation"] = {"prompts": stats.prompt_truncated, "responses": stats.response_truncated,
                             "max_length": max_length, "max_prompt_length": max_prompt_length}
    seconds["total"] = time.perf_counter() - t_start
    summary["seconds"] = seconds
    return EvalResult(_clean(summary), rows)


# --------------------------------------------------------------------------------------------------
# Generation-based evaluation
# --------------------------------------------------------------------------------------------------


def synthetic_verifier(prompt: str, response: str) -> bool | None:
    """The synthetic task verifiers (:func:`alignkit.data.verify`); None for prompts of no synthetic family."""
    from alignkit.data.synthetic import family_of, verify

    try:
        family_of(prompt)
    except ValueError:
        return None
    return verify(prompt, response)


class RewardModel:
    """Scores (prompt, response) with any HF sequence-classification model; higher is better.

    The conversation is rendered with the reward model's own chat template (plain ``User:/Assistant:`` text
    if it has none), since that is the format it was trained on. With one label the logit is the reward;
    with two, the log-odds ``logit[1] − logit[0]`` of the positive class. Inputs longer than ``max_length``
    keep their end, where the response is.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, batch_size: int = 8, max_length: int = 1024,
                 system: str | None = None) -> None:
        labels = int(getattr(model.config, "num_labels", 1))
        if labels not in (1, 2):
            raise ValueError(f"reward model has {labels} labels; expected 1 (a scalar reward) or 2")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(model.config, "pad_token_id", None) is None:
            # HF finds each row's last real token through pad_token_id; without it batching fails.
            model.config.pad_token_id = tokenizer.pad_token_id
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length, self.system = batch_size, max_length, system

    def text(self, prompt: Text, response: str) -> str:
        messages = prompt_messages(prompt, self.system) + [{"role": "assistant", "content": response}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages).rstrip()

    def _ids(self, text: str) -> list[int]:
        templated = bool(getattr(self.tokenizer, "chat_template", None))
        ids = self.tokenizer(text, add_special_tokens=not templated).input_ids
        return ids[-self.max_length:]

    def __call__(self, prompts: Sequence[Text], responses: Sequence[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        encoded = [self._ids(self.text(p, r)) for p, r in zip(prompts, responses, strict=True)]
        scores: list[float] = []
        device = _device(self.model)
        pad = self.tokenizer.pad_token_id
        with _eval_mode(self.model):
            for start in range(0, len(encoded), self.batch_size):
                chunk = encoded[start:start + self.batch_size]
                width = max(len(ids) for ids in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, item in enumerate(chunk):
                    # Left padding: the last position is the last real token, whatever pad_token_id is.
                    ids[row, width - len(item):] = torch.tensor(item)
                    mask[row, width - len(item):] = 1
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
                values = logits[:, 0] if logits.shape[-1] == 1 else logits[:, 1] - logits[:, 0]
                scores.extend(values.cpu().tolist())
        return scores


def load_reward_model(spec: str, device: str | None = "auto", dtype: str | torch.dtype = "float32",
                      batch_size: int = 8, max_length: int = 1024) -> RewardModel:
    """A :class:`RewardModel` from a local directory or hub id of an ``AutoModelForSequenceClassification``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignkit.models import resolve_device, resolve_dtype

    path = Path(spec).expanduser()
    if spec.startswith((".", "/", "~")) and not path.is_dir():
        raise FileNotFoundError(f"reward model directory {spec!r} not found")
    location = str(path) if path.is_dir() else spec
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(location, dtype=resolve_dtype(dtype),
                                                                         output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load reward model {spec!r} as a sequence-classification model: {err}"
                         ) from err
    missing = list(info.get("missing_keys", [])) + list(info.get("mismatched_keys", []))
    if missing:
        # A causal LM loads "fine" here with a freshly initialised head: random rewards, so refuse.
        raise ValueError(f"reward model {spec!r} has no trained classification head (missing or mismatched "
                         f"weights: {', '.join(map(str, missing[:3]))}); give a sequence-classification "
                         "checkpoint")
    model.to(resolve_device(device))
    return RewardModel(model, tokenizer, batch_size=batch_size, max_length=max_length)


@torch.no_grad()
def sample_token_ids(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Text],
    max_new_tokens: int = 128,
    batch_size: int = 16,
    system: str | None = None,
    seed: int = 0,
    advance: Callable[[int], None] | None = None,
) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, sampled response ids) per prompt, drawn from the model's exact distribution.

    Temperature 1 and no top-k/top-p truncation: a KL estimate is only unbiased on true samples of π.
    Responses are cut after their first EOS (kept: π chose to stop) or at ``max_new_tokens``. Ids, not decoded
    text, so the scored sequence is exactly the sampled one (decode/re-encode is not an identity).
    """
    encoder = PromptEncoder(tokenizer)
    encoded = [encoder.encode_prompt(p, system) for p in prompts]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    device = _device(model)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    responses: list[list[int]] = [[] for _ in prompts]
    try:
        with _eval_mode(model):
            order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                width = max(len(encoded[i]) for i in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, i in enumerate(chunk):
                    ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
                    mask[row, width - len(encoded[i]):] = 1
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                     max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0,
                                     top_p=1.0, top_k=0, pad_token_id=pad, eos_token_id=eos,
                                     # a model's generation_config may set these; they would bias the estimate
                                     repetition_penalty=1.0, no_repeat_ngram_size=0)
                for row, i in enumerate(chunk):
                    new = out[row, width:].tolist()
                    responses[i] = new[:new.index(eos) + 1] if eos in new else new
                if advance is not None:
                    advance(len(chunk))
    finally:
        torch.random.set_rng_state(generator_state)
    return encoded, responses


def _sequence_logps(model: nn.Module, rows: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int,
                    autocast_dtype: torch.dtype | None = None) -> np.ndarray:
    out = np.zeros(len(rows))
    device = _device(model)
    with _eval_mode(model):
        for start in range(0, len(rows), batch_size):
            batch = collate(rows[start:start + batch_size], pad_id).to(device)
            out[start:start + batch_size] = sequence_logps(model, batch,
                                                           autocast_dtype=autocast_dtype).logps.double().cpu()
    return out


def _outcome(p: float, tie_margin: float) -> float:
    # Same rule as judge.compare: win above 0.5 + margin, loss below 0.5 − margin, tie in between.
    return 1.0 if p > 0.5 + tie_margin else 0.0 if p < 0.5 - tie_margin else 0.5


def _versus(policy: Sequence[float], baseline: Sequence[float]) -> list[float]:
    return [1.0 if a > b else 0.0 if a < b else 0.5 for a, b in zip(policy, baseline, strict=True)]


def _win_summary(outcomes: Sequence[float], len_policy: Sequence[int], len_baseline: Sequence[int],
                 n_bootstrap: int) -> dict[str, Any]:
    y = np.asarray(outcomes, dtype=float)
    est = metrics.win_rate(y, n_resamples=max(n_bootstrap, 1))
    lc = metrics.length_adjusted_win_rate(y, len_policy, len_baseline, n_resamples=n_bootstrap)
    return {"win_rate": est.estimate, "low": est.low, "high": est.high,
            "wins": int(np.sum(y == 1)), "ties": int(np.sum(y == 0.5)), "losses": int(np.sum(y == 0)),
            "length_adjusted": lc.win_rate, "length_adjusted_low": lc.low, "length_adjusted_high": lc.high,
            "length_slope": lc.slope}


def evaluate_generations(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Text],
    *,
    baseline: nn.Module | Sequence[str] | None = None,
    baseline_tokenizer: Any | None = None,
    verifier: Verifier | None = None,
    reward_model: RewardScorer | None = None,
    judge: Judge | None = None,
    reference: nn.Module | None = None,
    kl_samples: int = 1,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    system: str | None = None,
    seed: int = 0,
    tie_margin: float = 0.05,
    n_bootstrap: int = 1000,
    prompt_ids: Sequence[str] | None = None,
    progress: bool = False,
) -> EvalResult:
    """Generate replies to ``prompts`` and score them.

    * ``baseline``: a model (answers generated with the same settings) or ready-made answers, one per prompt.
      Every scorer below that has a baseline also yields a win rate (1 win, ½ tie, 0 loss per prompt) with a
      bootstrap CI and a length-adjusted win rate (lengths in policy-tokenizer tokens).
    * ``verifier``: ``(prompt, response) -> bool | None`` (None: not applicable), e.g.
      :func:`synthetic_verifier`; reports the pass rate.
    * ``reward_model``: ``(prompts, responses) -> scores``, e.g. a :class:`RewardModel`; reports mean reward.
    * ``judge``: a pairwise :data:`~alignkit.eval.judge.Judge` (e.g. ``LMJudge``), asked in both orders
      (:func:`~alignkit.eval.judge.judge_pair`); needs ``baseline``.
    * ``reference``: estimates KL(policy || reference) from ``kl_samples`` pure samples (temperature 1, no
      truncation) per prompt, scoring both models' log-probs of the sampled token ids (k1 and k3, per
      sequence). The reference must share the policy's tokenizer.
    """
    if not prompts:
        raise ValueError("no prompts to generate from")
    if judge is not None and baseline is None:
        raise ValueError("judging needs a baseline to compare against")
    if isinstance(baseline, Sequence) and not isinstance(baseline, str | nn.Module) and \
            len(baseline) != len(prompts):
        raise ValueError(f"{len(baseline)} baseline answers for {len(prompts)} prompts")
    if prompt_ids is not None and len(prompt_ids) != len(prompts):
        raise ValueError(f"{len(prompt_ids)} prompt ids for {len(prompts)} prompts")
    if not 0.0 <= tie_margin < 0.5:  # same rule as judge.compare: 0.5 or more would make every outcome a tie
        raise ValueError(f"tie_margin must be in [0, 0.5), got {tie_margin}")
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    texts = [prompt_text(p) for p in prompts]
    sampling = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=do_sample,
                    temperature=temperature, top_p=top_p, system=system, seed=seed)
    n = len(prompts)

    bars = _Bars(progress)
    with bars.open():
        t0 = time.perf_counter()
        replies = generate(model, tokenizer, prompts, progress=bars.task("generating (policy)", n), **sampling)
        seconds["generate_policy"] = time.perf_counter() - t0
        base_replies: list[str] | None = None
        if isinstance(baseline, nn.Module):
            t0 = time.perf_counter()
            base_replies = generate(baseline, baseline_tokenizer or tokenizer, prompts,
                                    progress=bars.task("generating (baseline)", n), **sampling)
            seconds["generate_baseline"] = time.perf_counter() - t0
        elif baseline is not None:
            base_replies = [str(b) for b in baseline]

        def n_tokens(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False).input_ids)

        lengths = [n_tokens(r) for r in replies]
        base_lengths = [n_tokens(r) for r in base_replies] if base_replies is not None else None

        passed = base_passed = None
        if verifier is not None:
            passed = [verifier(t, r) for t, r in zip(texts, replies, strict=True)]
            if base_replies is not None:
                base_passed = [verifier(t, r) for t, r in zip(texts, base_replies, strict=True)]

        rewards = base_rewards = None
        if reward_model is not None:
            t0 = time.perf_counter()
            rewards = [float(s) for s in reward_model(prompts, replies)]
            if base_replies is not None:
                base_rewards = [float(s) for s in reward_model(prompts, base_replies)]
            seconds["reward_model"] = time.perf_counter() - t0

        judge_p = None
        if judge is not None:
            assert base_replies is not None
            t0 = time.perf_counter()
            advance = bars.task("judging (both orders)", n)
            judge_p = []
            for t, a, b in zip(texts, replies, base_replies, strict=True):
                judge_p.append(judge_pair(judge, t, a, b))
                advance(1)
            seconds["judge"] = time.perf_counter() - t0

        kl_rows = None
        if reference is not None:
            if kl_samples < 1:
                raise ValueError(f"kl_samples must be >= 1, got {kl_samples}")
            t0 = time.perf_counter()
            repeated = [p for p in prompts for _ in range(kl_samples)]
            prompt_ids_kl, sampled = sample_token_ids(model, tokenizer, repeated, max_new_tokens, batch_size,
                                                      system, seed + 1, bars.task("sampling for KL",
                                                                                  len(repeated)))
            kl_rows = [(p, s) for p, s in zip(prompt_ids_kl, sampled, strict=True) if s]
            seconds["kl_sampling"] = time.perf_counter() - t0

    kl_summary = None
    kl_per_prompt: list[float | None] = [None] * n
    if kl_rows is not None:
        t0 = time.perf_counter()
        pad = tokenizer.pad_token_id
        logp_policy = _sequence_logps(model, kl_rows, pad, batch_size)
        logp_ref = _sequence_logps(reference, kl_rows, pad, batch_size)
        est = metrics.kl_estimate(logp_policy, logp_ref)
        sample_tokens = np.array([len(s) for _, s in kl_rows], dtype=float)
        # Map samples back to their prompt (empty samples were dropped, so walk the kept ones).
        keep = [i for i, (_, s) in enumerate(zip(prompt_ids_kl, sampled, strict=True)) if s]
        per_prompt: dict[int, list[float]] = defaultdict(list)
        for j, i in enumerate(keep):
            per_prompt[i // kl_samples].append(float(logp_policy[j] - logp_ref[j]))
        kl_per_prompt = [float(np.mean(per_prompt[i])) if per_prompt[i] else None for i in range(n)]
        kl_summary = {"k1": est.k1, "k3": est.k3, "n_samples": len(kl_rows),
                      "mean_sample_tokens": float(sample_tokens.mean()) if len(kl_rows) else None,
                      "k1_per_token": float(np.sum(logp_policy - logp_ref) / max(sample_tokens.sum(), 1)),
                      "samples_hit_max_new_tokens": int(sum(1 for _, s in kl_rows
                                                            if s[-1] != tokenizer.eos_token_id))}
        seconds["kl_scoring"] = time.perf_counter() - t0

    # ---- per-example rows
    rows: list[dict[str, Any]] = []
    for i in range(n):
        row: dict[str, Any] = {"index": i, "prompt_id": prompt_ids[i] if prompt_ids is not None
                               else _prompt_id(None, prompts[i]),
                               "prompt": texts[i], "response": replies[i], "response_tokens": lengths[i]}
        if base_replies is not None:
            row.update({"baseline_response": base_replies[i], "baseline_tokens": base_lengths[i]})
        if passed is not None:
            row["verified"] = passed[i]
            if base_passed is not None:
                row["baseline_verified"] = base_passed[i]
        if rewards is not None:
            row["reward"] = rewards[i]
            if base_rewards is not None:
                row["baseline_reward"] = base_rewards[i]
        if judge_p is not None:
            row["judge_p"] = judge_p[i]
            row["judge_outcome"] = _outcome(judge_p[i], tie_margin)
        if kl_rows is not None:
            row["kl_log_ratio"] = kl_per_prompt[i]
        rows.append(row)

    # ---- summary
    summary: dict[str, Any] = {
        "n_prompts": n,
        "sampling": {k: v for k, v in sampling.items() if k != "system"},
        "length": metrics.length_stats(lengths),
    }
    if base_lengths is not None:
        summary["baseline_length"] = metrics.length_stats(base_lengths)
    win: dict[str, Any] = {}
    if passed is not None:
        judged = [p for p in passed if p is not None]
        ver: dict[str, Any] = {"n_verified": len(judged),
                               "pass_rate": float(np.mean(judged)) if judged else None}
        if base_passed is not None:
            both = [(a, b) for a, b in zip(passed, base_passed, strict=True) if a is not None and b is not None]
            ver["baseline_pass_rate"] = float(np.mean([b for _, b in both])) if both else None
            if both:
                idx = [i for i in range(n) if passed[i] is not None and base_passed[i] is not None]
                win["verifier"] = _win_summary(_versus([float(a) for a, _ in both], [float(b) for _, b in both]),
                                               [lengths[i] for i in idx], [base_lengths[i] for i in idx],
                                               n_bootstrap)
        summary["verifier"] = ver
    if rewards is not None:
        summary["reward"] = {"mean": float(np.mean(rewards)), "median": float(np.median(rewards))}
        if base_rewards is not None:
            summary["reward"]["baseline_mean"] = float(np.mean(base_rewards))
            win["reward_model"] = _win_summary(_versus(rewards, base_rewards), lengths, base_lengths, n_bootstrap)
    if judge_p is not None:
        summary["judge"] = {"mean_p": float(np.mean(judge_p)), "tie_margin": tie_margin}
        win["judge"] = _win_summary([_outcome(p, tie_margin) for p in judge_p], lengths, base_lengths,
                                    n_bootstrap)
    if win:
        summary["win_rate"] = win
    if kl_summary is not None:
        summary["kl"] = kl_summary
    seconds["total"] = time.perf_counter() - t_start
    summary["seconds"] = seconds
    return EvalResult(_clean(summary), rows)


# --------------------------------------------------------------------------------------------------
# Writing results
# --------------------------------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp creates 0600 files; results are meant to be shared like any file the user writes.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_table(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write rows as Parquet (``.parquet``) or JSON Lines (anything else), atomically."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns: dict[str, list[Any]] = {}
        for row in rows:
            for key in row:
                columns.setdefault(key, [])
        for key in columns:
            columns[key] = [_clean(row.get(key)) for row in rows]
        _atomic_write(path, lambda tmp: pq.write_table(pa.table(columns), tmp))
    else:
        def dump(tmp: Path) -> None:
            with tmp.open("w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(_clean(row), ensure_ascii=False) + "\n")

        _atomic_write(path, dump)
    return path


def write_result(
    out_dir: str | Path,
    summary: dict[str, Any],
    per_example: list[dict[str, Any]] | None = None,
    generations: list[dict[str, Any]] | None = None,
    fmt: Literal["parquet", "jsonl"] = "parquet",
) -> dict[str, Path]:
    """Write ``out_dir/eval/{summary.json, per_example.<fmt>, generations.<fmt>}``; returns the paths.

    Stale tables are removed: one in the other format (the report prefers Parquet), and any table this run
    does not produce (``None``), so the directory never pairs the new summary with an old run's rows.
    """
    if fmt not in ("parquet", "jsonl"):
        raise ValueError(f"format must be 'parquet' or 'jsonl', got {fmt!r}")
    eval_dir = Path(out_dir) / "eval"
    paths: dict[str, Path] = {}
    other = "jsonl" if fmt == "parquet" else "parquet"
    for name, rows in (("per_example", per_example), ("generations", generations)):
        (eval_dir / f"{name}.{other}").unlink(missing_ok=True)
        if rows is None:
            (eval_dir / f"{name}.{fmt}").unlink(missing_ok=True)
            continue
        paths[name] = write_table(rows, eval_dir / f"{name}.{fmt}")
    summary_path = eval_dir / "summary.json"
    _atomic_write(summary_path, lambda tmp: tmp.write_text(json.dumps(_clean(summary), indent=2) + "\n",
                                                           encoding="utf-8"))
    paths["summary"] = summary_path
    return paths
