"""Janus: system-message generalisation with sibling negatives (``janus``).

Paper: Lee, Park, Kim, Seo, "Aligning to Thousands of Preferences via System Message Generalization" (NeurIPS
2024, arXiv 2405.17977; code ``kaistAI/Janus``; data ``kaist-ai/Multifaceted-Collection``). A *data* method:
the losses are the existing ``sft``, ``dpo`` and ``orpo`` objectives (``recipe``).

Data: several system messages per instruction, each with the response written for it (the Multifaceted-Collection
SFT rows ``{system, prompt, output}``). The DPO/ORPO pairs are built as in the DPO split: per instruction, one
system message s_k is picked (seeded); chosen is its response y_k, rejected the response y_j of a *sibling* system
message of the same instruction (:func:`sibling_pairs`), so the pair differs only in the preference followed.
``pairs_per_prompt: all`` uses every ordered (k, j) instead. ``recipe: sft`` trains on every (s_k, x, y_k).

Evaluation adds the method notes' judge-free *system-message sensitivity* (an alignkit proposal, not from the
paper): ``janus/system_sensitivity = mean log π(y_k | s_k, x) − log π(y_k | s_j, x)`` on held-out pairs, i.e. how
much more likely the model finds a response under its own system message than under a sibling's. With
``data.train: synthetic`` the held-out instructions come with *unseen* paraphrases of the system messages, so the
metric measures generalisation to new system messages, as Multifaceted Bench does with a judge.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from alignkit.data.convert import RowContext
from alignkit.data.readers import read_rows
from alignkit.data.synthetic import FACTS
from alignkit.data.tokenize import EncodedPair, encode_pair, truncate
from alignkit.engine.layouts import collate
from alignkit.engine.logprobs import sequence_logps
from alignkit.objectives import get_objective
from alignkit.objectives.params import Params
from alignkit.train.config import TrainConfig
from alignkit.train.data import encode_splits, prompt_encoder, rejected_rows_path
from alignkit.train.methods.base import BatchContext, method_params, register_method
from alignkit.train.methods.preference import PreferenceMethod

# Synthetic system messages: (training phrasing, unseen eval phrasing, how the answer is written).
SYNTHETIC_STYLES: list[tuple[str, str, Callable]] = [
    ("You are a terse assistant: reply with the answer only, in uppercase letters.",
     "Answer using capital letters and nothing but the answer.", lambda fact: fact.answer.upper()),
    ("You are a data API: reply only with a JSON object with the key \"answer\".",
     "Machine-readable output only: a JSON object whose \"answer\" field holds the reply.",
     lambda fact: json.dumps({"answer": fact.answer})),
    ("You are a friendly tutor: reply with one complete sentence.",
     "Explain like a patient teacher, in a single full sentence.", lambda fact: fact.sentence),
]


class JanusParams(Params):
    recipe: Literal["dpo", "orpo", "sft"] = Field("dpo", description="loss on the data: dpo or orpo on sibling "
                                                                     "pairs, sft on every (system, prompt, output)")
    beta: float = Field(0.1, gt=0, description="dpo: inverse temperature; orpo: λ of the odds-ratio term "
                                               "(Janus ORPO: 0.1)")
    pairs_per_prompt: Literal["one", "all"] = Field("one", description="one sibling pair per instruction (the DPO "
                                                                       "split) or every ordered pair")


@dataclass
class SystemResponse:
    prompt: str
    system: str
    output: str


@dataclass
class JanusPair(EncodedPair):
    sibling_prompt: list[int] = field(default_factory=list)  # the prompt under the rejected response's system


def synthetic_groups(n_train: int, n_test: int, seed: int) -> tuple[list[SystemResponse], list[SystemResponse]]:
    """Fact questions, each under the three synthetic system messages; test facts get the unseen phrasings."""
    facts = list(FACTS)
    random.Random(seed).shuffle(facts)
    n_test = min(n_test, len(facts) // 2)
    train_facts, test_facts = facts[n_test:][:n_train], facts[:n_test]

    def rows(chosen: list, phrasing: int) -> list[SystemResponse]:
        return [SystemResponse(f"Question: {f.question[:1].upper()}{f.question[1:]}", style[phrasing], style[2](f))
                for f in chosen for style in SYNTHETIC_STYLES]

    return rows(train_facts, 0), rows(test_facts, 1)


def read_system_responses(source: str, config: TrainConfig, run_dir: Path, log) -> list[SystemResponse]:
    """Multifaceted-Collection SFT rows: ``system``, ``prompt``, ``output`` (``data.column_map`` renames)."""
    def build(row: dict, ctx: RowContext) -> SystemResponse:
        values = {}
        for name in ("system", "prompt", "output"):
            value = row.get(ctx.column_map.get(name, name))
            if not isinstance(value, str) or not value.strip():
                raise ctx.error(f"{name} is missing or empty", name)
            values[name] = value
        return SystemResponse(**values)

    data = config.data
    return read_rows(source, build, column_map=data.column_map, on_invalid=data.on_invalid,
                     rejected_rows_path=rejected_rows_path(run_dir, config, source), log=log).records


def sibling_pairs(rows: list[SystemResponse], seed: int, every: bool = False
                  ) -> list[tuple[SystemResponse, SystemResponse]]:
    """(chosen, rejected) rows: same instruction, different system messages; per instruction one seeded pick of
    the chosen system message and of a sibling (``every``: all ordered pairs). Instructions with a single
    system message give none."""
    groups: dict[str, list[SystemResponse]] = {}
    for row in rows:
        groups.setdefault(row.prompt, []).append(row)
    rng = random.Random(seed)
    out = []
    for members in groups.values():
        siblings = [m for m in {m.system: m for m in members}.values()]
        if len(siblings) < 2:
            continue
        if every:
            out += [(a, b) for a in siblings for b in siblings if a is not b and a.output != b.output]
            continue
        chosen = rng.choice(siblings)
        others = [s for s in siblings if s is not chosen and s.output != chosen.output]
        if others:
            out.append((chosen, rng.choice(others)))
    return out


@register_method("janus", params=JanusParams)
class JanusMethod(PreferenceMethod):
    """Parameters: :class:`JanusParams`, e.g. ``objectives: [{name: janus, recipe: dpo, beta: 0.1}]``."""

    def __init__(self, config: TrainConfig):
        self.janus = method_params(config, JanusParams)
        super().__init__(config)

    def objective_terms(self):
        params = {} if self.janus.recipe == "sft" else {"beta": self.janus.beta}
        return [(get_objective(self.janus.recipe), self.config.objectives[0].weight, params)]

    def load(self, tokenizer, run_dir: Path, log: Callable[[str], None]) -> tuple[list, list]:
        config, data = self.config, self.config.data
        self._log = log
        if data.train == "synthetic":
            train, evaluation = synthetic_groups(data.synthetic.n_train, data.synthetic.n_test, data.synthetic.seed)
        else:
            if not data.eval:
                raise ValueError("janus: set data.eval to held-out instructions with their own system messages")
            train, evaluation = (read_system_responses(s, config, run_dir, log) for s in (data.train, data.eval))
        encoder = prompt_encoder(tokenizer, config)

        def encode(pair: tuple[SystemResponse, SystemResponse]) -> JanusPair:
            chosen, rejected = pair
            e = encode_pair(encoder, chosen.prompt, chosen.output, rejected.output, chosen.system, data.max_length,
                            data.max_prompt_length)
            sibling = encoder.encode_prompt(chosen.prompt, rejected.system)
            sibling, _, _, _ = truncate(sibling, [e.chosen], data.max_length, data.max_prompt_length)
            return JanusPair(e.prompt, e.chosen, e.rejected, e.prompt_truncated, e.response_truncated, sibling)

        every = self.janus.pairs_per_prompt == "all" or self.janus.recipe == "sft"
        splits = [sibling_pairs(rows, config.seed, every) for rows in (train, evaluation)]
        if data.max_train_examples:
            splits[0] = splits[0][:data.max_train_examples]
        if data.max_eval_examples is not None:
            splits[1] = splits[1][:data.max_eval_examples]
        encoded = encode_splits(splits, encode, data.max_length, log)
        if self.janus.recipe == "sft":  # every (s_k, x, y_k) once, whichever sibling it was paired with
            encoded[0] = list({(tuple(p.prompt), tuple(p.chosen)): p for p in encoded[0]}.values())
        log(f"data: {len(encoded[0])} train and {len(encoded[1])} eval sibling pairs from {len(train)} and "
            f"{len(evaluation)} (system, prompt, output) rows")
        return encoded[0], encoded[1]

    def evaluate(self, ctx: BatchContext, items: list, batch_size: int, precomputed, state: dict
                 ) -> dict[str, float]:
        metrics = super().evaluate(ctx, items, batch_size, precomputed, state)
        metrics["janus/system_sensitivity"] = system_sensitivity(ctx, items, batch_size)
        return metrics


@torch.no_grad()
def system_sensitivity(ctx: BatchContext, items: list[JanusPair], batch_size: int) -> float:
    """Mean over ``items`` of log π(y_k | s_k, x) − log π(y_k | s_j, x) (summed response log-probs)."""
    was_training = ctx.model.training
    ctx.model.eval()
    total = 0.0
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            rows = [(it.prompt, it.chosen) for it in chunk] + [(it.sibling_prompt, it.chosen) for it in chunk]
            logps = sequence_logps(ctx.model, collate(rows, ctx.pad_id).to(ctx.device), ctx.chunk_size,
                                   ctx.autocast_dtype).logps
            total += float((logps[:len(chunk)] - logps[len(chunk):]).sum())
    finally:
        ctx.model.train(was_training)
    return total / max(len(items), 1)
