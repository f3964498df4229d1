"""Generation metrics: what a model writes, scored by a verifier, a reward model and/or a pairwise judge
against baseline answers, plus a KL(policy ‖ reference) estimate on the policy's own samples.

Text comes from the engine's one generator (:func:`alignkit.engine.generation.generate`), the KL samples from
its :func:`~alignkit.engine.generation.sample_ids` and their log-probs from its pair scorer. Win rates carry
a bootstrap CI and a length-controlled variant (Dubois et al., "Length-Controlled AlpacaEval", COLM 2024,
arXiv:2404.04475); the judge is asked in both orders (:func:`alignkit.rewards.judge.judge_pair`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from alignkit.data.records import Text
from alignkit.data.tokenize import PromptEncoder
from alignkit.engine.generation import SamplingParams, generate, sample_ids
from alignkit.engine.pairs import PairRows, score_pairs
from alignkit.eval import metrics
from alignkit.eval.common import EvalResult, clean, pair_layout, prompt_id, prompt_text
from alignkit.parallel import gather_in_order, my_share, process_group
from alignkit.progress import Bars
from alignkit.rewards.judge import Judge, judge_pair

# Verifier: (prompt, response) -> pass/fail, or None when the prompt is outside its scope.
Verifier = Callable[[str, str], bool | None]
# Reward scorer: (prompts, responses) -> one scalar per response, higher is better (e.g. a RewardModel).
RewardScorer = Callable[[Sequence[Text], Sequence[str]], Sequence[float]]
Rows = list[tuple[list[int], list[int]]]  # (prompt ids, response ids)


def synthetic_verifier(prompt: str, response: str) -> bool | None:
    """The synthetic task verifiers (:func:`alignkit.data.verify`); None for prompts of no synthetic family."""
    from alignkit.data.synthetic import family_of, verify

    try:
        family_of(prompt)
    except ValueError:
        return None
    return verify(prompt, response)


def exact_samples(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Text],
    max_new_tokens: int = 128,
    batch_size: int = 16,
    system: str | None = None,
    seed: int = 0,
    advance: Callable[[int], None] | None = None,
    n: int = 1,
) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, sampled response ids), ``n`` rows per prompt (prompt-major), drawn by the engine from the
    model's exact distribution: temperature 1, no top-k/top-p truncation, no repetition penalty, since a KL
    estimate is only unbiased on true samples of π. A response ends after its first EOS (kept: π chose to
    stop) or at ``max_new_tokens``. Ids, not text, so the scored sequence is exactly the sampled one
    (decode/re-encode is not an identity). The ``n`` samples of a prompt share one prefill; sampling uses a
    generator seeded with ``seed``, never the global RNG."""
    encoder = PromptEncoder(tokenizer)
    encoded = [encoder.encode_prompt(p, system) for p in prompts]
    exact = SamplingParams(max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                           repetition_penalty=1.0, seed=seed)
    out = sample_ids(model, encoded, exact, n, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id, batch_size=batch_size, progress=advance)
    return [p for p in encoded for _ in range(n)], [r for rs in out.responses for r in rs]


def row_logps(model: nn.Module, rows: Rows, pad_id: int, batch_size: int) -> np.ndarray:
    """Summed response log-probs of (prompt, response) rows through the engine's pair scorer: rows go two to
    a pair (one prompt shared when both rows have it, else a joint pair with a prompt per side; an odd last
    row gets an empty partner), so every row is scored exactly once in the best exact layout."""
    pairs = [PairRows(p, s, q_s, None if q_p == p else q_p) for (p, s), (q_p, q_s) in zip(rows[0::2], rows[1::2],
                                                                                         strict=False)]
    if len(rows) % 2:
        pairs.append(PairRows(rows[-1][0], rows[-1][1], []))
    scores = score_pairs(model, pairs, pad_id, max(1, batch_size // 2), pair_layout(model, pad_id))
    return torch.stack([scores.chosen.logps, scores.rejected.logps], 1).reshape(-1)[:len(rows)].numpy()


def _outcome(p: float, tie_margin: float) -> float:
    # Same rule as rewards.judge.compare: win above 0.5 + margin, loss below 0.5 − margin, tie in between.
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


def _kl_samples(policy: nn.Module, reference: nn.Module, rows: Rows, keep: list[int], kl_samples: int, n: int,
                tokenizer: Any, batch_size: int) -> list[list[tuple[float, float, int, bool]]]:
    """Per prompt: (policy log-prob, reference log-prob, tokens, hit max_new_tokens) of each kept sample."""
    pad = tokenizer.pad_token_id
    logp_policy = row_logps(policy, rows, pad, batch_size)
    logp_ref = row_logps(reference, rows, pad, batch_size)
    per_prompt: list[list[tuple[float, float, int, bool]]] = [[] for _ in range(n)]
    for j, i in enumerate(keep):  # sample i belongs to prompt i // kl_samples
        sample = rows[j][1]
        per_prompt[i // kl_samples].append((float(logp_policy[j]), float(logp_ref[j]), len(sample),
                                            sample[-1] != tokenizer.eos_token_id))
    return per_prompt


def _kl_summary(per_prompt: list[list[tuple[float, float, int, bool]]]) -> tuple[dict[str, Any], list[float | None]]:
    """The KL summary (k1, k3, per token) and the mean log-ratio per prompt, from every prompt's samples."""
    flat = [s for samples in per_prompt for s in samples]
    logp_policy = np.array([s[0] for s in flat], dtype=np.float64)
    logp_ref = np.array([s[1] for s in flat], dtype=np.float64)
    sample_tokens = np.array([s[2] for s in flat], dtype=float)
    est = metrics.kl_estimate(logp_policy, logp_ref)
    summary = {"k1": est.k1, "k3": est.k3, "n_samples": len(flat),
               "mean_sample_tokens": float(sample_tokens.mean()) if flat else None,
               "k1_per_token": float(np.sum(logp_policy - logp_ref) / max(sample_tokens.sum(), 1)),
               "samples_hit_max_new_tokens": int(sum(1 for s in flat if s[3]))}
    means = [float(np.mean([s[0] - s[1] for s in samples])) if samples else None for samples in per_prompt]
    return summary, means


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
    seed: int = 0,
    system: str | None = None,
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
    * ``reward_model``: ``(prompts, responses) -> scores``, e.g. a
      :class:`~alignkit.rewards.reward_model.RewardModel`; reports mean reward.
    * ``judge``: a pairwise :data:`~alignkit.rewards.judge.Judge` (e.g. ``LMJudge``), asked in both orders
      (:func:`~alignkit.rewards.judge.judge_pair`); needs ``baseline``.
    * ``reference``: estimates KL(policy || reference) from ``kl_samples`` pure samples (:func:`exact_samples`)
      per prompt, scoring both models' log-probs of the sampled token ids (k1 and k3, per sequence). The
      reference must share the policy's tokenizer.
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
    if reference is not None and kl_samples < 1:
        raise ValueError(f"kl_samples must be >= 1, got {kl_samples}")
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    texts = [prompt_text(p) for p in prompts]
    sampling = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=do_sample,
                    temperature=temperature, top_p=top_p, system=system, seed=seed)
    n = len(prompts)
    # several processes (torchrun): each scores every world-th prompt; the per-prompt results are gathered
    # back in input order, so the table and summary are built from all of them on every process
    rank, world = process_group()
    mine = my_share(n, rank, world)
    share_baseline = baseline if baseline is None or isinstance(baseline, nn.Module) else [baseline[i] for i in mine]
    local = _score_prompts(model, tokenizer, [prompts[i] for i in mine], share_baseline, baseline_tokenizer,
                           verifier, reward_model, judge, reference, kl_samples, sampling, Bars(progress), seconds)
    per_prompt = gather_in_order(n, mine, local, world)
    replies = [p["reply"] for p in per_prompt]
    base_replies = [p["base_reply"] for p in per_prompt] if baseline is not None else None
    out: dict[str, Any] = {"lengths": [p["length"] for p in per_prompt],
                           "base_lengths": [p["base_length"] for p in per_prompt] if baseline is not None else None}
    for key, column in (("passed", "passed"), ("base_passed", "base_passed"), ("rewards", "reward"),
                        ("base_rewards", "base_reward"), ("judge_p", "judge_p")):
        if column in per_prompt[0]:
            out[key] = [p[column] for p in per_prompt]
    kl_summary = None
    if reference is not None:
        kl_summary, out["kl_per_prompt"] = _kl_summary([p["kl"] for p in per_prompt])

    rows = _generation_rows(prompts, texts, replies, base_replies, out, tie_margin, prompt_ids)
    summary = _generation_summary(out, n, sampling, tie_margin, n_bootstrap)
    if kl_summary is not None:
        summary["kl"] = kl_summary
    seconds["total"] = time.perf_counter() - t_start
    summary["seconds"] = seconds
    return EvalResult(clean(summary), rows)


def _generation_rows(prompts: Sequence[Text], texts: list[str], replies: list[str], base_replies: list[str] | None,
                     out: dict[str, Any], tie_margin: float, prompt_ids: Sequence[str] | None
                     ) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for i in range(len(prompts)):
        row: dict[str, Any] = {"index": i, "prompt_id": prompt_ids[i] if prompt_ids is not None
                               else prompt_id(None, prompts[i]),
                               "prompt": texts[i], "response": replies[i], "response_tokens": out["lengths"][i]}
        if base_replies is not None:
            row.update({"baseline_response": base_replies[i], "baseline_tokens": out["base_lengths"][i]})
        if "passed" in out:
            row["verified"] = out["passed"][i]
            if "base_passed" in out:
                row["baseline_verified"] = out["base_passed"][i]
        if "rewards" in out:
            row["reward"] = out["rewards"][i]
            if "base_rewards" in out:
                row["baseline_reward"] = out["base_rewards"][i]
        if "judge_p" in out:
            row["judge_p"] = out["judge_p"][i]
            row["judge_outcome"] = _outcome(out["judge_p"][i], tie_margin)
        if "kl_per_prompt" in out:
            row["kl_log_ratio"] = out["kl_per_prompt"][i]
        rows.append(row)
    return rows


def _generation_summary(out: dict[str, Any], n: int, sampling: dict[str, Any], tie_margin: float,
                        n_bootstrap: int) -> dict[str, Any]:
    lengths, base_lengths = out["lengths"], out["base_lengths"]
    summary: dict[str, Any] = {
        "n_prompts": n,
        "sampling": {k: v for k, v in sampling.items() if k != "system"},
        "length": metrics.length_stats(lengths),
    }
    if base_lengths is not None:
        summary["baseline_length"] = metrics.length_stats(base_lengths)
    win: dict[str, Any] = {}
    if "passed" in out:
        passed, base_passed = out["passed"], out.get("base_passed")
        judged = [p for p in passed if p is not None]
        ver: dict[str, Any] = {"n_verified": len(judged), "pass_rate": float(np.mean(judged)) if judged else None}
        if base_passed is not None:
            idx = [i for i in range(n) if passed[i] is not None and base_passed[i] is not None]
            ver["baseline_pass_rate"] = float(np.mean([base_passed[i] for i in idx])) if idx else None
            if idx:
                win["verifier"] = _win_summary(_versus([float(passed[i]) for i in idx],
                                                       [float(base_passed[i]) for i in idx]),
                                               [lengths[i] for i in idx], [base_lengths[i] for i in idx],
                                               n_bootstrap)
        summary["verifier"] = ver
    if "rewards" in out:
        rewards = out["rewards"]
        summary["reward"] = {"mean": float(np.mean(rewards)), "median": float(np.median(rewards))}
        if "base_rewards" in out:
            summary["reward"]["baseline_mean"] = float(np.mean(out["base_rewards"]))
            win["reward_model"] = _win_summary(_versus(rewards, out["base_rewards"]), lengths, base_lengths,
                                               n_bootstrap)
    if "judge_p" in out:
        summary["judge"] = {"mean_p": float(np.mean(out["judge_p"])), "tie_margin": tie_margin}
        win["judge"] = _win_summary([_outcome(p, tie_margin) for p in out["judge_p"]], lengths, base_lengths,
                                    n_bootstrap)
    if win:
        summary["win_rate"] = win
    return summary


def _score_prompts(model: nn.Module, tokenizer: Any, prompts: Sequence[Text], baseline: Any, baseline_tokenizer: Any,
                   verifier: Verifier | None, reward_model: RewardScorer | None, judge: Judge | None,
                   reference: nn.Module | None, kl_samples: int, sampling: dict[str, Any], bars: Bars,
                   seconds: dict[str, float]) -> list[dict[str, Any]]:
    """Everything measured per prompt, one dict per prompt: replies (and the baseline's), their lengths, the
    verifier, reward and judge outcomes, and the KL samples' log-probs."""
    n, texts = len(prompts), [prompt_text(p) for p in prompts]
    rows: list[dict[str, Any]] = [{} for _ in range(n)]
    if not n:  # more processes than prompts: nothing to do here
        return rows

    def timed(name: str, start: float) -> None:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start

    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    def put(column: str, values: Sequence[Any]) -> None:
        for row, value in zip(rows, values, strict=True):
            row[column] = value

    with bars.open():
        t0 = time.perf_counter()
        replies = generate(model, tokenizer, prompts, progress=bars.task("generating (policy)", n), **sampling)
        timed("generate_policy", t0)
        put("reply", replies)
        put("length", [n_tokens(r) for r in replies])
        base_replies: list[str] | None = None
        if isinstance(baseline, nn.Module):
            t0 = time.perf_counter()
            base_replies = generate(baseline, baseline_tokenizer or tokenizer, prompts,
                                    progress=bars.task("generating (baseline)", n), **sampling)
            timed("generate_baseline", t0)
        elif baseline is not None:
            base_replies = [str(b) for b in baseline]
        if base_replies is not None:
            put("base_reply", base_replies)
            put("base_length", [n_tokens(r) for r in base_replies])
        if verifier is not None:
            put("passed", [verifier(t, r) for t, r in zip(texts, replies, strict=True)])
            if base_replies is not None:
                put("base_passed", [verifier(t, r) for t, r in zip(texts, base_replies, strict=True)])
        if reward_model is not None:
            t0 = time.perf_counter()
            put("reward", [float(v) for v in reward_model(prompts, replies)] if n else [])
            if base_replies is not None:
                put("base_reward", [float(v) for v in reward_model(prompts, base_replies)] if n else [])
            timed("reward_model", t0)
        if judge is not None:
            assert base_replies is not None
            t0 = time.perf_counter()
            advance = bars.task("judging (both orders)", n)
            for row, t, a, b in zip(rows, texts, replies, base_replies, strict=True):
                row["judge_p"] = judge_pair(judge, t, a, b)
                advance(1)
            timed("judge", t0)
        if reference is not None:
            t0 = time.perf_counter()
            prompt_ids_kl, sampled = exact_samples(model, tokenizer, prompts, sampling["max_new_tokens"],
                                                   sampling["batch_size"], sampling["system"], sampling["seed"] + 1,
                                                   bars.task("sampling for KL", n), n=kl_samples)
            keep = [i for i, s in enumerate(sampled) if s]
            kl_rows = [(prompt_ids_kl[i], sampled[i]) for i in keep]
            timed("kl_sampling", t0)
    if reference is not None:
        t0 = time.perf_counter()
        put("kl", _kl_samples(model, reference, kl_rows, keep, kl_samples, n, tokenizer, sampling["batch_size"]))
        timed("kl_scoring", t0)
    return rows
