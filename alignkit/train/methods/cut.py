"""CUT: Contrastive Unlikelihood Training on judgment data (the loss is ``alignkit.objectives.cut``).

Paper: Xu, Cai, Zhang, Lam and Shi, "Reasons to Reject? Aligning Language Models with Judgments", Findings of
ACL 2024, arXiv 2312.14591 (code ``wwxu21/CUT``).

Each example is (prompt x, response y, judgment j). A response is *negative* when it has a judgment, unless a
``score`` at or above ``positive_score`` (7, as in the paper) marks it fine; otherwise it is *positive*. A
negative response is scored twice in one forward pass, after the plain prompt and after the prompt with the
judgment appended (the Align-N context); both rows carry the very same response token ids, so their per-token
log-probs line up position by position. Tokens the judgment makes more than λ times likelier,
p(y_t | x, j, y_<t) / p(y_t | x, y_<t) > λ, are inappropriate: unlikelihood α·log(1 − p_t) on those,
likelihood on the rest and on the response given its judgment. A positive response gets plain likelihood only,
so its judged row is never computed. Defaults (the paper's code): λ = ``threshold`` 1.1, α =
``unlikelihood_weight`` 0.1, ``positive_score`` 7.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError
from torch import Tensor

from alignkit.data.readers import load_records
from alignkit.data.records import Judgment, Message, Text
from alignkit.data.synthetic import make_judgments
from alignkit.data.tokenize import PromptEncoder, truncate
from alignkit.engine.layouts import collate
from alignkit.engine.logprobs import sequence_logps
from alignkit.objectives.cut import cut_loss
from alignkit.objectives.params import Params
from alignkit.train.config import TrainConfig
from alignkit.train.data import encode_splits, prompt_encoder, read_splits, rejected_rows_path
from alignkit.train.methods.base import BatchContext, Method, Rows, StepOutput, method_params, register_method

# The Align-N context: the reference code's template asks for "a response that ... should match the
# corresponding judgment"; here the judgment is appended to the (last) user turn, so chat templates apply.
JUDGMENT_TEMPLATE = ("{prompt}\n\nWrite a response to the request above that matches the following judgment of "
                     "it.\nJudgment: {judgment}")


class CUTParams(Params):
    threshold: float = Field(1.1, gt=0, description="λ: a token is flagged when the judgment makes it more than λ "
                                                    "times likelier (paper code: 1.1)")
    unlikelihood_weight: float = Field(0.1, ge=0, description="α: weight of the unlikelihood term on flagged "
                                                              "tokens (paper code: 0.1)")
    positive_score: float | None = Field(7.0, description="a judged response scoring at least this is positive "
                                                          "(paper: 7); null: every judgment marks a negative")
    judgment_template: str = Field(JUDGMENT_TEMPLATE, description="the Align-N prompt; {prompt} and {judgment} "
                                                                  "are filled in")

    @field_validator("judgment_template")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        if "{prompt}" not in value or "{judgment}" not in value:
            raise PydanticCustomError("invalid_parameter", "must contain {prompt} and {judgment}")
        return value


def with_judgment(prompt: Text, judgment: str, template: str = JUDGMENT_TEMPLATE) -> Text:
    """The prompt with the judgment in context: ``template`` fills the last user turn."""
    if isinstance(prompt, str):
        return template.format(prompt=prompt, judgment=judgment)
    messages = [m if isinstance(m, Message) else Message(**m) for m in prompt]
    last = max(i for i, m in enumerate(messages) if m.role == "user")
    turn = Message(role="user", content=template.format(prompt=messages[last].content, judgment=judgment))
    return [*messages[:last], turn, *messages[last + 1:]]


def is_negative(record: Judgment, positive_score: float | None) -> bool:
    if record.judgment is None:
        return False
    return not (positive_score is not None and record.score is not None and record.score >= positive_score)


@dataclass
class EncodedJudgment:
    prompt: list[int]
    response: list[int]
    judged_prompt: list[int] | None  # None for positive examples
    prompt_truncated: bool = False
    response_truncated: bool = False

    @property
    def negative(self) -> bool:
        return self.judged_prompt is not None


def encode_judgment(encoder: PromptEncoder, record: Judgment, negative: bool, template: str, max_length: int,
                    max_prompt_length: int) -> EncodedJudgment:
    """The response is tokenised once (after the plain prompt) and cut to what fits after *both* prompts, so
    both rows score the same tokens."""
    prompt = encoder.encode_prompt(record.prompt, record.system)
    response = encoder.encode_response(record.prompt, record.response, record.system)
    judged = None
    pt = rt = False
    if negative:
        assert record.judgment is not None
        judged = encoder.encode_prompt(with_judgment(record.prompt, record.judgment, template), record.system)
        judged, (response,), pt, rt = truncate(judged, [response], max_length, max_prompt_length)
    prompt, (response,), pt2, rt2 = truncate(prompt, [response], max_length, max_prompt_length)
    return EncodedJudgment(prompt, response, judged, pt or pt2, rt or rt2)


def response_token_logps(token_logps: Tensor, rows: Rows, width: int) -> Tensor:
    """[N, width] log-probs of each row's response tokens, realigned to start at column 0 (zero-padded).

    ``token_logps[i, t]`` scores token t+1 of row i, so row i's response starts at column len(prompt) − 1.
    """
    out = [F.pad(token_logps[i, len(p) - 1:len(p) - 1 + len(r)], (0, width - len(r))) for i, (p, r) in
           enumerate(rows)]
    return torch.stack(out)


@register_method("cut", params=CUTParams)
class CutMethod(Method):
    """Parameters: :class:`CUTParams`, e.g. ``objectives: [{name: cut, threshold: 1.1, unlikelihood_weight: 0.1}]``.
    Data: ``data.train`` is ``synthetic`` (judgments derived from the verifiers) or a judgment file: rows
    ``prompt``, ``response``, ``judgment`` (empty/null for a fine response), optional ``score``."""

    needs_reference = False

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        params = method_params(config, CUTParams)
        self.weight = config.objectives[0].weight
        self.threshold = params.threshold
        self.unlikelihood_weight = params.unlikelihood_weight
        self.positive_score = params.positive_score
        self.template = params.judgment_template

    def load(self, tokenizer, run_dir: Path, log: Callable[[str], None]) -> tuple[list, list]:
        data = self.config.data

        def read(source: str) -> list[Judgment]:
            return load_records(source, kind="judgment", column_map=data.column_map, on_invalid=data.on_invalid,
                                rejected_rows_path=rejected_rows_path(run_dir, self.config, source), log=log).records

        train, evaluation = read_splits(self.config, make_judgments, read)
        encoder = prompt_encoder(tokenizer, self.config)
        encoded = encode_splits(
            (train, evaluation),
            lambda r: encode_judgment(encoder, r, is_negative(r, self.positive_score), self.template, data.max_length,
                                      data.max_prompt_length),
            data.max_length, log)
        n_neg = sum(item.negative for item in encoded[0])
        if not n_neg:
            log("cut: no training example carries a judgment, so this is plain SFT")
        log(f"data: {len(train)} train ({n_neg} with a judgment) and {len(evaluation)} eval judgment examples")
        return encoded[0], encoded[1]

    def reference_rows(self, items: list) -> Rows:
        return [(item.prompt, item.response) for item in items]  # unused: CUT has no reference model

    def token_logps(self, ctx: BatchContext, items: list, indices: list[int]
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
        """(lp_with_judgment, lp_without, mask, is_negative) per response token, [B, T] / [B], and tokens fed."""
        batch_items = [items[i] for i in indices]
        plain = [(item.prompt, item.response) for item in batch_items]
        negatives = [b for b, item in enumerate(batch_items) if item.negative]
        judged = [(batch_items[b].judged_prompt, batch_items[b].response) for b in negatives]
        rows = plain + judged
        batch = collate(rows, ctx.pad_id).to(ctx.device)
        out = sequence_logps(ctx.model, batch, ctx.chunk_size, ctx.autocast_dtype, return_token_logps=True)
        width = max(len(r) for _, r in plain)
        aligned = response_token_logps(out.token_logps, rows, width)
        lp_without = aligned[:len(plain)]
        lp_with = torch.zeros_like(lp_without)
        if negatives:
            lp_with = lp_with.index_copy(0, torch.tensor(negatives, device=ctx.device), aligned[len(plain):])
        lengths = torch.tensor([len(r) for _, r in plain], device=ctx.device)
        mask = torch.arange(width, device=ctx.device)[None, :] < lengths[:, None]
        negative = torch.tensor([item.negative for item in batch_items], device=ctx.device)
        return lp_with, lp_without, mask, negative, batch.num_tokens

    def loss(self, lp_with: Tensor, lp_without: Tensor, mask: Tensor, negative: Tensor
             ) -> tuple[Tensor, dict[str, float]]:
        out = cut_loss(lp_with, lp_without, mask, negative, self.threshold, self.unlikelihood_weight)
        loss = self.weight * out.loss.mean()
        metrics = {key: float(value) for key, value in out.metrics.items()}
        metrics["loss"] = loss.item()
        return loss, metrics

    def step(self, ctx: BatchContext, items: list, indices: list[int], precomputed, state: dict,
             training: bool) -> StepOutput:
        lp_with, lp_without, mask, negative, num_tokens = self.token_logps(ctx, items, indices)
        loss, metrics = self.loss(lp_with, lp_without, mask, negative)
        return StepOutput(loss, metrics, num_tokens)

    def evaluate(self, ctx: BatchContext, items: list, batch_size: int, precomputed, state: dict
                 ) -> dict[str, float]:
        """The loss and its metrics over the whole eval set at once, plus the mean per-token log-prob of
        positive and of negative responses after the plain prompt (training should pull them apart)."""
        was_training = ctx.model.training
        ctx.model.eval()
        parts = []
        with torch.no_grad():
            for start in range(0, len(items), batch_size):
                parts.append(self.token_logps(ctx, items, list(range(start, min(start + batch_size, len(items)))))[:4])
        ctx.model.train(was_training)
        width = max(p[0].shape[1] for p in parts)
        lp_with, lp_without, mask = (torch.cat([F.pad(p[i], (0, width - p[i].shape[1])) for p in parts])
                                     for i in range(3))
        negative = torch.cat([p[3] for p in parts])
        _, metrics = self.loss(lp_with, lp_without, mask, negative)
        per_token = (lp_without * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        for name, sel in (("positive", ~negative), ("negative", negative)):
            if sel.any():
                metrics[f"logps/{name}"] = per_token[sel].mean().item()
        return metrics
