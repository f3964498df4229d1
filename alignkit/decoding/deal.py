"""DeAL: decoding-time alignment as heuristic search (Huang et al., "DeAL: Decoding-time Alignment for Large
Language Models", ACL 2025, arXiv:2402.06147).

Decoding is a search over token prefixes ``y_<t`` of a prompt ``x``. At every step, for every beam:

1. **proposal**: the top-k next tokens ``a`` under the model;
2. **lookahead**: a greedy rollout of ℓ tokens from ``y_<t + a``, so the reward sees where the candidate leads;
3. **heuristic**: ``f(y_<t + a) = log p(y_<t + a | x) + λ · R(x, y_<t + a + lookahead)``, with the summed LM
   log-prob of the prefix, as the paper has it, and the rewards of all candidates computed in batches;
4. **selection**: the b best of all candidates (and of the beams already finished) are kept.

A beam finishes at an end-of-sequence token, a stop string, or ``max_new_tokens``; decoding ends when every
kept beam has finished, and the finished beam with the highest ``f`` is the answer. ``λ = 0``, ``b = 1`` is
greedy decoding. Rewards scored on partial text (prefix + lookahead) are biased for reward models trained on
full responses; programmatic rewards (format, length, keywords) suit the method best.

**KV cache across steps** (``deal_cache``, the default): one left-padded cache (transformers' ``DynamicCache``)
holds a row per live beam of every prompt; every live beam is at the same step, so the rows stay aligned. A step
selects the rows of each candidate's beam, feeds the k·b candidate tokens (one token each), rolls the lookahead
out on that cache and crops it back to prefix + candidate, so the lookahead never stays in a beam's cache; the
rows of the kept candidates become the next step's beams. A step thus costs (1 + ℓ) new tokens per candidate instead of
re-reading the prompt and prefix. ``deal_cache=False`` is the plain search (prefix re-read by every proposal
and lookahead), kept as the reference the cached search must equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from alignkit.decoding.base import Candidate, Context, Decoded, register
from alignkit.decoding.strategies import Item, encode_prompts, sampling_params
from alignkit.engine.generation import decode_response, left_pad, process_logits, sample_ids
from alignkit.engine.logprobs import response_logits


@dataclass
class Beam:
    ids: list[int]
    logp: float = 0.0  # log p(prefix | x), summed
    reward: float = 0.0
    score: float = 0.0  # f = logp + λ·reward
    done: bool = False
    row: int = 0  # its cache row: its index among the live beams (or, while a candidate, among the candidates)


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


class Uncached:
    """The plain search: every proposal and every lookahead re-reads the prompt and the prefix."""

    def __init__(self, ctx: Context, prompts: list[list[int]]):
        self.ctx, self.prompts = ctx, prompts

    def next_logps(self, active: list[tuple[int, Beam]]) -> Tensor:
        return next_token_logps(self.ctx, [self.prompts[p] + b.ids for p, b in active])

    def rollouts(self, fresh: list[tuple[int, Beam]], parents: list[int], budget: list[int]) -> list[list[int]]:
        """Greedy continuations of up to ``budget[i]`` tokens, grouped by budget (one engine call per length)."""
        ctx, rows = self.ctx, [self.prompts[p] + b.ids for p, b in fresh]
        out: list[list[int]] = [[] for _ in rows]
        for length in sorted(set(budget) - {0}):
            chosen = [i for i, b in enumerate(budget) if b == length]
            sampled = sample_ids(ctx.model, [rows[i] for i in chosen], sampling_params(ctx, False, length),
                                 eos_token_id=ctx.tokenizer.eos_token_id, pad_token_id=ctx.tokenizer.pad_token_id,
                                 tokenizer=ctx.tokenizer, batch_size=max(1, ctx.settings.batch_size * 4))
            for i, responses in zip(chosen, sampled.responses, strict=True):
                out[i] = responses[0]
        return out

    def keep(self, rows: list[int]) -> None:
        pass


class Cached:
    """One left-padded KV cache holding a row per live beam of every prompt (every live beam is at the same step,
    so the rows stay aligned); see the module docstring. ``forwarded`` counts the tokens fed to the model."""

    def __init__(self, ctx: Context, prompts: list[list[int]]):
        self.ctx, self.prompts = ctx, prompts
        self.device = next(ctx.model.parameters()).device
        self.forwarded = 0
        pad = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else 0
        width = max(len(p) for p in prompts)
        ids = torch.tensor([p + [pad] * (width - len(p)) for p in prompts])
        ids, self.mask = left_pad(ids, torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in prompts]))
        self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = None
        self.logps = self._forward(ids, self.positions).log_softmax(-1)
        self.positions = self.positions[:, -1:]

    @torch.no_grad()
    def _forward(self, ids: Tensor, positions: Tensor) -> Tensor:
        """Feed ``ids`` (the mask already covers them) on the cache; last-position logits [rows, V] on the CPU."""
        self.forwarded += ids.numel()
        out = self.ctx.model(input_ids=ids.to(self.device), attention_mask=self.mask.to(self.device),
                             position_ids=positions.to(self.device), cache=self.cache, use_cache=True,
                             logits_to_keep=1)
        self.cache = out.cache
        return out.logits[:, -1].float().cpu()

    def _append(self, tokens: list[int]) -> Tensor:
        """Feed one token per row; the logits after it."""
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        self.positions = self.positions + 1
        return self._forward(torch.tensor(tokens)[:, None], self.positions)

    def _select(self, rows: list[int]) -> None:
        index = torch.tensor(rows)
        self.cache.batch_select_indices(index.to(self.device))
        self.mask, self.positions, self.logps = self.mask[index], self.positions[index], self.logps[index]

    def next_logps(self, active: list[tuple[int, Beam]]) -> Tensor:
        assert len(self.logps) == len(active), "the cache's rows must be the live beams"
        return self.logps  # row i is active[i]: the live beams, kept in that order by :meth:`keep`

    def rollouts(self, fresh: list[tuple[int, Beam]], parents: list[int], budget: list[int]) -> list[list[int]]:
        """Feed each candidate's token on its beam's cache row, decode greedily as the engine does (repetition
        penalty, eos kept, stop strings) and crop the cache back to prefix + candidate."""
        tok = self.ctx.tokenizer
        self._select(parents)
        logits = self._append([b.ids[-1] for _, b in fresh])
        self.logps = logits.log_softmax(-1)
        length, positions = self.mask.shape[1], self.positions
        params = sampling_params(self.ctx, False, max(budget, default=0) or 1)
        eos = {tok.eos_token_id} if tok.eos_token_id is not None else set()
        rows = [self.prompts[p] + b.ids for p, b in fresh]
        width = max(len(r) for r in rows)  # padded with the row's own first token: a repeat changes no penalty
        seen = torch.tensor([r + r[:1] * (width - len(r)) for r in rows])
        out: list[list[int]] = [[] for _ in fresh]
        live = [b > 0 for b in budget]
        for _ in range(max(budget, default=0)):
            nxt = process_logits(logits, params, seen).argmax(-1).tolist()
            for i, token in enumerate(nxt):
                if live[i]:
                    out[i].append(token)
                    stopped = bool(params.stop) and any(s in tok.decode(out[i], skip_special_tokens=True)
                                                        for s in params.stop)
                    live[i] = token not in eos and not stopped and len(out[i]) < budget[i]
            if not any(live):
                break
            seen = torch.cat([seen, torch.tensor(nxt)[:, None]], dim=1)
            logits = self._append(nxt)
        if self.mask.shape[1] > length:  # drop the lookahead (transformers 5: crop(-n) removes n tokens)
            self.cache.crop(length - self.mask.shape[1])
            self.mask, self.positions = self.mask[:, :length], positions
        return out

    def keep(self, rows: list[int]) -> None:
        """Keep the cache rows (and next-token log-probs) of the kept live candidates, in the given order."""
        if rows:
            self._select(rows)
        else:
            self.cache = None


@register("deal", needs_reward=True,
          settings=("deal_top_k", "deal_lookahead", "deal_lambda", "deal_beam", "max_new_tokens", "stop"),
          summary="reward-guided search: top-k tokens, lookahead, f = log p + λ·R, beam b")
def deal(ctx: Context, items: Sequence[Item]) -> list[Decoded]:
    s, tok = ctx.settings, ctx.tokenizer
    if ctx.reward.is_judge:
        raise ValueError("deal needs a reward of a single response (a verifier or a reward model); a judge only "
                         "compares two")
    prompts = encode_prompts(ctx, items)
    search = (Cached if s.deal_cache else Uncached)(ctx, prompts)
    eos = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    beams: list[list[Beam]] = [[Beam([], row=p)] for p in range(len(items))]
    spent = [0] * len(items)
    while any(not b.done for group in beams for b in group):
        active = [(p, b) for p, group in enumerate(beams) for b in group if not b.done]
        logps = search.next_logps(active)
        top = logps.topk(min(s.deal_top_k, logps.shape[-1]), dim=-1)
        pool: list[list[Beam]] = [[b for b in group if b.done] for group in beams]
        fresh: list[tuple[int, Beam]] = []
        parents: list[int] = []  # each candidate's beam (its cache row)
        for (p, beam), values, tokens in zip(active, top.values.tolist(), top.indices.tolist(), strict=True):
            for value, token in zip(values, tokens, strict=True):
                ids = beam.ids + [token]
                fresh.append((p, Beam(ids, beam.logp + value, done=_finished(ctx, ids, eos), row=len(fresh))))
                parents.append(beam.row)
                spent[p] += 1
        budget = [0 if b.done else min(s.deal_lookahead, s.max_new_tokens - len(b.ids)) for _, b in fresh]
        rollouts = search.rollouts(fresh, parents, budget)
        texts = [decode_response(tok, b.ids + r, s.stop) for (_, b), r in zip(fresh, rollouts, strict=True)]
        rewards = ctx.reward.score([items[p][0] for p, _ in fresh], texts)
        for (p, b), roll, r in zip(fresh, rollouts, rewards, strict=True):
            b.reward, b.score = r, b.logp + s.deal_lambda * r
            spent[p] += len(roll)
            pool[p].append(b)
        for p, candidates in enumerate(pool):
            if any(not b.done for b in beams[p]):
                beams[p] = sorted(candidates, key=lambda b: b.score, reverse=True)[:s.deal_beam]
        live = [b for group in beams for b in group if not b.done]  # the next step's active beams, in order
        search.keep([b.row for b in live])
        for row, b in enumerate(live):
            b.row = row
    out = []
    for p, group in enumerate(beams):
        group = sorted(group, key=lambda b: b.score, reverse=True)
        candidates = [Candidate(decode_response(tok, b.ids, s.stop), len(b.ids), b.logp, b.reward,
                                {"heuristic": b.score}) for b in group]
        out.append(Decoded(candidates, 0, spent[p]))
    return out
