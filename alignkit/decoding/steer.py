"""``steer``: personality steering by activation addition, in the manner of PAS (Zhu et al., "Personality
Alignment of Large Language Models", ICLR 2025, arXiv:2408.11779), itself built on inference-time intervention
(ITI; Li et al., NeurIPS 2023, arXiv:2306.03341).

1. **Contrast pairs.** Each training item of a trait's questionnaire (:mod:`alignkit.decoding.steer_data`) is
   answered both ways: the prompt in the model's chat template followed by the answer letter "A" (very
   accurate) and, separately, "E" (very inaccurate). The answer at the trait's pole ("A" for a ``+`` item,
   "E" for a reversed one) is labelled 1, the other 0.
2. **Activations** of the chosen decoder layers' outputs (the residual stream) at the answer token.
3. **Direction** per layer: the mass-mean difference μ(label 1) − μ(label 0), normalised to unit length, computed
   by default *balanced over keying*: the mean difference of the ``+`` items and that of the ``-`` items
   averaged with equal weight (``balanced=False``: PAS's plain mean over all pairs); **scale** σ: the standard
   deviation of all training activations projected on it.
4. **Intervention**: a forward hook adds α·σ·d to the layer's output at every position, prompt and generated
   tokens alike; α > 0 pushes towards the trait's pole, α < 0 away from it. The hooks are removed when the
   ``with steering(...)`` block ends, on error too; the engine's generator is called unchanged inside it.

Reversed items make the direction carry the trait rather than the letter: the letter part of "A" − "E" cancels
between ``+`` and ``-`` items, exactly so only when both keys weigh the same (hence the balancing; on the
builtin SmolLM2 the plain mean over 4 ``+`` and 3 ``-`` items was dominated by the letter direction).

:func:`steer_report` measures how the answers to **held-out** items move with α: the log-prob margin
log p(pole letter) − log p(opposite letter) at the answer position, and the expected score on the 1..5 scale
keyed so that 5 is the trait's pole.

**Head level** (``level="head"``, :func:`fit_head_steering`), PAS's own intervention: the attention heads'
outputs (o_proj's input, split into heads) at the answer token; per head a logistic probe, the K heads with the
best held-out probe accuracy kept (PAS: 24), each with its own direction d_h and σ_h; a forward pre-hook on
o_proj adds α·σ_h·d_h to those heads' slices (:mod:`alignkit.decoding.steer_heads`). :func:`searched_alpha`
chooses α on a grid by the training items' mean keyed margin and reports the held-out answers at it.

What is reconstructed, and what differs from PAS: the probes' held-out accuracy is 4-fold cross-validation over
items (PAS uses one validation split, too small at a few items per trait); the labels come from the items'
keying (steer towards a trait's pole, not towards a person), so α is searched on the training items, not on a
user's answers; the layer level (whole layers' residual stream, default the middle layer) is an addition and
stays the default.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from alignkit.data.tokenize import PromptEncoder
from alignkit.decoding.base import Context, Decoded, register
from alignkit.decoding.steer_data import LETTERS, TraitItem, load_traits, trait_items
from alignkit.decoding.steer_heads import (
    HeadSteering,
    attention_output,
    contrast_directions,
    search_alpha,
    select_heads,
)
from alignkit.decoding.strategies import Item, encode_prompts, sample_candidates, sampling_params
from alignkit.engine.generation import left_pad

ALPHAS = (-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0)


@dataclass
class Steering:
    """A trait's unit direction and scale σ per layer (index into the model's decoder layers)."""

    trait: str
    directions: dict[int, Tensor]
    scales: dict[int, float]
    train_items: int

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.directions))

    def vectors(self, alpha: float) -> dict[int, Tensor]:
        return {layer: alpha * self.scales[layer] * d for layer, d in self.directions.items()}

    def attach(self, layers: nn.ModuleList, alpha: float) -> list:
        """Register the forward hooks on the chosen layers; the caller removes the returned handles."""
        return [layers[index].register_forward_hook(_adder(vector)) for index, vector in self.vectors(alpha).items()]

    def describe(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "sigma": [round(v, 5) for v in self.scales.values()]}


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder layers (the first ModuleList as long as ``num_hidden_layers``)."""
    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError("steer: cannot find the model's decoder layers (no ModuleList of config.num_hidden_layers)")


def resolve_layers(model: nn.Module, layers: Sequence[int]) -> tuple[int, ...]:
    """The chosen layers (negative counts from the end); default: the middle layer."""
    count = len(decoder_layers(model))
    if not layers:
        return (count // 2,)
    resolved = []
    for layer in layers:
        if not -count <= layer < count:
            raise ValueError(f"steer: layer {layer} is out of range; the model has {count} layers (0..{count - 1})")
        resolved.append(layer % count)
    return tuple(sorted(set(resolved)))


def _hidden(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


def _adder(vector: Tensor):
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        hidden = _hidden(output)
        shifted = hidden + vector.to(device=hidden.device, dtype=hidden.dtype)
        return (shifted, *output[1:]) if isinstance(output, tuple) else shifted

    return hook


@contextmanager
def steering(model: nn.Module, steer: Steering | HeadSteering | None, alpha: float) -> Iterator[None]:
    """Add α·σ·d to the chosen layers' outputs (or α·σ_h·d_h to the chosen heads' outputs, before o_proj) for the
    duration of the block; the hooks are removed on exit, on error too."""
    if steer is None or alpha == 0.0:
        yield
        return
    handles: list = []
    try:
        handles = steer.attach(decoder_layers(model), alpha)
        yield
    finally:
        for handle in handles:
            handle.remove()


def _capture(stack: nn.ModuleList, layer: int, site: str, into: list[Tensor]):
    """A hook keeping the last position of a layer's output (``layer``) or of its o_proj input (``head``)."""
    if site == "head":
        return attention_output(stack[layer]).register_forward_pre_hook(
            lambda m, args: into.append(args[0][:, -1].float().cpu()))
    return stack[layer].register_forward_hook(lambda m, a, out: into.append(_hidden(out)[:, -1].float().cpu()))


@torch.no_grad()
def last_token_forward(model: nn.Module, rows: Sequence[list[int]], pad_id: int, layers: Sequence[int] = (),
                       batch_size: int = 16, site: str = "layer") -> tuple[Tensor, dict[int, Tensor]]:
    """Next-token log-probs at each row's last token [N, V], and there the given layers' outputs [N, H]
    (``site="layer"``) or their attention heads' outputs, o_proj's input [N, heads·head_dim] (``site="head"``)."""
    device = next(model.parameters()).device
    stack = decoder_layers(model) if layers else None
    captured: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    logps = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(r) for r in chunk)
        ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in chunk], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in chunk], device=device)
        ids, mask = left_pad(ids, mask)  # every row's last token in the last column
        handles = [_capture(stack, layer, site, captured[layer]) for layer in layers] if stack is not None else []
        try:
            out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                        use_cache=False, logits_to_keep=1)
        finally:
            for handle in handles:
                handle.remove()
        logps.append(out.logits[:, -1].float().log_softmax(-1).cpu())
    return torch.cat(logps), {layer: torch.cat(parts) for layer, parts in captured.items()}


def letter_ids(tokenizer) -> dict[str, int]:
    """The token id of each answer letter (each must be one token)."""
    ids = {}
    for letter in LETTERS:
        encoded = tokenizer(letter, add_special_tokens=False).input_ids
        if len(encoded) != 1:
            raise ValueError(f"steer: the answer letter {letter!r} is not a single token for this tokenizer")
        ids[letter] = encoded[0]
    return ids


def _item_prompts(tokenizer, items: Sequence[TraitItem], system: str | None) -> list[list[int]]:
    encoder = PromptEncoder(tokenizer)
    return [encoder.encode_prompt(item.prompt, system) for item in items]


def fit_steering(model: nn.Module, tokenizer, items: Sequence[TraitItem], trait: str, layers: Sequence[int] = (),
                 system: str | None = None, batch_size: int = 16, balanced: bool = True) -> Steering:
    """The trait's direction per layer from its training items' contrast pairs (see the module docstring).

    ``balanced`` averages the mean difference of the ``+`` items and that of the ``-`` items with equal weight,
    so the answer letter's own direction ("A" − "E") cancels even when the keys are unequal in number; without
    it, the plain mass-mean difference over all pairs (PAS's) keeps a share of the letter direction."""
    train, acts = _pair_activations(model, tokenizer, items, trait, resolve_layers(model, layers), system,
                                    batch_size, "layer")
    directions, scales = {}, {}
    for layer, act in acts.items():
        direction, scale, norm = contrast_directions(act[:, None], [it.keyed for it in train], balanced)
        if not torch.isfinite(norm[0]) or norm[0] == 0:
            raise ValueError(f"steer: trait {trait!r} gives no direction at layer {layer} (identical activations)")
        directions[layer], scales[layer] = direction[0], float(scale[0])
    return Steering(trait, directions, scales, len(train))


def _pair_activations(model: nn.Module, tokenizer, items: Sequence[TraitItem], trait: str, layers: Sequence[int],
                      system: str | None, batch_size: int, site: str) -> tuple[list[TraitItem], dict[int, Tensor]]:
    """The trait's training items and, per layer, the activations at the answer token [2N, features]: the N
    items answered at the pole first, then the same N answered the opposite way."""
    train = trait_items(list(items), trait, held_out=False)
    letters = letter_ids(tokenizer)
    prompts = _item_prompts(tokenizer, train, system)
    rows = [p + [letters[it.consistent]] for p, it in zip(prompts, train, strict=True)]
    rows += [p + [letters[it.opposite]] for p, it in zip(prompts, train, strict=True)]
    was_training = model.training
    model.eval()
    try:
        _, acts = last_token_forward(model, rows, tokenizer.pad_token_id or 0, layers, batch_size, site)
    finally:
        model.train(was_training)
    return train, acts


def head_shape(model: nn.Module) -> tuple[int, int]:
    """(attention heads per layer, head dimension) from the model's config."""
    config = model.config
    heads = config.num_attention_heads
    return heads, getattr(config, "head_dim", None) or config.hidden_size // heads


def fit_head_steering(model: nn.Module, tokenizer, items: Sequence[TraitItem], trait: str, heads: int = 24,
                      layers: Sequence[int] = (), system: str | None = None, batch_size: int = 16,
                      balanced: bool = True) -> HeadSteering:
    """PAS's head-level directions: every head's output (o_proj's input, split into heads) at the answer token of
    the contrast pairs; a probe per head; the ``heads`` best by held-out probe accuracy kept (capped by the
    model's heads), each with its balanced mass-mean direction and σ (see :mod:`alignkit.decoding.steer_heads`).
    ``layers`` restricts the heads searched (default: every layer)."""
    count, head_dim = head_shape(model)
    chosen = resolve_layers(model, layers) if layers else tuple(range(len(decoder_layers(model))))
    train, acts = _pair_activations(model, tokenizer, items, trait, chosen, system, batch_size, "head")
    stacked = torch.cat([acts[layer].reshape(len(acts[layer]), count, head_dim) for layer in chosen], dim=1)
    directions, scales, norms = contrast_directions(stacked, [it.keyed for it in train], balanced)
    n = len(train)
    picked, accuracy = select_heads(stacked, list(range(n)) * 2, [1] * n + [0] * n, heads,
                                    usable=torch.isfinite(norms) & (norms > 0))
    if not picked:
        raise ValueError(f"steer: trait {trait!r} gives no direction at any head (identical activations)")
    where = [(layer, head) for layer in chosen for head in range(count)]
    return HeadSteering(trait, {where[g]: directions[g] for g in picked}, {where[g]: float(scales[g]) for g in picked},
                        {where[g]: float(accuracy[g]) for g in picked}, n, count, head_dim)


def answer_scores(logps: Tensor, items: Sequence[TraitItem], letters: dict[str, int]) -> list[dict[str, float]]:
    """Per item: the margin log p(pole letter) − log p(opposite letter), and the expected 1..5 score over the
    five letters (renormalised), keyed so that 5 is the trait's pole."""
    ids = torch.tensor([letters[x] for x in LETTERS])
    out = []
    for row, item in zip(logps, items, strict=True):
        probs = row[ids].softmax(-1)  # renormalised over A..E
        accuracy = (5 - torch.arange(5, dtype=probs.dtype))  # A = 5 (very accurate) .. E = 1
        expected = float((probs * accuracy).sum())
        out.append({"margin": float(row[letters[item.consistent]] - row[letters[item.opposite]]),
                    "score": expected if item.keyed > 0 else 6.0 - expected})
    return out


def steer_report(model: nn.Module, tokenizer, steer: Steering | HeadSteering, items: Sequence[TraitItem],
                 alphas: Sequence[float] = ALPHAS, system: str | None = None, batch_size: int = 16,
                 held_out: bool = True) -> list[dict[str, Any]]:
    """How the answers to the trait's held-out items (``held_out=False``: its training items) move with α: one
    row per α with the mean margin, the mean keyed score and the share of items whose margin is positive."""
    held = trait_items(list(items), steer.trait, held_out=held_out)
    letters = letter_ids(tokenizer)
    prompts = _item_prompts(tokenizer, held, system)
    rows = []
    was_training = model.training
    model.eval()
    try:
        for alpha in alphas:
            with torch.no_grad(), steering(model, steer, alpha):
                logps, _ = last_token_forward(model, prompts, tokenizer.pad_token_id or 0, (), batch_size)
            scores = answer_scores(logps, held, letters)
            by_keying = [[s["margin"] for s, item in zip(scores, held, strict=True) if (item.keyed > 0) == plus]
                         for plus in (True, False)]
            by_keying = [group for group in by_keying if group]
            rows.append({"trait": steer.trait, "alpha": alpha, "items": len(held),
                         "margin": sum(s["margin"] for s in scores) / len(scores),
                         "keying_balanced_margin": sum(sum(g) / len(g) for g in by_keying) / len(by_keying),
                         "score": sum(s["score"] for s in scores) / len(scores),
                         "toward_pole": sum(s["margin"] > 0 for s in scores) / len(scores),
                         "per_item": [round(s["margin"], 4) for s in scores]})
    finally:
        model.train(was_training)
    return rows


def searched_alpha(model: nn.Module, tokenizer, steer: Steering | HeadSteering, items: Sequence[TraitItem],
                   grid: Sequence[float] = ALPHAS, system: str | None = None) -> dict[str, Any]:
    """PAS's α search, on the trait's training items: the grid point with the highest keyed margin of their
    answers (:func:`~alignkit.decoding.steer_heads.search_alpha`), and the held-out answers at that α.

    The margin searched is balanced over keying (the mean of the ``+`` items' mean and the ``-`` items' mean): the
    training items of the builtin questionnaire are 4 ``+`` and 3 ``-`` per trait, so a plain mean rewards an α
    that only pushes every answer towards one letter (on SmolLM2's heads the plain search chose α = ±16 for that
    reason, and the held-out margins fell). Balanced, a pure letter bias scores zero."""
    train = {r["alpha"]: r for r in steer_report(model, tokenizer, steer, items, grid, system, held_out=False)}
    alpha, rows = search_alpha(lambda a: train[a]["keying_balanced_margin"], list(train))
    held = steer_report(model, tokenizer, steer, items, (alpha,), system)[0]
    return {"alpha": alpha, "train_margin": train[alpha]["keying_balanced_margin"], "grid": rows, "held_out": held}


_FITTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {settings key: Steering}


def fit_level(model: nn.Module, tokenizer, items: Sequence[TraitItem], trait: str, level: str = "layer",
              layers: Sequence[int] = (), heads: int = 24, system: str | None = None, balanced: bool = True
              ) -> Steering | HeadSteering:
    """The trait's steering at ``level``: ``layer`` (:func:`fit_steering`) or ``head`` (:func:`fit_head_steering`)."""
    if level == "head":
        return fit_head_steering(model, tokenizer, items, trait, heads, layers, system, balanced=balanced)
    if level != "layer":
        raise ValueError(f"steer: level must be 'layer' or 'head', got {level!r}")
    return fit_steering(model, tokenizer, items, trait, layers, system, balanced=balanced)


def fitted(ctx: Context) -> Steering | HeadSteering:
    """The steering for ``ctx``'s settings, fitted once per model and settings (strategies run per batch)."""
    s = ctx.settings
    if not s.steer_trait:
        raise ValueError("strategy 'steer' needs --steer-trait NAME (a trait of the questionnaire, e.g. "
                         "extraversion)")
    key = (str(s.steer_traits), s.steer_trait, tuple(s.steer_layers), s.system, s.steer_level, s.steer_heads)
    cache = _FITTED.setdefault(ctx.model, {})
    if key not in cache:
        items = load_traits(s.steer_traits)
        cache[key] = fit_level(ctx.model, ctx.tokenizer, items, s.steer_trait, s.steer_level, s.steer_layers,
                               s.steer_heads, s.system)
        steer = cache[key]
        where = (f"heads {', '.join(f'{layer}.{head}' for layer, head in steer.heads)}"
                 if isinstance(steer, HeadSteering) else f"layer(s) {', '.join(map(str, steer.layers))}")
        ctx.log(f"steer: {steer.trait} direction from {steer.train_items} item pairs at {where}, "
                f"σ = {', '.join(f'{v:.3g}' for v in steer.scales.values())}")
    return cache[key]


@register("steer", settings=("steer_traits", "steer_trait", "steer_alpha", "steer_layers", "steer_level",
                             "steer_heads", "max_new_tokens", "repetition_penalty", "stop"),
          summary="greedy decoding with a trait direction added to chosen layers' (or heads') activations "
                  "(PAS-style)")
def steer(ctx: Context, items: Sequence[Item]) -> list[Decoded]:
    direction = fitted(ctx)
    with steering(ctx.model, direction, ctx.settings.steer_alpha):
        groups = sample_candidates(ctx, encode_prompts(ctx, items), sampling_params(ctx, do_sample=False))
    return [Decoded(g, 0, g[0].tokens) for g in groups]


def run_steer_report(model_spec: str, traits: str | Path | None = None, trait: str | None = None,
                     layers: Sequence[int] = (), alphas: Sequence[float] = ALPHAS, system: str | None = None,
                     balanced: bool = True, device: str = "auto", dtype: str = "float32", log=print,
                     level: str = "layer", heads: int = 24, search: bool = False) -> dict[str, Any]:
    """What ``alignkit analyze steer`` runs: fit each trait (or the one named) at ``level`` and report the
    held-out answers per α; with ``search``, also α chosen on the training items (:func:`searched_alpha`)."""
    from alignkit.models import load_model

    items = load_traits(traits)
    names = [trait] if trait else sorted({it.trait for it in items})
    for name in names:  # a bad trait name fails before the model loads
        trait_items(items, name, held_out=True)
    model, tokenizer = load_model(model_spec, dtype=dtype, device=device, log=log)
    model.eval().requires_grad_(False)
    report: dict[str, Any] = {"model": model_spec, "traits_file": str(traits or "builtin"), "alphas": list(alphas),
                              "system": system, "balanced": balanced, "level": level, "traits": {}}
    for name in names:
        fit = fit_level(model, tokenizer, items, name, level, layers, heads, system, balanced)
        rows = steer_report(model, tokenizer, fit, items, alphas, system)
        report["traits"][name] = {**fit.describe(), "train_items": fit.train_items, "rows": rows}
        if search:
            report["traits"][name]["search"] = searched_alpha(model, tokenizer, fit, items, alphas, system)
        report["layers"] = list(fit.layers)
    report["pooled"] = [{"alpha": a, **{k: sum(t["rows"][i][k] for t in report["traits"].values()) / len(names)
                                        for k in ("margin", "score", "toward_pole")}}
                        for i, a in enumerate(alphas)]
    if search:
        found = [t["search"] for t in report["traits"].values()]
        report["search"] = {k: sum(f["held_out"][k] for f in found) / len(found)
                            for k in ("margin", "score", "toward_pole")}
    return report
