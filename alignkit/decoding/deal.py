"""DeAL: decoding-time alignment as heuristic search (Huang et al., "DeAL: Decoding-time Alignment for Large
Language Models", ACL 2025, arXiv:2402.06147).

Decoding is a search over token prefixes ``y_<t`` of a prompt ``x``. At every step, for every beam:

1. **proposal**: the top-k next tokens ``a`` under the model;
2. **lookahead**: a greedy rollout of ℓ tokens from ``y_<t + a`` (the engine's generator, batched over every
   candidate of every prompt), so the reward sees where the candidate leads;
3. **heuristic**: ``f(y_<t + a) = log p(y_<t + a | x) + λ · R(x, y_<t + a + lookahead)``, with the summed LM
   log-prob of the prefix, as the paper has it, and the rewards of all candidates computed in batches;
4. **selection**: the b best of all candidates (and of the beams already finished) are kept.

A beam finishes at an end-of-sequence token, a stop string, or ``max_new_tokens``; decoding ends when every
kept beam has finished, and the finished beam with the highest ``f`` is the answer. ``λ = 0``, ``b = 1`` is
greedy decoding. Cost per step: one forward per beam for the proposal, k·b rollouts of ℓ tokens, k·b rewards.
Rewards scored on partial text (prefix + lookahead) are biased for reward models trained on full responses;
programmatic rewards (format, length, keywords) suit the method best.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from alignkit.decoding.base import Candidate, Context, Decoded, register
from alignkit.decoding.strategies import Item, encode_prompts, sampling_params
from alignkit.engine.generation import decode_response, sample_ids
from alignkit.engine.logprobs import response_logits


@dataclass
class Beam:
    ids: list[int]
    logp: float = 0.0  # log p(prefix | x), summed
    reward: float = 0.0
    score: float = 0.0  # f = logp + λ·reward
    done: bool = False


@torch.no_grad()
def next_token_logps(ctx: Context, rows: Sequence[list[int]]) -> torch.Tensor:
    """log p(next token | row) for every row, [rows, V], via the engine's response-logit path."""
    pad = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else 0
    out = []
    step = max(1, ctx.settings.batch_size * ctx.settings.deal_beam)
    for start in range(0, len(rows), step):
        chunk = [(list(r), [pad]) for r in rows[start:start + step]]
        out.append(response_logits(ctx.model, chunk, pad).logits[:, 0].log_softmax(-1).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def _finished(ctx: Context, ids: list[int], eos: set[int]) -> bool:
    if ids and ids[-1] in eos:
        return True
    if len(ids) >= ctx.settings.max_new_tokens:
        return True
    stop = ctx.settings.stop
    return bool(stop) and any(s in ctx.tokenizer.decode(ids, skip_special_tokens=True) for s in stop)


def _lookahead(ctx: Context, rows: list[list[int]], budget: list[int]) -> list[list[int]]:
    """Greedy continuations of up to ``budget[i]`` tokens, grouped by budget (one engine call per length)."""
    out: list[list[int]] = [[] for _ in rows]
    for length in sorted(set(budget) - {0}):
        chosen = [i for i, b in enumerate(budget) if b == length]
        sampled = sample_ids(ctx.model, [rows[i] for i in chosen], sampling_params(ctx, False, length),
                             eos_token_id=ctx.tokenizer.eos_token_id, pad_token_id=ctx.tokenizer.pad_token_id,
                             tokenizer=ctx.tokenizer, batch_size=max(1, ctx.settings.batch_size * 4))
        for i, responses in zip(chosen, sampled.responses, strict=True):
            out[i] = responses[0]
    return out


@register("deal", needs_reward=True,
          settings=("deal_top_k", "deal_lookahead", "deal_lambda", "deal_beam", "max_new_tokens", "stop"),
          summary="reward-guided search: top-k tokens, lookahead, f = log p + λ·R, beam b")
def deal(ctx: Context, items: Sequence[Item]) -> list[Decoded]:
    s, tok = ctx.settings, ctx.tokenizer
    if ctx.reward.is_judge:
        raise ValueError("deal needs a reward of a single response (a verifier or a reward model); a judge only "
                         "compares two")
    prompts = encode_prompts(ctx, items)
    eos = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    beams: list[list[Beam]] = [[Beam([])] for _ in items]
    spent = [0] * len(items)
    while any(not b.done for group in beams for b in group):
        active = [(p, b) for p, group in enumerate(beams) for b in group if not b.done]
        logps = next_token_logps(ctx, [prompts[p] + b.ids for p, b in active])
        top = logps.topk(min(s.deal_top_k, logps.shape[-1]), dim=-1)
        pool: list[list[Beam]] = [[b for b in group if b.done] for group in beams]
        fresh: list[tuple[int, Beam]] = []
        for (p, beam), values, tokens in zip(active, top.values.tolist(), top.indices.tolist(), strict=True):
            for value, token in zip(values, tokens, strict=True):
                ids = beam.ids + [token]
                fresh.append((p, Beam(ids, beam.logp + value, done=_finished(ctx, ids, eos))))
                spent[p] += 1
        budget = [0 if b.done else min(s.deal_lookahead, s.max_new_tokens - len(b.ids)) for _, b in fresh]
        rollouts = _lookahead(ctx, [prompts[p] + b.ids for p, b in fresh], budget)
        texts = [decode_response(tok, b.ids + r, s.stop) for (_, b), r in zip(fresh, rollouts, strict=True)]
        rewards = ctx.reward.score([items[p][0] for p, _ in fresh], texts)
        for (p, b), roll, r in zip(fresh, rollouts, rewards, strict=True):
            b.reward, b.score = r, b.logp + s.deal_lambda * r
            spent[p] += len(roll)
            pool[p].append(b)
        for p, candidates in enumerate(pool):
            if any(not b.done for b in beams[p]):
                beams[p] = sorted(candidates, key=lambda b: b.score, reverse=True)[:s.deal_beam]
    out = []
    for p, group in enumerate(beams):
        group = sorted(group, key=lambda b: b.score, reverse=True)
        candidates = [Candidate(decode_response(tok, b.ids, s.stop), len(b.ids), b.logp, b.reward,
                                {"heuristic": b.score}) for b in group]
        out.append(Decoded(candidates, 0, spent[p]))
    return out
