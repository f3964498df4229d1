"""Learning from language feedback (LLF), text-only part: critique, refine, then DPO (``language_feedback``).

Paper: Ji et al., "Align Anything: Training All-Modality Models to Follow Instructions with Language Feedback"
(PKU, arXiv 2412.15838), section "Algorithm: LLF", and its scripts ``projects/lang_feedback/{critique_gen,
refine_gen}.py`` (the image variant; the text variant drops the image).

Pipeline, run once from the policy's starting weights before training (``wrap_model``):

1. **Respond**: the policy samples a response y to each prompt x (skipped for CUT-format data, whose rows
   already hold a response and its critique).
2. **Critique**: a critic writes a natural-language critique c of (x, y). ``critic_model`` names an LM critic,
   prompted with the scripts' critic prompt verbatim (:data:`CRITIC_PROMPT`, as one user turn); without it a
   *rule-based critic* does (:func:`rule_critique`): the synthetic tasks' verifier-based judgment
   (``alignkit.data.synthetic.judgment_for``), repeated phrases, more than ``max_sentences`` sentences. The
   rule critic is the method notes' CPU proposal: a learned critic (the paper's step 1, SFT of the critic on
   (x, y, c)) is out of scope here.
3. **Refine**: the policy regenerates conditioned on the critique, with the scripts' refine turn verbatim
   (:data:`REFINE_INSTRUCTION`) after the user / assistant turns of (x, y).
4. **Pairs**: (x, chosen = refined y*, rejected = original y), for DPO (``alignkit.objectives.preference.dpo``,
   reused unchanged). Rows without a critique, or whose refinement is empty or equal to y, make no pair.

The orientation (refined preferred) is implied by the report ("more learnable preference pairs"); the pairing
code was not found (method notes: MEDIUM confidence). Sampling defaults follow the scripts: T = 1.0,
repetition_penalty 1.1, one sample. Everything generated is written to ``llf_data.jsonl`` in the run
directory (prompt, response, critique, refined, split) and reused when the run resumes.

Every eval also generates greedy replies to eval prompts and reports what the feedback targets:
``llf/critique_free_rate`` (share the rule critic has nothing to say about), ``llf/distinct_2`` and
``llf/mean_words``.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field
from torch import nn

from alignkit.data.formats import detect_format, iter_rows
from alignkit.data.prompts import load_prompts
from alignkit.data.readers import load_records
from alignkit.data.records import Text
from alignkit.data.synthetic import FAMILIES, judgment_for
from alignkit.data.tokenize import encode_pair, prompt_messages, to_messages
from alignkit.engine.generation import generate
from alignkit.io import read_jsonl, write_jsonl
from alignkit.models import load_model
from alignkit.objectives import get_objective
from alignkit.objectives.params import Params
from alignkit.train.config import TrainConfig
from alignkit.train.data import prompt_encoder, read_splits, rejected_rows_path
from alignkit.train.methods.base import BatchContext, method_params, register_method
from alignkit.train.methods.preference import PreferenceMethod

DATA_FILE = "llf_data.jsonl"
# Verbatim from critique_gen.py / refine_gen.py (the USER:/ASSISTANT: markers become chat turns here).
CRITIC_PROMPT = "##Prompt: {prompt} ##Response: {response} Your critique and refinement:"
REFINE_INSTRUCTION = "{critique}. Now, please refine the response based on the critique and refinement suggestions."


class LanguageFeedbackParams(Params):
    beta: float = Field(0.1, gt=0, description="DPO inverse temperature on the (refined, original) pairs")
    label_smoothing: float = Field(0.0, ge=0, le=0.5, description="cDPO label-flip rate (0 = DPO)")
    critic_model: str | None = Field(None, description="model spec of an LM critic; None: the rule-based critic")
    max_sentences: int = Field(3, ge=1, description="rule critic: ask for at most this many sentences")
    max_new_tokens: int = Field(64, ge=1, description="tokens per sampled response and per refinement")
    critique_max_new_tokens: int = Field(96, ge=1, description="tokens per LM critique")
    temperature: float = Field(1.0, ge=0, description="sampling temperature of all stages (0: greedy; scripts: 1.0)")
    repetition_penalty: float = Field(1.1, gt=0, description="repetition penalty of all stages (scripts: 1.1)")
    eval_prompts: int = Field(16, ge=0, description="eval prompts answered greedily for the llf/ metrics; 0: off")


@dataclass
class FeedbackRow:
    prompt: Text
    system: str | None = None
    response: str | None = None  # given by CUT-format data, else sampled
    critique: str | None = None
    refined: str | None = None


def words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text.lower())


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct n-grams over all n-grams of ``texts`` (1.0: no n-gram repeats); 1.0 when there are none."""
    grams = [tuple(ws[i:i + n]) for ws in map(words, texts) for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def rule_critique(prompt: Text, response: str, max_sentences: int = 3) -> str | None:
    """A critique of ``response`` from rules, or None when there is nothing to fix: the synthetic verifier's
    judgment (for prompts of the synthetic tasks), repeated word 3-grams, too many sentences."""
    problems = []
    text = to_messages(prompt)[-1]["content"]
    if any(family.matches(text) for family in FAMILIES.values()):
        judged = judgment_for(text, response)
        if judged:
            problems.append(judged)
    if distinct_n([response], 3) < 1.0:
        problems.append("The response repeats itself; remove the repeated phrases.")
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", response.strip()) if s]
    if len(sentences) > max_sentences:
        problems.append(f"The response is too long: answer in at most {max_sentences} sentences.")
    if not response.strip():
        problems.append("The response is empty; answer the request.")
    return " ".join(problems) or None


@register_method("language_feedback", params=LanguageFeedbackParams)
class LanguageFeedbackMethod(PreferenceMethod):
    """Parameters: :class:`LanguageFeedbackParams`, e.g. ``objectives: [{name: language_feedback, beta: 0.1}]``.
    Data: ``synthetic`` (the tasks' prompts), a prompt file (anything ``alignkit.data.prompts.load_prompts``
    reads), or CUT judgment rows ``{prompt, response, judgment}`` (the critique is given; rows without one are
    skipped)."""

    precomputable_reference = False  # the pairs come from the policy's own samples, generated in wrap_model

    def __init__(self, config: TrainConfig):
        self.llf = method_params(config, LanguageFeedbackParams)
        super().__init__(config)
        self._rows: tuple[list[FeedbackRow], list[FeedbackRow]] = ([], [])
        self._items: tuple[list, list] = ([], [])
        self._tokenizer = None
        self._run_dir = Path(config.output_dir)

    def objective_terms(self):
        return [(get_objective("dpo"), self.config.objectives[0].weight,
                 {"beta": self.llf.beta, "label_smoothing": self.llf.label_smoothing})]

    def load(self, tokenizer, run_dir: Path, log: Callable[[str], None]) -> tuple[list, list]:
        """The prompts (or judged responses); the pairs are filled into the returned lists by ``wrap_model``."""
        self._log, self._tokenizer, self._run_dir = log, tokenizer, Path(run_dir)
        data = self.config.data

        def from_synthetic(pairs: list) -> list[FeedbackRow]:
            unique = {(p.prompt, p.system): None for p in pairs}  # a prompt may appear in several pairs
            return [FeedbackRow(_stored(prompt), system) for prompt, system in unique]

        def read(source: str) -> list[FeedbackRow]:
            if _has_judgments(source):
                records = load_records(source, kind="judgment", column_map=data.column_map,
                                       on_invalid=data.on_invalid,
                                       rejected_rows_path=rejected_rows_path(run_dir, self.config, source),
                                       log=log).records
                return [FeedbackRow(_stored(r.prompt), r.system, _text(r.response), r.judgment) for r in records]
            return [FeedbackRow(_stored(p), s) for p, s in load_prompts(source, column_map=data.column_map, log=log)]

        self._rows = read_splits(self.config, from_synthetic, read)
        log(f"data: {len(self._rows[0])} train and {len(self._rows[1])} eval prompts for critique-and-refine")
        return self._items

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """Generates (or, on resume, reads) the feedback data with the starting policy and encodes its pairs
        into the lists ``load`` returned; the loop builds batches from them only after this call."""
        path = self._run_dir / DATA_FILE
        if path.is_file():
            stored = read_jsonl(path)
            rows = tuple([FeedbackRow(r["prompt"], r["system"], r["response"], r["critique"], r["refined"])
                          for r in stored if r["split"] == split] for split in ("train", "eval"))
            self._log(f"language feedback: reusing {len(stored)} rows of {path}")
        else:
            rows = tuple(self.synthesise(model, split) for split in self._rows)
            write_jsonl(path, [{**vars(r), "split": name} for name, split in zip(("train", "eval"), rows, strict=True)
                               for r in split])
        encoder, data = prompt_encoder(self._tokenizer, self.config), self.config.data
        for items, split_rows in zip(self._items, rows, strict=True):
            items.clear()
            items.extend(encode_pair(encoder, r.prompt, r.refined, r.response, r.system, data.max_length,
                                     data.max_prompt_length) for r in split_rows if _is_pair(r))
        train, evaluation = self._items
        if not train:
            raise ValueError("language_feedback: no preference pairs: no response drew a critique, or no "
                             "refinement differed from its response")
        self._log(f"language feedback: {len(train)} train and {len(evaluation)} eval pairs (refined ≻ original) "
                  f"from {len(rows[0])} + {len(rows[1])} prompts")
        return super().wrap_model(model)

    def _generate(self, model: nn.Module, prompts: list, max_new_tokens: int, seed: int) -> list[str]:
        p = self.llf
        if not prompts:
            return []
        return generate(model, self._tokenizer, prompts, max_new_tokens=max_new_tokens,
                        batch_size=self.config.batch_size, do_sample=p.temperature > 0,
                        temperature=p.temperature or 1.0, repetition_penalty=p.repetition_penalty, seed=seed,
                        use_chat_template=self.config.data.use_chat_template)

    def synthesise(self, model: nn.Module, rows: list[FeedbackRow]) -> list[FeedbackRow]:
        """Responses (where missing), critiques (where missing) and refinements for ``rows``."""
        p, seed = self.llf, self.config.seed
        rows = [FeedbackRow(**vars(r)) for r in rows]
        todo = [r for r in rows if r.response is None]
        for row, text in zip(todo, self._generate(model, [_with_system(r) for r in todo], p.max_new_tokens, seed),
                             strict=True):
            row.response = text
        self.critique(rows)
        judged = [r for r in rows if r.critique]
        turns = [[*_with_system(r), {"role": "assistant", "content": r.response},
                  {"role": "user", "content": REFINE_INSTRUCTION.format(critique=r.critique.rstrip(". "))}]
                 for r in judged]
        for row, text in zip(judged, self._generate(model, turns, p.max_new_tokens, seed + 2), strict=True):
            row.refined = text
        self._log(f"language feedback: {len(todo)} responses sampled, {len(judged)} of {len(rows)} critiqued")
        return rows

    def critique(self, rows: list[FeedbackRow]) -> None:
        """Fill the missing critiques: the LM critic when configured, else :func:`rule_critique`."""
        missing = [r for r in rows if r.critique is None and r.response is not None]
        if self.llf.critic_model is None:
            for row in missing:
                row.critique = rule_critique(row.prompt, row.response, self.llf.max_sentences)
            return
        spec = self.config.model
        critic, tokenizer = load_model(self.llf.critic_model, dtype=spec.dtype, device=spec.device,
                                       trust_remote_code=spec.trust_remote_code, log=self._log)
        asks = [CRITIC_PROMPT.format(prompt=_plain(r.prompt), response=r.response) for r in missing]
        texts = generate(critic, tokenizer, asks, max_new_tokens=self.llf.critique_max_new_tokens,
                         batch_size=self.config.batch_size, do_sample=self.llf.temperature > 0,
                         temperature=self.llf.temperature or 1.0, repetition_penalty=self.llf.repetition_penalty,
                         seed=self.config.seed + 1)
        for row, text in zip(missing, texts, strict=True):
            row.critique = text.strip() or None
        del critic
        gc.collect()

    def evaluate(self, ctx: BatchContext, items: list, batch_size: int, precomputed, state: dict
                 ) -> dict[str, float]:
        """DPO metrics on the eval pairs, plus greedy replies to the first ``eval_prompts`` eval prompts judged by
        the rule critic (what the feedback asked for)."""
        metrics = super().evaluate(ctx, items, batch_size, precomputed, state) if items else {}
        rows = self._rows[1][:self.llf.eval_prompts]
        if rows:
            replies = generate(ctx.model, self._tokenizer, [_with_system(r) for r in rows],
                               max_new_tokens=self.llf.max_new_tokens, batch_size=batch_size,
                               use_chat_template=self.config.data.use_chat_template)
            free = [rule_critique(r.prompt, reply, self.llf.max_sentences) is None
                    for r, reply in zip(rows, replies, strict=True)]
            metrics.update({"llf/critique_free_rate": sum(free) / len(free), "llf/distinct_2": distinct_n(replies),
                            "llf/mean_words": sum(len(words(t)) for t in replies) / len(replies)})
        return metrics


def _is_pair(row: FeedbackRow) -> bool:
    return bool(row.critique and row.refined and row.response and row.refined.strip() != row.response.strip())


def _with_system(row: FeedbackRow) -> list[dict[str, str]]:
    return prompt_messages(row.prompt, row.system)


def _plain(prompt: Text) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in to_messages(prompt))


def _stored(prompt: Text) -> str | list[dict[str, str]]:
    """A prompt as JSON can hold it (chat messages as plain dicts)."""
    return prompt if isinstance(prompt, str) else to_messages(prompt)


def _text(value: Text) -> str:
    return value if isinstance(value, str) else _plain(value)


def _has_judgments(source: str) -> bool:
    """Whether the first row of a JSONL/JSON file has a ``judgment`` column (the CUT format)."""
    path = Path(source)
    if not path.is_file() or not path.name.removesuffix(".gz").endswith((".jsonl", ".json")):
        return False
    first = next(iter(iter_rows(source, detect_format(source, None), "train")), None)
    return first is not None and isinstance(first.data, dict) and "judgment" in first.data
