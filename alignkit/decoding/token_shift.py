"""Token-distribution-shift analysis (Lin et al., "The Unlocking Spell on Base LLMs: Rethinking Alignment via
In-Context Learning", ICLR 2024, arXiv:2312.01552, section 2).

How much does alignment change what a model says, token by token? The aligned model answers each prompt
greedily, o_1..o_T. At every position t the **base** model reads the same prompt and the aligned answer so far,
[q, o_<t], and η_t is the rank of o_t in its next-token distribution (0 = its own top choice; a token ranks
after every token with a strictly higher logit). A position is

* **unshifted** when η_t = 0 (the base model would have said the same token),
* **marginal** when η_t ∈ {1, 2} (among its top three),
* **shifted** otherwise.

(The paper counts ranks from 1: unshifted η = 1, marginal η ∈ {2, 3}, shifted η > 3; the same classes.) Also
recorded per position: P_base(o_t) and KL(P_aligned ‖ P_base). The report gives the three shares, the shifted
and marginal share by position and the tokens most often shifted. The paper finds few shifted positions (5–8%
for 7B chat models), mostly stylistic tokens early in the answer.

Both models must share one tokenizer (ranks compare token ids). The prompt can be written differently for the
two models (``aligned_format`` / ``base_format``): ``chat`` (the model's chat template), ``urial`` (URIAL's
in-context alignment prefix and the query turn, :mod:`alignkit.decoding.urial`) or ``plain`` (the query turn
alone, without URIAL's header and examples). With one model and ``urial`` against ``plain`` this measures
what the in-context prefix changes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from alignkit.data.tokenize import PromptEncoder
from alignkit.decoding.urial import STOP, build_prefix, urial_prompt
from alignkit.engine.generation import SamplingParams, sample_ids
from alignkit.engine.logprobs import response_logits

CLASSES = ("unshifted", "marginal", "shifted")
FORMATS = ("chat", "urial", "plain")


def shift_class(rank: int) -> str:
    """URIAL's class of a position from the aligned token's 0-based rank under the base model."""
    return "unshifted" if rank == 0 else "marginal" if rank <= 2 else "shifted"


def token_ranks(logits: Tensor, tokens: Tensor) -> Tensor:
    """Rank (0-based) of each ``tokens[t]`` in ``logits[t]`` [T, V]: how many tokens have a strictly higher logit."""
    chosen = logits.gather(-1, tokens[:, None])
    return (logits > chosen).sum(-1)


def check_same_tokenizer(aligned_tokenizer, base_tokenizer) -> None:
    """One-line error unless both tokenizers map the same strings to the same ids."""
    if aligned_tokenizer is base_tokenizer:
        return
    if len(aligned_tokenizer) != len(base_tokenizer) or aligned_tokenizer.get_vocab() != base_tokenizer.get_vocab():
        raise ValueError(f"token-shift needs the same tokenizer for both models: the aligned model's has "
                         f"{len(aligned_tokenizer)} tokens, the base model's {len(base_tokenizer)}, and their "
                         "vocabularies differ")


def encode_for(tokenizer, prompt, system: str | None, fmt: str) -> list[int]:
    """The prompt's ids in one of :data:`FORMATS`."""
    if fmt == "chat":
        return PromptEncoder(tokenizer).encode_prompt(prompt, system)
    if fmt not in FORMATS:
        raise ValueError(f"unknown prompt format {fmt!r}; known: {', '.join(FORMATS)}")
    prefix = build_prefix(system=system) if fmt == "urial" else ""
    return tokenizer(urial_prompt(prompt, prefix), add_special_tokens=True).input_ids


def _response_logits(model: nn.Module, rows: list[tuple[list[int], list[int]]], pad_id: int) -> list[Tensor]:
    out = response_logits(model, rows, pad_id)
    return [out.logits[i, :len(r)] for i, (_, r) in enumerate(rows)]


@torch.no_grad()
def token_shift(aligned: nn.Module, base: nn.Module, tokenizer, prompts: Sequence[Any], *,
                aligned_format: str = "chat", base_format: str = "chat", max_new_tokens: int = 64,
                batch_size: int = 8, top_tokens: int = 20, base_tokenizer=None) -> dict[str, Any]:
    """The token-shift report over ``prompts`` (texts, messages or ``(prompt, system)`` tuples); see the module
    docstring. ``rows`` holds every position of every answer (token, rank, class, P_base, KL)."""
    check_same_tokenizer(tokenizer, base_tokenizer or tokenizer)
    items = [p if isinstance(p, tuple) else (p, None) for p in prompts]
    aligned_ids = [encode_for(tokenizer, p, s, aligned_format) for p, s in items]
    base_ids = [encode_for(tokenizer, p, s, base_format) for p, s in items]
    stop = (STOP,) if aligned_format != "chat" else ()
    sampled = sample_ids(aligned, aligned_ids, SamplingParams(max_new_tokens=max_new_tokens, stop=stop),
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tokenizer=tokenizer, batch_size=batch_size)
    eos = tokenizer.eos_token_id
    answers = [[t for t in r[0] if t != eos] for r in sampled.responses]  # EOS ends the answer; it is not a word
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows: list[dict[str, Any]] = []
    for start in range(0, len(items), batch_size):
        idx = [i for i in range(start, min(start + batch_size, len(items))) if answers[i]]
        if not idx:
            continue
        a_logits = _response_logits(aligned, [(aligned_ids[i], answers[i]) for i in idx], pad)
        b_logits = _response_logits(base, [(base_ids[i], answers[i]) for i in idx], pad)
        for i, a, b in zip(idx, a_logits, b_logits, strict=True):
            tokens = torch.tensor(answers[i], device=b.device)
            ranks = token_ranks(b, tokens).tolist()
            b_logp, a_logp = b.log_softmax(-1), a.log_softmax(-1)
            p_base = b_logp.gather(-1, tokens[:, None]).squeeze(-1).exp().tolist()
            kl = (a_logp.exp() * (a_logp - b_logp)).sum(-1).clamp(min=0).tolist()
            for t, (token, rank) in enumerate(zip(answers[i], ranks, strict=True)):
                rows.append({"prompt": i, "position": t, "token": token, "text": tokenizer.decode([token]),
                             "rank": rank, "class": shift_class(rank), "p_base": p_base[t], "kl": kl[t]})
    summary = summarise(rows, top_tokens)
    summary.update({"prompts": len(items), "answers": [tokenizer.decode(a) for a in answers],
                    "aligned_format": aligned_format, "base_format": base_format, "max_new_tokens": max_new_tokens})
    return {**summary, "rows": rows}


def summarise(rows: Sequence[dict[str, Any]], top_tokens: int = 20) -> dict[str, Any]:
    """Shares of the three classes, shift by position and the most often shifted tokens."""
    total = len(rows)
    counts = Counter(r["class"] for r in rows)
    by_position: dict[int, Counter] = {}
    for r in rows:
        by_position.setdefault(r["position"], Counter())[r["class"]] += 1
    positions = [{"position": t, "count": sum(c.values()), "shifted": c["shifted"] / sum(c.values()),
                  "marginal": c["marginal"] / sum(c.values())} for t, c in sorted(by_position.items())]
    occurrences = Counter(r["text"] for r in rows)
    shifted = Counter(r["text"] for r in rows if r["class"] == "shifted")
    top = [{"token": text, "shifted": n, "occurrences": occurrences[text]}
           for text, n in shifted.most_common(top_tokens)]
    return {"positions_total": total,
            "shares": {c: counts[c] / total if total else 0.0 for c in CLASSES},
            "counts": {c: counts[c] for c in CLASSES},
            "mean_p_base": sum(r["p_base"] for r in rows) / total if total else 0.0,
            "mean_kl": sum(r["kl"] for r in rows) / total if total else 0.0,
            "by_position": positions, "most_shifted": top}


def bucketed(positions: Sequence[dict[str, Any]], width: int) -> list[dict[str, Any]]:
    """Shift by position in buckets of ``width`` positions (count-weighted), for printing."""
    buckets: dict[int, list[float]] = {}
    for p in positions:
        b = buckets.setdefault(p["position"] // width, [0.0, 0.0, 0.0])
        b[0] += p["count"]
        b[1] += p["shifted"] * p["count"]
        b[2] += p["marginal"] * p["count"]
    return [{"from": k * width, "to": k * width + width - 1, "count": int(n), "shifted": s / n, "marginal": m / n}
            for k, (n, s, m) in sorted(buckets.items())]


def run_token_shift(aligned_spec: str, base_spec: str, prompts_file: str, *, aligned_format: str = "chat",
                    base_format: str = "chat", max_new_tokens: int = 64, limit: int | None = None,
                    batch_size: int = 8, device: str = "auto", dtype: str = "float32", log=print) -> dict[str, Any]:
    """What ``alignkit analyze token-shift`` runs: load both models (once when they are the same), analyse."""
    from alignkit.data.prompts import load_prompts
    from alignkit.models import load_model

    for fmt in (aligned_format, base_format):
        if fmt not in FORMATS:
            raise ValueError(f"unknown prompt format {fmt!r}; known: {', '.join(FORMATS)}")
    items = load_prompts(prompts_file, limit=limit, log=log)
    aligned, tokenizer = load_model(aligned_spec, dtype=dtype, device=device, log=log)
    base, base_tokenizer = (aligned, tokenizer) if base_spec == aligned_spec else \
        load_model(base_spec, dtype=dtype, device=device, log=log)
    check_same_tokenizer(tokenizer, base_tokenizer)
    for model in (aligned, base):
        model.eval().requires_grad_(False)
    report = token_shift(aligned, base, tokenizer, items, aligned_format=aligned_format, base_format=base_format,
                         max_new_tokens=max_new_tokens, batch_size=batch_size, base_tokenizer=base_tokenizer)
    return {"aligned": aligned_spec, "base": base_spec, "prompts_file": prompts_file, **report}
