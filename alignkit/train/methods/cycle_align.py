"""CycleAlign: white-box and black-box rankings of the policy's samples; the white box learns the black box's
ranking, the black box gets their agreements as in-context demonstrations (``cycle_align``). **Reconstruction**
(method notes: LOW-MEDIUM confidence).

Paper: Hong et al., "CycleAlign: Iterative Distillation from Black-box LLM to White-box Models for Better Human
Alignment" (ACL Findings 2024, arXiv 2310.16271); the ranking pieces and the choice of training label are in
``alignkit.objectives.cycle_align``.

Each training step is one turn of the cycle on a batch of prompts:

1. the policy (white box) samples ``n_candidates`` responses per prompt;
2. the black box scores them: any preference source (``ranker``: the synthetic verifier, a reward model, an LM
   judge; as in online IPO), by each candidate's reward, or by its summed win probability against the others when
   the source only compares pairs;
3. the white box ranks them by its length-normalised log-likelihood ``log π(y|x)/|y|``;
4. the agreement (longest common subsequence of the two rankings) is measured, and the policy trains on the
   black-box ranking with the RRHF-style hinge plus SFT on its best response (``label: black_box``; ``agreement``
   is the literal reading whose hinge is zero by construction: see ``alignkit.objectives.cycle_align``);
5. **black-box update**: agreements at least ``min_agreement`` long join the dynamic demonstration pool (the
   ``n_demonstrations`` most recent, kept in the checkpointed objective state so a resumed run continues with the
   same pool; every one is also appended to ``cycle_demonstrations.jsonl`` as a log). When the ranker is an LM
   judge (``{type: judge, model: ...}``), the static ``demonstrations`` of the config and the pool are put in the
   judge's system message as worked comparisons (best vs worst of each agreed ranking, the answer alternating
   between A and B so the examples teach no position) before it ranks the next prompts. Other rankers (verifier,
   reward model) read no prompt: there is nothing to condition, which is logged once.

Rounds are passes over the prompts (``max_steps`` × ``batch_size`` / number of prompts). Logged per step:
``cycle/agreement_length``, ``cycle/agreement_rate`` (share of prompts whose agreement was long enough),
``cycle/kendall_tau`` (black vs white ranking), ``cycle/demonstrations`` (size of the pool the judge saw),
``rank_loss``, ``sft_loss``, ``ranked_correctly``, ``ordered_pairs``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from alignkit.data.prompts import load_prompts
from alignkit.data.records import Text
from alignkit.engine.generation import SamplingParams, sample_ids
from alignkit.engine.layouts import collate
from alignkit.engine.logprobs import sequence_logps
from alignkit.io import append_jsonl
from alignkit.objectives.cycle_align import Label, cycle_label, kendall_tau, ranking_loss
from alignkit.objectives.params import Params
from alignkit.rewards import JudgePreference, LMJudge, PreferenceSource, build_source, prompt_text
from alignkit.train.config import TrainConfig
from alignkit.train.data import prompt_encoder, read_splits
from alignkit.train.methods.base import BatchContext, Method, Rows, StepOutput, method_params, register_method

DEMONSTRATIONS_FILE = "cycle_demonstrations.jsonl"
DEMONSTRATIONS_HEADER = "Examples of earlier comparisons, judged the way you should judge:"


class Demonstration(BaseModel):
    """A ranking the black box is shown: a question and its responses, best first."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    prompt: str = Field(min_length=1)
    ranking: list[str] = Field(min_length=2)


class CycleAlignParams(Params):
    ranker: str | dict[str, Any] | list[Any] = Field(
        "verifier", description="black-box ranker: a preference source (verifier, {type: reward_model, model: ...}, "
                                "{type: judge, model: ...}, module:attr)")
    n_candidates: int = Field(4, ge=2, description="responses sampled per prompt (paper: about 4-5)")
    max_new_tokens: int = Field(48, ge=1, description="longest sampled response, in tokens")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the candidates")
    sft_weight: float = Field(1.0, ge=0, description="weight of the SFT term on the top-ranked response")
    min_agreement: int = Field(2, ge=2, description="shorter agreements are no demonstration (and, with "
                                                    "label: agreement, fall back to the black-box ranking)")
    label: Label = Field("black_box", description="white box's ranking: black_box (reconstruction: the hinge fires "
                                                  "where the rankings disagree) or agreement (literal; hinge ~0)")
    n_demonstrations: int = Field(4, ge=0, description="most recent agreed rankings an LM-judge ranker is shown")
    demonstrations: list[Demonstration] = Field([], description="static demonstrations shown to an LM judge "
                                                                "before the dynamic ones: [{prompt, ranking}]")


@dataclass
class PromptItem:
    text: Text
    prompt: list[int]


def black_box_scores(source: PreferenceSource, prompt: Text, candidates: list[str]) -> list[float]:
    """One score per candidate: its reward when the source gives rewards, else its summed P(i ≻ j) over the
    others (each pair asked once: preference sources satisfy P(j ≻ i) = 1 − P(i ≻ j))."""
    n = len(candidates)
    if callable(getattr(source, "rewards", None)):
        return source.rewards([prompt] * n, candidates).float().tolist()
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    p = source.preferences([prompt] * len(pairs), [candidates[i] for i, _ in pairs],
                           [candidates[j] for _, j in pairs]).float().tolist()
    scores = [0.0] * n
    for (i, j), p_ij in zip(pairs, p, strict=True):
        scores[i] += p_ij
        scores[j] += 1.0 - p_ij
    return scores


def in_context_judge(source: PreferenceSource) -> LMJudge | None:
    """The LM judge behind a ranker, the only kind of black box that reads demonstrations; None otherwise."""
    judge = getattr(source, "judge", None) if isinstance(source, JudgePreference) else None
    return judge if isinstance(judge, LMJudge) else None


def demonstrations_prompt(base: str | None, demonstrations: list[Demonstration]) -> str | None:
    """The judge's system message: its own (if any), then each demonstration as a worked comparison of the
    ranking's best and worst response (best shown as A in even, as B in odd examples)."""
    if not demonstrations:
        return base
    blocks = []
    for k, demo in enumerate(demonstrations):
        best, worst = demo.ranking[0], demo.ranking[-1]
        first, second, answer = (best, worst, "A") if k % 2 == 0 else (worst, best, "B")
        blocks.append(f"[Question]\n{demo.prompt}\n\n[Response A]\n{first}\n\n[Response B]\n{second}\n\n"
                      f"Answer: {answer}")
    return "\n\n".join([*([base] if base else []), DEMONSTRATIONS_HEADER, *blocks])


@register_method("cycle_align", params=CycleAlignParams)
class CycleAlignMethod(Method):
    """Parameters: :class:`CycleAlignParams`, e.g. ``objectives: [{name: cycle_align, ranker: verifier}]``."""

    needs_reference = False

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.params = method_params(config, CycleAlignParams)
        self.weight = config.objectives[0].weight
        self.source: PreferenceSource | None = None
        self.judge: LMJudge | None = None
        self.judge_system: str | None = None  # the judge's own system message, before any demonstration
        self.run_dir = Path(config.output_dir)
        self._log: Callable[[str], None] = print

    def load(self, tokenizer, run_dir: Path, log: Callable[[str], None]) -> tuple[list, list]:
        self.run_dir, self._log = Path(run_dir), log
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

    def _black_box(self, device) -> PreferenceSource:
        """Built once; says once whether the black box can be given demonstrations."""
        if self.source is None:
            self.source = build_source(self.params.ranker, device=device)
            self.judge = in_context_judge(self.source)
            if self.judge is None:
                self._log(f"cycle_align: the ranker {self.params.ranker!r} is not an LM judge and reads no prompt, "
                          f"so the agreed rankings cannot condition it (they are still logged to "
                          f"{DEMONSTRATIONS_FILE}); the black box is the same in every round")
            else:
                self.judge_system = self.judge.system_prompt
        return self.source

    def _show_demonstrations(self, pool: list[dict]) -> int:
        """Puts the static and the pooled demonstrations in the LM judge's prompt; returns how many."""
        if self.judge is None:
            return 0
        shown = list(self.params.demonstrations) + [Demonstration(**d) for d in pool]
        self.judge.system_prompt = demonstrations_prompt(self.judge_system, shown)
        return len(shown)

    def step(self, ctx: BatchContext, items: list, indices: list[int], precomputed, state: dict,
             training: bool) -> StepOutput:
        p, tokenizer = self.params, ctx.tokenizer
        source = self._black_box(ctx.device)
        counter = state.setdefault("cycle_align", {"samples": 0})
        pool = counter.setdefault("demonstrations", [])
        shown = self._show_demonstrations(pool)
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + counter["samples"])
        counter["samples"] += 1
        batch = [items[i] for i in indices]
        sampled = sample_ids(ctx.model, [it.prompt for it in batch],
                             SamplingParams(max_new_tokens=p.max_new_tokens, do_sample=True,
                                            temperature=p.temperature), p.n_candidates,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=ctx.pad_id,
                             batch_size=len(batch), generator=generator).responses
        losses, sums, num_tokens, agreed_now = [], {}, 0, []
        for item, candidates in zip(batch, sampled, strict=True):
            scored = collate([(item.prompt, ids) for ids in candidates], ctx.pad_id).to(ctx.device)
            num_tokens += scored.num_tokens
            out = sequence_logps(ctx.model, scored, ctx.chunk_size, ctx.autocast_dtype)
            texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in candidates]
            black = black_box_scores(source, item.text, texts)
            label = cycle_label(black, (out.logps.detach() / out.tokens.clamp(min=1)).tolist(), p.min_agreement,
                                p.label)
            order = torch.tensor(label.ranking, device=ctx.device)
            result = ranking_loss(out.logps[order], out.tokens[order], p.sft_weight, torch.tensor(label.tiers))
            losses.append(result.loss)
            step_metrics = {key: float(value) for key, value in result.metrics.items()}
            step_metrics.update({"cycle/agreement_length": float(len(label.agreement)),
                                 "cycle/agreement_rate": float(label.agreed),
                                 "cycle/kendall_tau": kendall_tau(label.black, label.white)})
            for key, value in step_metrics.items():
                sums[key] = sums.get(key, 0.0) + value
            if training and label.agreed:
                demo = {"prompt": prompt_text(item.text), "ranking": [texts[i] for i in label.agreement]}
                agreed_now.append(demo)
                append_jsonl(self.run_dir / DEMONSTRATIONS_FILE, {**demo, "black_box_scores": black,
                                                                  "black_box": label.black, "white_box": label.white})
        if p.n_demonstrations:  # the next step's judge sees the most recent agreements
            pool[:] = (pool + agreed_now)[-p.n_demonstrations:]
        loss = self.weight * torch.cat(losses).mean()
        metrics = {key: value / len(batch) for key, value in sums.items()}
        metrics.update({"loss": loss.item(), "cycle/demonstrations": float(shown)})
        return StepOutput(loss, metrics, num_tokens)
