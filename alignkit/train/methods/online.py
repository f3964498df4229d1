"""Online IPO, IPO-MD and online DPO: the policy labels its own samples with a preference source.

Papers: online IPO and IPO-MD are from Calandriello et al., "Human Alignment of Large Language Models through
Online Preference Optimisation", ICML 2024, arXiv 2403.08635; online DPO (DPO on pairs the current policy
samples and an annotator labels) is OAIF, Guo et al., "Direct Language Model Alignment from Online AI
Feedback", arXiv 2402.04792, 2024.

Per micro-batch of prompts: draw two responses per prompt (no gradient) from the current policy (online
IPO, online DPO) or from the token-level geometric mixture π_mix ∝ π_θ^{1−β}·π_ref^β (IPO-MD), with
:func:`alignkit.engine.generation.sample_ids` (batched, one KV cache per model); label them with a
preference source p = P(y ≻ y' | x) (a verifier, a reward model through Bradley-Terry, or an LM judge asked
in both orders, see ``alignkit.rewards``); then one forward pass over both samples gives the policy
log-probs for the loss (h = log π_θ − log π_ref summed over the response, the paper's sequence-level
log-ratio; divided by the token count with ``length_normalize``):

* ``online_ipo`` / ``ipo_md``: :func:`alignkit.objectives.online.online_ipo_loss`,
  ``L = (h(y) − h(y') − (p − ½)/τ)²``, or with ``hard_labels`` the target ±1/(2τ) with I ~ Bernoulli(p).
  Defaults: τ = 0.1, mixture β = 0 (online IPO) or 0.5 (IPO-MD, TRL's Nash-MD default);
* ``online_dpo``: each pair is oriented by p > ½ and fed to the offline ``dpo`` objective
  (β = 0.1, label smoothing 0); ties (p = ½, e.g. two samples the verifier passes or fails alike) carry no
  preference and are left out of the loss.

Sampling defaults: ``preference`` verifier, ``max_new_tokens`` 48, ``temperature`` 1.0 (0 is greedy). The
reference is the loop's (frozen copy, or the policy with its adapter disabled); its log-probs depend on
the samples, so they cannot be precomputed. This module also holds what the generating methods share
(GRAO, ADPA): prompt loading, the reference as a sampling model, group sampling and the sampled eval.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from alignkit.data.records import Text
from alignkit.data.tokenize import to_messages
from alignkit.engine.generation import SamplingParams, sample_ids
from alignkit.engine.layouts import SequenceBatch, collate
from alignkit.engine.logprobs import SequenceLogps, sequence_logps
from alignkit.objectives import PairLogps, get_objective
from alignkit.objectives.online import online_ipo_loss
from alignkit.objectives.params import Params
from alignkit.rewards import PreferenceSource, build_source
from alignkit.train.config import TrainConfig
from alignkit.train.data import load_run_data
from alignkit.train.methods.base import BatchContext, Method, Rows, StepOutput, method_params, register_method
from alignkit.train.reference import AdapterDisabledReference

# ------------------------------------------------------------------------------------------ parameters


class SampledParams(Params):
    """What every sampling method takes: the length and temperature of its samples."""

    max_new_tokens: int = Field(48, ge=1, description="longest sampled response, in tokens")
    temperature: float = Field(1.0, ge=0, description="sampling temperature (0: greedy)")


class OnlineParams(SampledParams):
    preference: str | dict[str, Any] | list[Any] = Field(
        "verifier", description="preference source: verifier, {type: reward_model, model: ...}, a judge, "
                                "module:attr, or a list of rewards (summed, each with an optional weight)")
    mixture_beta: float = Field(0.0, ge=0, le=1, description="β of the sampling mixture π_θ^(1−β)·π_ref^β")


class OnlineIPOParams(OnlineParams):
    tau: float = Field(0.1, gt=0, description="τ: the regression target is (p − ½)/τ")
    hard_labels: bool = Field(False, description="regress onto ±1/(2τ) with I ~ Bernoulli(p) instead of (p − ½)/τ")
    length_normalize: bool = Field(False, description="per-token averaged log-ratios (TRL's offline IPO) instead "
                                                      "of the paper's sequence-level ones")


class IPOMDParams(OnlineIPOParams):
    mixture_beta: float = Field(0.5, ge=0, le=1, description="β of the sampling mixture π_θ^(1−β)·π_ref^β "
                                                             "(TRL's Nash-MD default)")


class OnlineDPOParams(OnlineParams):
    beta: float = Field(0.1, gt=0, description="DPO's inverse temperature on the oriented sampled pairs")
    label_smoothing: float = Field(0.0, ge=0, le=0.5, description="cDPO: assumed label-flip rate ε")


# ------------------------------------------------------------------------------------------ data


@dataclass
class PromptItem:
    """A prompt for online sampling; ``reference`` is the dataset's chosen response (GRAO's y*)."""

    prompt: Text
    system: str | None
    prompt_ids: list[int]
    reference: str | None = None
    reference_ids: list[int] | None = None


def load_prompt_items(config: TrainConfig, tokenizer, run_dir: Path, log: Callable[[str], None]
                      ) -> tuple[list[PromptItem], list[PromptItem]]:
    """Prompts (and chosen responses) of the run's preference data; rejected responses are not used."""
    if config.data.kind != "pair":
        raise ValueError(f"objective {config.objectives[0].name!r} reads preference pairs (data.kind: pair); "
                         f"only their prompts and chosen responses are used")
    data = load_run_data(config, tokenizer, run_dir, unpaired=False, log=log)
    splits = []
    for records, encoded in ((data.train, data.train_encoded), (data.eval, data.eval_encoded)):
        splits.append([PromptItem(r.prompt, r.system, e.prompt, response_text(r.chosen), e.chosen)
                       for r, e in zip(records, encoded, strict=True)])
    return splits[0], splits[1]


def response_text(response: Text) -> str:
    """A response as the plain text a verifier or reward model scores (assistant turns joined)."""
    if isinstance(response, str):
        return response
    return "\n\n".join(m["content"] for m in to_messages(response, role="assistant"))


# ------------------------------------------------------------------------------------------ models


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model without a distributed wrapper (DDP has no ``.config`` for the sampler)."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


class ReferencePolicy:
    """The loop's reference as a causal LM the sampler can call, plus token-level log-probs.

    For the adapter-disabled reference, every forward runs inside ``disable_adapter()``. It is deliberately
    not an ``nn.Module``: with the policy as a registered child, restoring this wrapper's train/eval mode
    would overwrite the policy's. ``training``/``eval``/``train`` act on the underlying model.
    """

    def __init__(self, reference, chunk_size: int = 1024, autocast_dtype: torch.dtype | None = None):
        if reference is None:
            raise ValueError("this method needs a reference model (reference: copy or adapter)")
        self.adapter = isinstance(reference, AdapterDisabledReference)
        self.model: nn.Module = unwrap_model(reference.model)
        self.chunk_size, self.autocast_dtype = chunk_size, autocast_dtype

    @property
    def config(self):
        return self.model.config

    @property
    def training(self) -> bool:
        return self.model.training

    def eval(self) -> ReferencePolicy:
        self.model.eval()
        return self

    def train(self, mode: bool = True) -> ReferencePolicy:
        self.model.train(mode)
        return self

    @contextmanager
    def active(self) -> Iterator[nn.Module]:
        with self.model.disable_adapter() if self.adapter else nullcontext():
            yield self.model

    def __call__(self, **kwargs):
        with self.active() as model:
            return model(**kwargs)

    @torch.no_grad()
    def logps(self, batch: SequenceBatch, return_token_logps: bool = False) -> SequenceLogps:
        was_training = self.model.training
        self.model.eval()  # no LoRA dropout in the reference
        try:
            with self.active() as model:
                return sequence_logps(model, batch, self.chunk_size, self.autocast_dtype, return_token_logps)
        finally:
            self.model.train(was_training)


def step_generator(ctx: BatchContext, seed: int, state: dict, key: str, training: bool, salt: int = 0
                   ) -> torch.Generator:
    """The sampling RNG. Training draws are numbered in the checkpointed objective state, so a resumed
    run samples exactly what the uninterrupted run did; eval draws are fixed (same samples every eval). Under
    several processes each rank gets its own stream (offset by rank; rank 0 is the one-process stream)."""
    if training:
        counter = state.setdefault(key, {"draws": 0})
        draw = counter["draws"]
        counter["draws"] = draw + 1
        value = seed * 1_000_003 + draw + 1
    else:
        value = seed * 1_000_003 + 7_919 * (salt + 1) + 500_000
    value += 1_000_000_007 * _rank()
    return torch.Generator(device=ctx.device).manual_seed(value % (2 ** 63))


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def sample_responses(
    policy: nn.Module,
    reference: ReferencePolicy | nn.Module | None,
    prompts: list[list[int]],
    n: int,
    beta: float,
    max_new_tokens: int,
    temperature: float,
    generator: torch.Generator,
    pad_id: int,
    eos_id: int,
    device: torch.device,
) -> list[list[list[int]]]:
    """``n`` responses per prompt from the β-mixture of policy and reference (β = 0: the policy alone), as
    token ids cut after the first eos: one batched engine call, each prompt prefilled once.
    ``temperature`` 0 is greedy."""
    params = SamplingParams(max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                            temperature=temperature if temperature > 0 else 1.0)
    out = sample_ids(policy, prompts, params, n, eos_token_id=eos_id, pad_token_id=pad_id,
                     batch_size=max(len(prompts), 1), reference=reference if beta > 0 else None,
                     mixture_beta=beta, generator=generator)
    return out.responses


def decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def score_pairs(source: PreferenceSource, prompts: list[Text], first: list[str], second: list[str]
                ) -> tuple[Tensor, Tensor | None]:
    """(p = P(first ≻ second), rewards of first + second or None); a reward source scores each text once."""
    from_rewards = getattr(source, "preference_from_rewards", None)
    if callable(from_rewards):
        rewards = source.rewards(prompts + prompts, first + second)
        n = len(prompts)
        return from_rewards(rewards[:n], rewards[n:]).float(), rewards.float()
    return source.preferences(prompts, first, second).float(), None


def sample_eval(method: Method, ctx: BatchContext, items: list[PromptItem], batch_size: int,
                source: PreferenceSource, max_new_tokens: int, temperature: float) -> dict[str, float]:
    """Two policy samples per eval prompt (fixed seed), scored against two reference samples:
    ``win_rate`` (mean P(policy ≻ reference) under the source), ``reward_mean`` of the policy samples (the
    verifier pass rate with the verifier), ``kl`` (mean summed log π_θ − log π_ref over policy samples,
    an unbiased KL(π_θ‖π_ref) estimate) and ``response_length``. Win rate and KL need a reference."""
    policy = unwrap_model(ctx.model)
    reference = ReferencePolicy(ctx.reference, ctx.chunk_size, ctx.autocast_dtype) \
        if ctx.reference is not None else None
    was_training = ctx.model.training
    ctx.model.eval()
    sums: dict[str, float] = {}
    count = 0
    eos, pad = ctx.tokenizer.eos_token_id, ctx.pad_id
    try:
        with torch.no_grad():
            for start in range(0, len(items), batch_size):
                batch = items[start:start + batch_size]
                prompts = [it.prompt_ids for it in batch]
                texts_of = [it.prompt for it in batch] * 2
                gen = step_generator(ctx, method.config.seed, {}, "", False, salt=start)
                mine = sample_responses(policy, reference, prompts, 2, 0.0, max_new_tokens, temperature, gen,
                                        pad, eos, ctx.device)
                mine_ids = [s[0] for s in mine] + [s[1] for s in mine]
                mine_text = [decode(ctx.tokenizer, s) for s in mine_ids]
                metrics = {"response_length": sum(map(len, mine_ids)) / len(mine_ids)}
                if reference is not None:
                    theirs = sample_responses(policy, reference, prompts, 2, 1.0, max_new_tokens, temperature,
                                              gen, pad, eos, ctx.device)
                    theirs_text = [decode(ctx.tokenizer, s[0]) for s in theirs] + \
                                  [decode(ctx.tokenizer, s[1]) for s in theirs]
                    p, rewards = score_pairs(source, texts_of, mine_text, theirs_text)
                    metrics["win_rate"] = p.mean().item()
                    if rewards is not None:
                        metrics["reward_mean"] = rewards[:len(mine_text)].mean().item()
                        metrics["reference_reward_mean"] = rewards[len(mine_text):].mean().item()
                    rows = [(it.prompt_ids, s) for it, s in zip(batch * 2, mine_ids, strict=True)]
                    seq = collate(rows, pad).to(ctx.device)
                    pol = sequence_logps(ctx.model, seq, ctx.chunk_size, ctx.autocast_dtype).logps
                    metrics["kl"] = (pol - reference.logps(seq).logps).mean().item()
                elif hasattr(source, "rewards"):
                    metrics["reward_mean"] = source.rewards(texts_of, mine_text).float().mean().item()
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value * len(batch)
                count += len(batch)
    finally:
        ctx.model.train(was_training)
    return {key: value / max(count, 1) for key, value in sums.items()}


def float_metrics(metrics: dict[str, Tensor | float]) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items()}


# ------------------------------------------------------------------------------------------ the method


@register_method("online_ipo", "ipo_md", "online_dpo",
                 params={"online_ipo": OnlineIPOParams, "ipo_md": IPOMDParams, "online_dpo": OnlineDPOParams})
class OnlinePreferenceMethod(Method):
    """Online IPO / IPO-MD / online DPO; formulas, papers and defaults in the module docstring, parameters in
    :class:`OnlineIPOParams`, :class:`IPOMDParams` and :class:`OnlineDPOParams`."""

    needs_reference = True
    precomputable_reference = False  # the reference scores the policy's own samples

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.params = method_params(config, OnlineParams)
        self.kind = config.objectives[0].name
        self.source: PreferenceSource | None = None
        # The mean of log π_θ − log π_ref over the step's samples estimates KL(π_θ‖π_ref) only when they come
        # from π_θ itself; mixture samples (IPO-MD) give E_{π_mix}[log π_θ − log π_ref], which is not a KL.
        self.log_ratio_metric = "kl" if self.params.mixture_beta == 0 else "logratio_mixture_samples"

    def preference_source(self, ctx: BatchContext) -> PreferenceSource:
        if self.source is None:  # built lazily: a judge or reward model is loaded onto the run's device
            self.source = build_source(self.params.preference, device=ctx.device)
        return self.source

    def load(self, tokenizer, run_dir: Path, log: Callable[[str], None]) -> tuple[list, list]:
        return load_prompt_items(self.config, tokenizer, run_dir, log)

    def reference_rows(self, items: list) -> Rows:
        raise NotImplementedError("online methods score their own samples; the reference cannot be precomputed")

    def step(self, ctx: BatchContext, items: list, indices: list[int], precomputed, state: dict,
             training: bool) -> StepOutput:
        batch = [items[i] for i in indices]
        n = len(batch)
        source = self.preference_source(ctx)
        reference = ReferencePolicy(ctx.reference, ctx.chunk_size, ctx.autocast_dtype)
        gen = step_generator(ctx, self.config.seed, state, self.kind, training, salt=indices[0])
        samples = sample_responses(unwrap_model(ctx.model), reference, [it.prompt_ids for it in batch], 2,
                                   self.params.mixture_beta, self.params.max_new_tokens,
                                   self.params.temperature, gen, ctx.pad_id,
                                   ctx.tokenizer.eos_token_id, ctx.device)
        first, second = [s[0] for s in samples], [s[1] for s in samples]
        prompts = [it.prompt for it in batch]
        p, rewards = score_pairs(source, prompts, [decode(ctx.tokenizer, s) for s in first],
                                 [decode(ctx.tokenizer, s) for s in second])
        p = p.to(ctx.device)

        rows = [(it.prompt_ids, s) for it, s in zip(batch, first, strict=True)] + \
               [(it.prompt_ids, s) for it, s in zip(batch, second, strict=True)]
        seq = collate(rows, ctx.pad_id).to(ctx.device)
        out = sequence_logps(ctx.model, seq, ctx.chunk_size, ctx.autocast_dtype)
        ref = reference.logps(seq).logps
        pol, tokens = out.logps, out.tokens
        if self.kind == "online_dpo":
            loss, metrics = self.dpo_loss(pol, ref, tokens, p, n)
        else:
            labels = p
            ipo = self.params
            assert isinstance(ipo, OnlineIPOParams)
            if ipo.hard_labels:  # I ~ Bernoulli(p): ties and soft preferences are drawn, not rounded
                labels = torch.bernoulli(p, generator=gen)
            result = online_ipo_loss(pol[:n], pol[n:], ref[:n], ref[n:], labels, tau=ipo.tau,
                                     hard_labels=ipo.hard_labels, tokens_y=tokens[:n], tokens_y2=tokens[n:],
                                     length_normalize=ipo.length_normalize)
            loss = result.loss.mean()
            metrics = float_metrics(result.metrics)
            metrics["rewards/probabilities"] = p.mean().item()
        with torch.no_grad():
            metrics.update({
                "loss": loss.item(),
                self.log_ratio_metric: (pol - ref).mean().item(),
                "response_length": tokens.mean().item(),
                "tie_fraction": ((p - 0.5).abs() < 1e-6).float().mean().item(),
            })
            if rewards is not None:
                metrics["reward_mean"] = rewards.mean().item()
        return StepOutput(loss, metrics, seq.num_tokens)

    def dpo_loss(self, pol: Tensor, ref: Tensor, tokens: Tensor, p: Tensor, n: int) -> tuple[Tensor, dict]:
        """DPO on the pairs oriented by p > ½; ties are dropped (the loss is 0 with a graph if all tie)."""
        decided = (p - 0.5).abs() >= 1e-6
        first_wins = p > 0.5
        idx = torch.arange(n, device=p.device)[decided]
        win = torch.where(first_wins[idx], idx, idx + n)
        lose = torch.where(first_wins[idx], idx + n, idx)
        metrics: dict[str, float] = {"rewards/probabilities": p.mean().item()}
        if idx.numel() == 0:
            return pol.sum() * 0.0, metrics
        logps = PairLogps(pol[win], pol[lose], tokens[win], tokens[lose], ref[win], ref[lose])
        dpo = self.params
        assert isinstance(dpo, OnlineDPOParams)
        result = get_objective("dpo").fn(logps, beta=dpo.beta, label_smoothing=dpo.label_smoothing)
        # Averaged over all pairs, so a batch of ties weighs nothing and the step size does not jump.
        loss = result.loss.sum() / n
        metrics.update(float_metrics(result.metrics))
        return loss, metrics

    def evaluate(self, ctx: BatchContext, items: list, batch_size: int, precomputed, state: dict
                 ) -> dict[str, float]:
        return sample_eval(self, ctx, items, batch_size, self.preference_source(ctx),
                           self.params.max_new_tokens, self.params.temperature)


__all__ = ["IPOMDParams", "OnlineDPOParams", "OnlineIPOParams", "OnlineParams", "OnlinePreferenceMethod",
           "PromptItem", "SampledParams", "ReferencePolicy", "load_prompt_items",
           "sample_eval", "sample_responses", "score_pairs", "step_generator", "unwrap_model"]
