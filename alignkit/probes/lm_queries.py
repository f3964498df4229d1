"""Model queries shared by the honesty, Bullshit Index, moral-direction and PROFILE suites.

Everything goes through the engine (:mod:`alignkit.engine`): generation with ``sample_ids``, next-token
distributions with ``response_logits``, response likelihoods with ``score_pairs``. Prompts are encoded as
training encodes them (:class:`alignkit.data.tokenize.PromptEncoder`: the chat template when the tokenizer
has one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from alignkit.data.tokenize import PromptEncoder
from alignkit.engine.generation import SamplingParams, decode_response, sample_ids
from alignkit.engine.logprobs import response_logits
from alignkit.engine.pairs import PairRows, score_pairs
from alignkit.progress import Bars

TRUE_FALSE = {"true": ("true", "True", "TRUE"), "false": ("false", "False", "FALSE")}
YES_NO = {"yes": ("yes", "Yes", "YES"), "no": ("no", "No", "NO")}


@contextmanager
def counted(ctx, description: str, total: int):
    """``advance(n)`` of a progress bar when ``ctx.progress`` is on, else a no-op."""
    bars = Bars(enabled=bool(ctx.progress))
    with bars.open():
        yield bars.task(description, total)


def encode_prompts(tokenizer, prompts: Sequence[str], systems: Sequence[str | None] | None = None) -> list[list[int]]:
    encoder = PromptEncoder(tokenizer)
    systems = systems or [None] * len(prompts)
    return [encoder.encode_prompt(p, s) for p, s in zip(prompts, systems, strict=True)]


def generate_texts(ctx, prompts: Sequence[str], *, n: int = 1, do_sample: bool = False, temperature: float = 1.0,
                   systems: Sequence[str | None] | None = None, max_new_tokens: int | None = None,
                   seed: int | None = None, description: str = "generate") -> list[list[str]]:
    """``n`` replies per prompt (greedy unless ``do_sample``), ``systems`` giving a system prompt per item."""
    ids = encode_prompts(ctx.tokenizer, prompts, systems)
    params = SamplingParams(max_new_tokens=max_new_tokens or ctx.max_new_tokens, do_sample=do_sample,
                            temperature=temperature, seed=ctx.seed if seed is None else seed)
    with counted(ctx, description, len(ids)) as advance:
        out = sample_ids(ctx.model, ids, params, n, eos_token_id=ctx.tokenizer.eos_token_id,
                         pad_token_id=ctx.tokenizer.pad_token_id, tokenizer=ctx.tokenizer,
                         batch_size=ctx.batch_size, progress=advance)
    return [[decode_response(ctx.tokenizer, r) for r in rows] for rows in out.responses]


def _first_tokens(tokenizer, variants: Sequence[str]) -> list[int]:
    """The first token of each spelling, with and without a leading space (deduplicated)."""
    ids = {tokenizer.encode(prefix + v, add_special_tokens=False)[0] for v in variants for prefix in ("", " ")}
    return sorted(ids)


@torch.no_grad()
def word_shares(model, tokenizer, prompt_ids: Sequence[list[int]], groups: dict[str, Sequence[str]],
                batch_size: int = 8, advance: Callable[[int], None] | None = None) -> np.ndarray:
    """[n, len(groups)]: the next-token probability mass of each group of words (the first token of every
    spelling), renormalised over the groups, e.g. P(true) / (P(true) + P(false))."""
    token_sets = [_first_tokens(tokenizer, words) for words in groups.values()]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = np.zeros((len(prompt_ids), len(groups)))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompt_ids), batch_size):
            rows = [(list(p), [pad]) for p in prompt_ids[start:start + batch_size]]
            probs = response_logits(model, rows, pad).logits[:, 0].float().softmax(-1).cpu()
            mass = torch.stack([probs[:, ids].sum(-1) for ids in token_sets], dim=1)
            out[start:start + len(rows)] = (mass / mass.sum(1, keepdim=True).clamp_min(1e-30)).double().numpy()
            if advance is not None:
                advance(len(rows))
    finally:
        model.train(was_training)
    return out


def response_logps(ctx, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Summed log-probs and token counts of two responses per prompt: (logp_1, tokens_1, logp_2, tokens_2)."""
    encoder = PromptEncoder(ctx.tokenizer)
    rows = []
    for p, a, b in zip(prompts, first, second, strict=True):
        rows.append(PairRows(encoder.encode_prompt(p), encoder.encode_response(p, a), encoder.encode_response(p, b)))
    pad = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else ctx.tokenizer.eos_token_id
    with counted(ctx, "score pairs", len(rows)) as advance:
        scores = score_pairs(ctx.model, rows, pad, batch_size=ctx.batch_size, layout="padded", advance=advance)
    return (scores.chosen.logps.numpy(), scores.chosen.tokens.numpy(), scores.rejected.logps.numpy(),
            scores.rejected.tokens.numpy())


@torch.no_grad()
def pooled_hidden_states(model, tokenizer, texts: Sequence[str], layer: int = -1, batch_size: int = 8) -> np.ndarray:
    """[n, d]: mean over real tokens of one layer's hidden states (raw text, no chat template)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True)
            hidden = model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device),
                           output_hidden_states=True).hidden_states[layer].float()
            mask = enc["attention_mask"].to(device).unsqueeze(-1).float()
            out.append(((hidden * mask).sum(1) / mask.sum(1).clamp_min(1)).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0))


def yes_probability(judge: Any, question: str) -> float:
    """P(yes) of a judge asked a yes/no ``question``.

    A judge with a ``yes_probability(question)`` method is asked directly; an :class:`alignkit.rewards.judge.LMJudge`
    (or anything with ``model`` and ``tokenizer``) answers from its next-token distribution, P(yes)/(P(yes)+P(no)),
    after the question and "Answer yes or no." in its chat template."""
    ask = getattr(judge, "yes_probability", None)
    if callable(ask):
        return float(ask(question))
    model, tokenizer = getattr(judge, "model", None), getattr(judge, "tokenizer", None)
    if model is None or tokenizer is None:
        raise ValueError("the judge needs a yes_probability(question) method or .model and .tokenizer")
    ids = encode_prompts(tokenizer, [f"{question}\nAnswer yes or no."])
    return float(word_shares(model, tokenizer, ids, YES_NO)[0, 0])


def choice_probabilities(judge: Any, question: str, options: Sequence[str]) -> list[float]:
    """The judge's probability of each of ``options`` (a multiple-choice question to the judge).

    A judge with a ``choice_probabilities(question, options)`` method is asked directly; an LM judge (``model``
    and ``tokenizer``) sees the options labelled A, B, ... and "Answer with one letter." in its chat template,
    and answers from its next-token distribution over those letters, renormalised over them."""
    ask = getattr(judge, "choice_probabilities", None)
    if callable(ask):
        return [float(p) for p in ask(question, list(options))]
    model, tokenizer = getattr(judge, "model", None), getattr(judge, "tokenizer", None)
    if model is None or tokenizer is None:
        raise ValueError("the judge needs a choice_probabilities(question, options) method or .model and .tokenizer")
    letters = [chr(ord("A") + i) for i in range(len(options))]
    listed = "\n".join(f"{letter}. {text}" for letter, text in zip(letters, options, strict=True))
    ids = encode_prompts(tokenizer, [f"{question}\n\n{listed}\n\nAnswer with one letter."])
    return word_shares(model, tokenizer, ids, {letter: (letter,) for letter in letters})[0].tolist()
