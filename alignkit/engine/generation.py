"""The one generator: batched decoding with left padding, N samples per prompt from one prefill, stop
strings, a seeded RNG stream of its own, and the policy/reference geometric-mixture sampler.

Every layer that produces text or token ids (eval, the online methods, distillation, decoding-time
alignment, probes) calls :func:`sample_ids` or :func:`generate`. Decoding is a plain KV-cached loop:

* prompts are left-padded so every row's last real token sits in the last column (decoding appends on
  the right) and position ids count real tokens only;
* the prompt batch is prefilled **once** and its KV cache repeated ``n`` times in place, so N samples per
  prompt cost one prompt forward, not N (``Cache.batch_repeat_interleave``);
* sampling draws from a ``torch.Generator`` seeded by the caller, so the caller's global RNG is untouched
  and the same seed gives the same samples;
* a row stops at an end-of-sequence token (kept) or once its decoded text contains a stop string (the
  text is cut before the stop string; the ids are kept up to the token that completed it).

With ``reference`` and ``mixture_beta`` the next-token distribution is the token-level geometric mixture
softmax(((1−β)·logits_θ + β·logits_ref)/T), i.e. π_θ^{1−β}·π_ref^β renormalised per token (the sampler of
online IPO-MD, Calandriello et al., ICML 2024, arXiv:2403.08635): both models decode with their own cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from alignkit.engine.kv_cache import reserved_cache


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. ``do_sample=False`` is greedy (argmax)."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    repetition_penalty: float = 1.0  # CTRL-style: divide positive logits of seen tokens, multiply negative ones
    stop: tuple[str, ...] = ()  # stop strings (need a tokenizer to decode)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise ValueError("top_k must be >= 0 and repetition_penalty > 0")


@dataclass
class Sampled:
    """Response token ids per prompt (``n`` each), cut after eos or at the token completing a stop string;
    ``stopped[i][j]`` says why the sample ended ("eos", "stop" or "length")."""

    prompts: list[list[int]]
    responses: list[list[list[int]]]
    stopped: list[list[str]] = field(default_factory=list)
    generated_tokens: int = 0
    step_logits: list[Tensor] = field(default_factory=list)  # per batch [rows, steps, V], if asked for
    logps: list[list[float]] = field(default_factory=list)  # per prompt, n summed log-probs, if asked for


def _left_pad(prompts: Sequence[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    width = max((len(p) for p in prompts), default=0)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt):] = 1
    return ids, mask


def left_pad(input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Move every row's real tokens to the right end (prompts padded on either side in, left-padded out)."""
    order = torch.argsort(attention_mask.long(), dim=1, stable=True)
    return input_ids.gather(1, order), attention_mask.long().gather(1, order)


def geometric_mixture_logits(policy_logits: Tensor, ref_logits: Tensor, beta: float) -> Tensor:
    """(1−β)·policy + β·ref. Softmax of this is π_θ^{1−β}·π_ref^β renormalised (raw logits and log-probs
    differ by a per-position constant, which the softmax removes)."""
    return (1.0 - beta) * policy_logits.float() + beta * ref_logits.float()


def process_logits(logits: Tensor, params: SamplingParams, seen: Tensor | None = None) -> Tensor:
    """Repetition penalty, temperature, top-k and top-p applied to [B, V] float logits (-inf = excluded)."""
    logits = logits.float()
    if params.repetition_penalty != 1.0 and seen is not None:
        picked = logits.gather(1, seen)
        picked = torch.where(picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty)
        logits = logits.scatter(1, seen, picked)
    if not params.do_sample:
        return logits
    if params.temperature != 1.0:
        logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = logits.topk(params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, index = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= params.top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(1, index, drop), float("-inf"))
    return logits


def sample_from_logits(scores: Tensor, generator: torch.Generator | None) -> Tensor:
    """One token per row of [B, V] scores, drawn from softmax(scores) by inverting its CDF with one uniform
    per row. ``torch.multinomial`` draws an exponential variate per vocabulary entry instead (B x V random
    numbers, ~15% of a SmolLM2 decode step at 64 rows on CPU); the distribution is the same. Tokens with
    score -inf have zero width in the CDF and are never drawn."""
    weights = (scores - scores.amax(-1, keepdim=True)).exp_()
    cdf = weights.cumsum_(-1)
    total = cdf[:, -1:]
    draw = torch.rand(scores.shape[0], 1, generator=generator, device=scores.device, dtype=cdf.dtype) * total
    draw = torch.minimum(draw, total.nextafter(torch.zeros_like(total)))  # rounding must not reach the total
    return torch.searchsorted(cdf, draw, right=True).squeeze(-1)


class _Decoder:
    """One model's KV-cached decoding state over a left-padded batch; the cache reserves room for
    ``reserve`` new tokens (:mod:`alignkit.engine.kv_cache`) so decoding writes keys in place."""

    def __init__(self, model: nn.Module, autocast_dtype: torch.dtype | None, reserve: int):
        self.model = model
        self.cache = reserved_cache(model, reserve)
        self.autocast_dtype = autocast_dtype

    def step(self, ids: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        device = ids.device
        autocast = (torch.autocast(device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                    else nullcontext())
        with autocast:
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=self.cache,
                             use_cache=True, logits_to_keep=1)
        self.cache = out.cache
        return out.logits[:, -1].float()

    def repeat(self, n: int) -> None:
        if n > 1 and self.cache is not None:
            self.cache.batch_repeat_interleave(n)


@torch.no_grad()
def _decode_batch(policy: nn.Module, reference: nn.Module | None, beta: float, prompts: Sequence[list[int]], n: int,
                  params: SamplingParams, generator: torch.Generator | None, eos_ids: Sequence[int], pad_id: int,
                  tokenizer, autocast_dtype: torch.dtype | None, record: list[Tensor] | None = None,
                  logps: list[float] | None = None) -> tuple[list[list[int]], list[str]]:
    device = next(policy.parameters()).device
    ids, mask = _left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    use_policy = reference is None or beta < 1.0
    use_ref = reference is not None and beta > 0.0
    reserve = params.max_new_tokens
    decoders = [_Decoder(policy, autocast_dtype, reserve) if use_policy else None,
                _Decoder(reference, autocast_dtype, reserve) if use_ref else None]
    rows = len(prompts) * n
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    reason = ["length"] * rows
    tokens: list[Tensor] = []
    history: list[list[int]] = [[] for _ in range(rows)]  # per row, for stop strings
    stop_window = max((len(s) for s in params.stop), default=0) + 8
    token_logps: list[Tensor] = []
    seen = ids.repeat_interleave(n, dim=0) if params.repetition_penalty != 1.0 else None
    step_ids = ids
    for step in range(params.max_new_tokens):
        logits = [d.step(step_ids, mask, positions) if d is not None else None for d in decoders]
        if step == 0:  # prefill done once per prompt; now expand to n rows per prompt
            for d in decoders:
                if d is not None:
                    d.repeat(n)
            logits = [x.repeat_interleave(n, dim=0) if x is not None else None for x in logits]
            mask = mask.repeat_interleave(n, dim=0)
            positions = positions.repeat_interleave(n, dim=0)
        policy_logits, ref_logits = logits
        if reference is None:
            mixed = policy_logits
        else:
            # at β = 0 or 1 one model is skipped; its zero logits get zero weight in the mixture
            zeros = torch.zeros_like(policy_logits if policy_logits is not None else ref_logits)
            mixed = geometric_mixture_logits(policy_logits if policy_logits is not None else zeros,
                                             ref_logits if ref_logits is not None else zeros, beta)
        if record is not None:
            record.append(mixed)
        scores = process_logits(mixed, params, seen)
        if params.do_sample:
            nxt = sample_from_logits(scores, generator)
        else:
            nxt = scores.argmax(-1)
        nxt = torch.where(finished, pad_id, nxt)
        if logps is not None:  # log-prob of the token under the unprocessed (mixture) distribution
            token_logps.append(mixed.log_softmax(-1).gather(1, nxt[:, None]).squeeze(1))
        tokens.append(nxt)
        newly_eos = ~finished & torch.isin(nxt, eos)
        for r in newly_eos.nonzero().flatten().tolist():
            reason[r] = "eos"
        finished = finished | newly_eos
        if params.stop and tokenizer is not None:
            # a stop string first shows up ending in the newest token, so only each row's last tokens are
            # decoded (one token is at least one character; the margin covers tokens that decode to nothing)
            newest = nxt.tolist()
            for r in (~finished).nonzero().flatten().tolist():
                history[r].append(newest[r])
                tail = tokenizer.decode(history[r][-stop_window:], skip_special_tokens=True)
                if any(s in tail for s in params.stop):
                    finished[r] = True
                    reason[r] = "stop"
        if bool(finished.all()):
            break
        if seen is not None:
            seen = torch.cat([seen, nxt[:, None]], dim=1)
        step_ids = nxt[:, None]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
    out: list[list[int]] = []
    if tokens:
        stacked = torch.stack(tokens, 1).tolist()
    else:
        stacked = [[] for _ in range(rows)]
    for r in range(rows):
        row = stacked[r]
        if reason[r] == "eos":
            row = row[:next(i for i, t in enumerate(row) if t in set(eos_ids)) + 1]
        elif reason[r] == "stop":
            row = _cut_at_stop(row, tokenizer, params.stop)
        out.append(row)
    if logps is not None:
        per_step = torch.stack(token_logps, 1).tolist() if token_logps else [[] for _ in range(rows)]
        logps.extend(float(sum(per_step[r][:len(out[r])])) for r in range(rows))
    if record:
        record[:] = [torch.stack(record, 1)]
    return out, reason


def _cut_at_stop(row: list[int], tokenizer, stop: Sequence[str]) -> list[int]:
    for end in range(1, len(row) + 1):
        if any(s in tokenizer.decode(row[:end], skip_special_tokens=True) for s in stop):
            return row[:end]
    return row


def sample_ids(
    model: nn.Module,
    prompts: Sequence[list[int]],
    params: SamplingParams = SamplingParams(),
    n: int = 1,
    *,
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int | None = None,
    tokenizer=None,
    batch_size: int = 16,
    reference: nn.Module | None = None,
    mixture_beta: float = 0.0,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: Callable[[int], None] | None = None,
    return_logits: bool = False,
    return_logps: bool = False,
) -> Sampled:
    """``n`` responses (token ids) per prompt of token ids; see the module docstring.

    Prompts are decoded in batches of ``batch_size`` prompts (``n`` rows each), shortest first so a batch
    pads little; results come back in the input order. Models are put in eval mode for the call and
    restored. Without ``generator`` a fresh one seeded with ``params.seed`` is used. ``return_logits`` keeps
    the (mixture) logits of every step, before temperature and truncation, per batch (tests, diagnostics).
    ``return_logps`` fills ``Sampled.logps``: each response's summed log-prob under the same logits.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if reference is not None and not 0.0 <= mixture_beta <= 1.0:
        raise ValueError(f"mixture beta must lie in [0, 1], got {mixture_beta}")
    if params.stop and tokenizer is None:
        raise ValueError("stop strings need the tokenizer (to decode what was generated)")
    eos_ids = [] if eos_token_id is None else [int(eos_token_id)] if isinstance(eos_token_id, int) else \
        [int(e) for e in eos_token_id]
    pad = pad_token_id if pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    device = next(model.parameters()).device
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    models = [m for m in (model, reference) if m is not None]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    responses: list[list[list[int]]] = [[] for _ in prompts]
    stopped: list[list[str]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    generated = 0
    step_logits: list[Tensor] = []
    logps: list[list[float]] = [[] for _ in prompts]
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            record: list[Tensor] | None = [] if return_logits else None
            chunk_logps: list[float] | None = [] if return_logps else None
            rows, reasons = _decode_batch(model, reference, mixture_beta, [prompts[i] for i in chunk], n, params,
                                          generator, eos_ids, pad, tokenizer, autocast_dtype, record, chunk_logps)
            step_logits += record or []
            for k, i in enumerate(chunk):
                responses[i] = rows[k * n:(k + 1) * n]
                stopped[i] = reasons[k * n:(k + 1) * n]
                logps[i] = chunk_logps[k * n:(k + 1) * n] if chunk_logps is not None else []
                generated += sum(len(r) for r in responses[i])
            if progress is not None:
                progress(len(chunk))
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)
    return Sampled([list(p) for p in prompts], responses, stopped, generated, step_logits,
                   logps if return_logps else [])


def decode_response(tokenizer, ids: Sequence[int], stop: Sequence[str] = ()) -> str:
    """Text of a response: special tokens dropped, cut before the first stop string, stripped."""
    text = tokenizer.decode(list(ids), skip_special_tokens=True)
    for s in stop:
        if s in text:
            text = text[:text.index(s)]
    return text.strip()


def generate(
    model: nn.Module,
    tokenizer,
    prompts: Sequence,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    system: str | None = None,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    autocast_dtype: torch.dtype | None = None,
    *,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    stop: Sequence[str] = (),
    n: int = 1,
    use_chat_template: bool | None = None,
) -> list[str] | list[list[str]]:
    """Replies to ``prompts`` (text or messages, encoded exactly as training encodes them), greedy by
    default. One string per prompt, or ``n`` strings per prompt when ``n > 1``."""
    from alignkit.data.tokenize import PromptEncoder  # data is below the engine; imported lazily for speed

    encoder = PromptEncoder(tokenizer, use_chat_template)
    encoded = [encoder.encode_prompt(p, system) for p in prompts]
    params = SamplingParams(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                            top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty, stop=tuple(stop),
                            seed=seed)
    out = sample_ids(model, encoded, params, n, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id, tokenizer=tokenizer, batch_size=batch_size,
                     autocast_dtype=autocast_dtype, progress=progress)
    texts = [[decode_response(tokenizer, r, stop) for r in rs] for rs in out.responses]
    return [t[0] for t in texts] if n == 1 else texts
