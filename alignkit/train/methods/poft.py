"""PoFT: preference-oriented SFT against frozen aligned models (the loss is ``alignkit.objectives.poft``).

Paper: Fan et al., "Favoring Target Model Over Aligned LLMs", AAAI 2025, arXiv 2412.12865. **Reconstruction**:
the Bradley-Terry contest between the target and the aligned models is the paper's; the per-token
normalisation and the temperature are not confirmed against it.

Each SFT example (x, y) is scored once by every aligned model A_m (its mean per-token log-prob of y, with its own
tokenizer and chat template), before training. The scores are cached on disk as safetensors, keyed by a hash of
the aligned model's weights, its tokenizer and the exact token rows (the scheme of
``alignkit.train.reference``), so later runs on the same data and models skip the scoring. Training then
only needs the target model::

    s_θ = (1/|y|)·log π_θ(y|x),   s_A = mean over m of (1/|y|)·log π_{A_m}(y|x)
    L = −log σ((s_θ − s_A) / temperature)

Defaults: ``temperature`` 1.0 (none); ``aligned_models`` has no default and must be given.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import Field, field_validator, model_validator

from alignkit.data.readers import load_sft_examples
from alignkit.data.records import SFTExample
from alignkit.data.tokenize import encode_example
from alignkit.engine.layouts import collate
from alignkit.engine.logprobs import sequence_logps
from alignkit.models import load_model
from alignkit.models.builtin import cache_root
from alignkit.objectives.params import Params
from alignkit.objectives.poft import aligned_model_scores, poft_loss
from alignkit.train.config import TrainConfig
from alignkit.train.data import encode_splits, prompt_encoder, read_splits, rejected_rows_path
from alignkit.train.methods.base import (
    BatchContext,
    Method,
    Rows,
    StepOutput,
    method_params,
    params_error,
    register_method,
)
from alignkit.train.reference import PrecomputedReference


class PoFTParams(Params):
    aligned_models: list[str] | None = Field(None, description="model specs of the aligned LLMs A_m (builtin names, "
                                                               "directories, hub ids); one string is a list of one")
    temperature: float = Field(1.0, gt=0, description="divides s_θ − s_A inside the sigmoid (1.0: none)")

    @field_validator("aligned_models", mode="before")
    @classmethod
    def _one_spec(cls, value):
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _required(self) -> PoFTParams:
        if not self.aligned_models or not all(self.aligned_models):
            raise params_error("aligned_models", "must list one or more model specs, e.g. "
                                                 "aligned_models: [smollm2-135m-instruct]", self.aligned_models)
        return self


@dataclass
class EncodedSFT:
    prompt: list[int]
    response: list[int]
    aligned_score: float = 0.0  # s_A: mean over aligned models of their mean per-token log-prob of the response
    prompt_truncated: bool = False
    response_truncated: bool = False


def score_with_aligned_models(examples: list[SFTExample], specs: list[str], config: TrainConfig,
                              log: Callable[[str], None], cache_dir: Path | None = None) -> torch.Tensor:
    """s_A [N]. One aligned model in memory at a time; each scores the examples tokenised its own way."""
    data = config.data
    cache_dir = cache_dir or cache_root() / "poft_scores"
    sums, counts = [], []
    for spec in specs:
        model, tokenizer = load_model(spec, dtype=config.model.dtype, device=config.model.device,
                                      trust_remote_code=config.model.trust_remote_code, log=log)
        encoder = prompt_encoder(tokenizer, config)
        rows = []
        for ex in examples:
            encoded = encode_example(encoder, ex.prompt, ex.response, ex.system, data.max_length,
                                     data.max_prompt_length)
            rows.append((encoded.prompt, encoded.response))
        table = PrecomputedReference.build(
            model, tokenizer, rows, pad_id=tokenizer.pad_token_id, batch_size=config.batch_size,
            chunk_size=config.logprob_chunk_size, cache_dir=cache_dir,
            log=lambda message, spec=spec: log(message.replace("reference log-probs", f"PoFT scores of {spec}")))
        sums.append(table.table_logps)
        counts.append(table.table_tokens)
        del model, table
        gc.collect()
    return aligned_model_scores(torch.stack(sums), torch.stack(counts))


@register_method("poft", params=PoFTParams)
class PoftMethod(Method):
    """Parameters: :class:`PoFTParams`, e.g. ``objectives: [{name: poft, aligned_models: [smollm2-135m-instruct],
    temperature: 1.0}]``. Data: ``data.train`` is ``synthetic`` (the chosen responses) or an SFT file (see
    :func:`alignkit.data.readers.load_sft_examples`)."""

    needs_reference = False

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        params = method_params(config, PoFTParams)
        self.weight = config.objectives[0].weight
        self.aligned_models: list[str] = list(params.aligned_models or [])
        self.temperature = params.temperature

    def load(self, tokenizer, run_dir: Path, log: Callable[[str], None]) -> tuple[list, list]:
        data = self.config.data

        def from_synthetic(pairs: list) -> list[SFTExample]:
            return [SFTExample(prompt=p.prompt, response=p.chosen, system=p.system, metadata=p.metadata)
                    for p in pairs]

        def read(source: str) -> list[SFTExample]:
            return load_sft_examples(source, column_map=data.column_map, on_invalid=data.on_invalid,
                                     rejected_rows_path=rejected_rows_path(run_dir, self.config, source), log=log)

        train, evaluation = read_splits(self.config, from_synthetic, read)
        scores = score_with_aligned_models(train + evaluation, self.aligned_models, self.config, log)
        encoder = prompt_encoder(tokenizer, self.config)

        def encode(indexed: tuple[int, SFTExample]) -> EncodedSFT:
            i, ex = indexed  # i indexes train + evaluation, as the scores do
            e = encode_example(encoder, ex.prompt, ex.response, ex.system, data.max_length, data.max_prompt_length)
            return EncodedSFT(e.prompt, e.response, float(scores[i]), e.prompt_truncated, e.response_truncated)

        indexed = list(enumerate(train + evaluation))
        encoded = encode_splits((indexed[:len(train)], indexed[len(train):]), encode, data.max_length, log)
        log(f"data: {len(train)} train and {len(evaluation)} eval SFT examples; mean aligned-model score "
            f"{scores[:len(train)].mean().item():.3f} nats/token")
        return encoded[0], encoded[1]

    def reference_rows(self, items: list) -> Rows:
        return [(item.prompt, item.response) for item in items]  # unused: PoFT has no reference model

    def step(self, ctx: BatchContext, items: list, indices: list[int], precomputed, state: dict,
             training: bool) -> StepOutput:
        batch_items = [items[i] for i in indices]
        batch = collate([(item.prompt, item.response) for item in batch_items], ctx.pad_id).to(ctx.device)
        out = sequence_logps(ctx.model, batch, ctx.chunk_size, ctx.autocast_dtype)
        aligned = torch.tensor([item.aligned_score for item in batch_items], device=ctx.device)
        result = poft_loss(out.logps, out.tokens, aligned, self.temperature)
        loss = self.weight * result.loss.mean()
        metrics = {key: float(value) for key, value in result.metrics.items()}
        metrics["loss"] = loss.item()
        return StepOutput(loss, metrics, batch.num_tokens)
