"""``greedy``, ``sample`` and ``best_of_n``, and the sampling helper every strategy shares.

Best-of-N (reranking N samples with a reward; e.g. Stiennon et al., "Learning to summarize from human
feedback", NeurIPS 2020, arXiv:2009.01325; Nakano et al., WebGPT, arXiv:2112.09332): N samples per prompt from
ONE prefill (the engine repeats the prompt's KV cache N times), scored by the reward in batches, the highest
reward kept, ties broken by the higher log-prob under the model. With a verifier reward (pass/fail) the
best-of-N' response passes iff any of N' samples passes, so the pass rate at every N' <= N comes from the same
N samples with the unbiased estimator 1 − C(N−c, N')/C(N, N') for c passing samples (Chen et al., "Evaluating
Large Language Models Trained on Code", arXiv:2107.03374).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from alignkit.data.tokenize import PromptEncoder
from alignkit.decoding.base import Candidate, Context, Decoded, register, select_best
from alignkit.engine.generation import SamplingParams, decode_response, sample_ids
from alignkit.stats import bootstrap_mean

SAMPLING = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "stop", "seed")
Item = tuple[Any, str | None]  # (prompt, system)


def encode_prompts(ctx: Context, items: Sequence[Item]) -> list[list[int]]:
    """Prompt ids in the model's chat template (as training and eval encode them)."""
    encoder = PromptEncoder(ctx.tokenizer)
    return [encoder.encode_prompt(prompt, system if system is not None else ctx.settings.system)
            for prompt, system in items]


def sampling_params(ctx: Context, do_sample: bool, max_new_tokens: int | None = None,
                    stop: Sequence[str] = ()) -> SamplingParams:
    s = ctx.settings
    return SamplingParams(max_new_tokens=max_new_tokens or s.max_new_tokens, do_sample=do_sample,
                          temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                          repetition_penalty=s.repetition_penalty, stop=tuple(s.stop) + tuple(stop), seed=s.seed)


def sample_candidates(ctx: Context, ids: Sequence[list[int]], params: SamplingParams, n: int = 1,
                      clean=None, generator=None) -> list[list[Candidate]]:
    """``n`` candidates per prompt of ids (text, tokens, log-prob), through the engine's one generator."""
    out = sample_ids(ctx.model, ids, params, n, eos_token_id=ctx.tokenizer.eos_token_id,
                     pad_token_id=ctx.tokenizer.pad_token_id, tokenizer=ctx.tokenizer,
                     batch_size=ctx.settings.batch_size, return_logps=True, generator=generator)
    groups = []
    for responses, logps in zip(out.responses, out.logps, strict=True):
        group = []
        for r, lp in zip(responses, logps, strict=True):
            text = decode_response(ctx.tokenizer, r, params.stop)
            group.append(Candidate(clean(text) if clean else text, len(r), lp))
        groups.append(group)
    return groups


def _single(ctx: Context, items: Sequence[Item], do_sample: bool) -> list[Decoded]:
    groups = sample_candidates(ctx, encode_prompts(ctx, items), sampling_params(ctx, do_sample))
    return [Decoded(g, 0, g[0].tokens) for g in groups]


@register("greedy", settings=("max_new_tokens", "repetition_penalty", "stop"),
          summary="argmax decoding (the baseline)")
def greedy(ctx: Context, items: Sequence[Item]) -> list[Decoded]:
    return _single(ctx, items, do_sample=False)


@register("sample", settings=SAMPLING, summary="one sample per prompt (temperature, top-p, top-k, seed)")
def sample(ctx: Context, items: Sequence[Item]) -> list[Decoded]:
    return _single(ctx, items, do_sample=True)


def rerank(ctx: Context, items: Sequence[Item], groups: list[list[Candidate]]) -> list[Decoded]:
    """Score every candidate (batched over prompts) and keep the best of each group (:func:`select_best`)."""
    scores = ctx.reward.score_groups([p for p, _ in items], [[c.text for c in g] for g in groups])
    out = []
    for group, rewards in zip(groups, scores, strict=True):
        for c, r in zip(group, rewards, strict=True):
            c.reward = r
        best = select_best(rewards, [c.logp for c in group])
        out.append(Decoded(group, best, sum(c.tokens for c in group)))
    return out


@register("best_of_n", needs_reward=True, settings=("n", *SAMPLING),
          summary="N samples from one prefill, the highest reward kept (ties: higher log-prob)")
def best_of_n(ctx: Context, items: Sequence[Item]) -> list[Decoded]:
    groups = sample_candidates(ctx, encode_prompts(ctx, items), sampling_params(ctx, True), ctx.settings.n)
    return rerank(ctx, items, groups)


def pass_at(n: int, c: int, k: int) -> float:
    """P(at least one of k samples drawn without replacement from n, c of them passing, passes)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_rate_curve(passes: Sequence[Sequence[bool]], n_boot: int = 2000, seed: int = 0) -> list[dict[str, float]]:
    """Best-of-N' pass rate for N' = 1, 2, 4, ... N (and N) from each prompt's N pass/fail samples, with a
    95% percentile-bootstrap interval over prompts."""
    if not passes:
        return []
    n = min(len(p) for p in passes)
    sizes = sorted({2 ** i for i in range(n.bit_length()) if 2 ** i <= n} | {n})
    curve = []
    for k in sizes:
        per_prompt = [pass_at(n, sum(p[:n]), k) for p in passes]
        low, high = bootstrap_mean(per_prompt, n_boot, seed=seed)
        curve.append({"n": k, "pass_rate": sum(per_prompt) / len(per_prompt), "ci_low": low, "ci_high": high,
                      "prompts": len(per_prompt)})
    return curve
