"""CycleAlign: white-box and black-box rankings of the policy's samples, trained on where they agree
(``cycle_align``). **Reconstruction** (method notes: LOW-MEDIUM confidence).

Paper: Hong et al., "CycleAlign: Iterative Distillation from Black-box LLM to White-box Models for Better Human
Alignment" (ACL Findings 2024, arXiv 2310.16271); the ranking pieces are in ``alignkit.objectives.cycle_align``.

Each training step is one turn of the cycle on a batch of prompts:

1. the policy (white box) samples ``n_candidates`` responses per prompt;
2. the black box ranks them: any preference source (``ranker``: the synthetic verifier, a reward model, an LM
   judge; as in online IPO), by each candidate's reward, or by its summed win probability against the others when
   the source only compares pairs;
3. the white box ranks them by its length-normalised log-likelihood ``log π(y|x)/|y|``;
4. the agreement (longest common subsequence of the two rankings; the black-box ranking when it is shorter
   than ``min_agreement``) is the label: the policy trains on it with the RRHF-style hinge plus SFT on its best
   response (``alignkit.objectives.cycle_align.ranking_loss``);
5. the agreements are kept as the black box's dynamic in-context demonstrations: appended to
   ``cycle_demonstrations.jsonl`` in the run directory. **Not implemented:** feeding them back into the black
   box's prompt; alignkit's preference sources take no demonstrations, so the black box does not change across
   rounds here (the paper's "update the black box" step).

Rounds are passes over the prompts (``max_steps`` × ``batch_size`` / number of prompts). Logged per step:
``cycle/agreement_length``, ``cycle/agreement_rate`` (share of prompts whose agreement was long enough),
``cycle/kendall_tau`` (black vs white ranking), ``rank_loss``, ``sft_loss``, ``ranked_correctly``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from alignkit.data.prompts import load_prompts
from alignkit.data.records import Text
from alignkit.engine.generation import SamplingParams, sample_ids
from alignkit.engine.layouts import collate
from alignkit.engine.logprobs import sequence_logps
from alignkit.io import append_jsonl
from alignkit.objectives.cycle_align import agreement_ranking, kendall_tau, ranking_loss
from alignkit.objectives.params import Params
from alignkit.rewards import PreferenceSource, build_source
from alignkit.train.config import TrainConfig
from alignkit.train.data import prompt_encoder, read_splits
from alignkit.train.methods.base import BatchContext, Method, Rows, StepOutput, method_params, register_method

DEMONSTRATIONS_FILE = "cycle_demonstrations.jsonl"


class CycleAlignParams(Params):
    ranker: str | dict[str, Any] | list[Any] = Field(
        "verifier", description="black-box ranker: a preference source (verifier, {type: reward_model, model: ...}, "
                                "a judge, module:attr)")
    n_candidates: int = Field(4, ge=2, description="responses sampled per prompt (paper: about 4-5)")
    max_new_tokens: int = Field(48, ge=1, description="longest sampled response, in tokens")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the candidates")
    sft_weight: float = Field(1.0, ge=0, description="weight of the SFT term on the top-ranked response")
    min_agreement: int = Field(2, ge=2, description="shorter agreements fall back to the black-box ranking")


@dataclass
class PromptItem:
    text: Text
    prompt: list[int]


def black_box_ranking(source: PreferenceSource, prompt: Text, candidates: list[str]) -> list[int]:
    """Candidate indices best first: by reward when the source gives rewards, else by summed P(i ≻ j)."""
    n = len(candidates)
    if callable(getattr(source, "rewards", None)):
        scores = source.rewards([prompt] * n, candidates).float()
    else:
        pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
        p = source.preferences([prompt] * len(pairs), [candidates[i] for i, _ in pairs],
                               [candidates[j] for _, j in pairs]).float()
        scores = torch.zeros(n).index_add_(0, torch.tensor([i for i, _ in pairs]), p.cpu())
    return sorted(range(n), key=lambda i: (-float(scores[i]), i))


@register_method("cycle_align", params=CycleAlignParams)
class CycleAlignMethod(Method):
    """Parameters: :class:`CycleAlignParams`, e.g. ``objectives: [{name: cycle_align, ranker: verifier}]``."""

    needs_reference = False

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.params = method_params(config, CycleAlignParams)
        self.weight = config.objectives[0].weight
        self.source: PreferenceSource | None = None
        self.run_dir = Path(config.output_dir)
        self._tokenizer = None

    def load(self, tokenizer, run_dir: Path, log: Callable[[str], None]) -> tuple[list, list]:
        self.run_dir, self._tokenizer = Path(run_dir), tokenizer
        data = self.config.data

        def from_synthetic(pairs: list) -> list[tuple[Text, str | None]]:
            return list({(p.prompt, p.system): None for p in pairs})

        splits = read_splits(self.config, from_synthetic,
                             lambda source: load_prompts(source, column_map=data.column_map, log=log))
        encoder = prompt_encoder(tokenizer, self.config)
        train, evaluation = ([PromptItem(text, encoder.encode_prompt(text, system)[-data.max_prompt_length:])
                              for text, system in split] for split in splits)
        log(f"data: {len(train)} train and {len(evaluation)} eval prompts; {self.params.n_candidates} candidates each")
        return train, evaluation

    def reference_rows(self, items: list) -> Rows:
        return []

    def step(self, ctx: BatchContext, items: list, indices: list[int], precomputed, state: dict,
             training: bool) -> StepOutput:
        p, tokenizer = self.params, ctx.tokenizer
        if self.source is None:
            self.source = build_source(p.ranker, device=ctx.device)
        counter = state.setdefault("cycle_align", {"samples": 0})
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + counter["samples"])
        counter["samples"] += 1
        batch = [items[i] for i in indices]
        sampled = sample_ids(ctx.model, [it.prompt for it in batch],
                             SamplingParams(max_new_tokens=p.max_new_tokens, do_sample=True,
                                            temperature=p.temperature), p.n_candidates,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=ctx.pad_id,
                             batch_size=len(batch), generator=generator).responses
        losses, sums, num_tokens = [], {}, 0
        for item, candidates in zip(batch, sampled, strict=True):
            rows = [(item.prompt, ids) for ids in candidates]
            scored = collate(rows, ctx.pad_id).to(ctx.device)
            num_tokens += scored.num_tokens
            out = sequence_logps(ctx.model, scored, ctx.chunk_size, ctx.autocast_dtype)
            texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in candidates]
            black = black_box_ranking(self.source, item.text, texts)
            normalised = (out.logps.detach() / out.tokens.clamp(min=1)).tolist()
            white = sorted(range(len(texts)), key=lambda i: (-normalised[i], i))
            ranking, agreed = agreement_ranking(black, white, p.min_agreement)
            order = torch.tensor(ranking, device=ctx.device)
            result = ranking_loss(out.logps[order], out.tokens[order], p.sft_weight)
            losses.append(result.loss)
            step_metrics = {key: float(value) for key, value in result.metrics.items()}
            step_metrics.update({"cycle/agreement_length": float(len(ranking) if agreed else 0),
                                 "cycle/agreement_rate": float(agreed),
                                 "cycle/kendall_tau": kendall_tau(black, white)})
            for key, value in step_metrics.items():
                sums[key] = sums.get(key, 0.0) + value
            if training and agreed:
                append_jsonl(self.run_dir / DEMONSTRATIONS_FILE, {
                    "prompt": item.text if isinstance(item.text, str) else str(item.text),
                    "ranking": [texts[i] for i in ranking], "black_box": black, "white_box": white})
        loss = self.weight * torch.cat(losses).mean()
        metrics = {key: value / len(batch) for key, value in sums.items()}
        metrics["loss"] = loss.item()
        return StepOutput(loss, metrics, num_tokens)
