"""GTAlign: game-theoretic mutual-welfare rewards (Zhu et al., "GTAlign: Game-Theoretic Alignment of LLM
Assistants for Mutual Welfare", 2025, arXiv:2510.08872; code ulab-uiuc/GTAlign, a verl fork).

The model reasons in a fixed format: ``<thinking>…</thinking>``, then a ``<payoff>{…}</payoff>`` JSON payoff
matrix over the six strategy profiles (user question type DQ = detailed/clear or VQ = vague, × LLM action
DA = direct answer, CQ = clarifying question, AQ = answer + follow-up question), each cell
``{"LLM": u_llm, "user": u_user}``, then ``<analyze>…</analyze>`` (which action maximises welfare) and the
answer in ``<response>…</response>``. The reward is the Cobb-Douglas / Nash social welfare of two utilities:

    R = sqrt(U_user · U_LLM)
    U_user = ε + 0.5·q + 0.2·L(response; 20, 500) + 0.3·exp(−reasoning_chars / 500)
    U_LLM  = ε + 0.2·format + 0.2·payoff_quality + 0.4·q + 0.2·L(full output; 500, 1000)
    L(text; a, b) = σ(k·(words − a))·σ(k·(b − words)),  k = 0.005,  ε = 1e-4
    payoff_quality = Σ_cells [1/12·1(user ≠ LLM) + 1/12·1(|user − LLM| / max(|user|, |LLM|) > 0.1)]

``q`` ∈ [0, 1] is the answer quality of the ``<response>`` text, from a verifier or a reward model (the
paper uses an LLM judge or task verifiers); ``format`` is the reference code's format reward: 1 when the
output is exactly the four blocks in order and the payoff matrix parses with the six keys and numeric
``LLM``/``user`` values, 0.5 when the blocks are there but the matrix does not parse, else 0.

Reconstructed (the method notes give the math_hard task's weights; the code's per-task files differ):
"reasoning" is the characters inside ``<thinking>`` and ``<analyze>``; words are whitespace-separated; an
output with no ``<response>`` block gets the defined penalty ``malformed_reward`` (default 0, below every
well-formed output, whose R ≥ ε) and no answer-quality call; the payoff parser accepts Python-literal dicts and
curly quotes like the reference's ``jsonish_to_json``. As a preference source, p(y ≻ y') = (1 + R(y) − R(y'))/2
(R ∈ [0, 1]). Not implemented: inference-time steering by editing the payoff structure.

Our additions (not in the reference): ``partial_credit`` c gives a malformed output ``malformed_reward + c·progress``,
progress = the share of the eight tags ``<thinking>``, ``</thinking>``, …, ``</response>`` written in order (a
shaping term so that a policy that never writes the format yet still gets a reward that varies across its samples;
the reference gives the format reward, 0, instead). :func:`demonstration` writes an answer in the format with a
fixed, non-degenerate payoff matrix, and :func:`gtalign_pairs` turns preference pairs into formatted ones with the
instruction as their system prompt (training data for online methods whose reference answers should show the
format, e.g. GRAO's imitation term).
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from alignkit.data.records import Text
from alignkit.rewards.base import check_lengths, preferences_from_rewards

PAYOFF_KEYS = ("DQ_AQ", "DQ_CQ", "DQ_DA", "VQ_AQ", "VQ_CQ", "VQ_DA")
PLAYERS = ("LLM", "user")
EPSILON = 1e-4
TAGS = tuple(t for name in ("thinking", "payoff", "analyze", "response") for t in (f"<{name}>", f"</{name}>"))
_FORMAT = re.compile(r"^<thinking>.*?</thinking>\s*<payoff>.*?</payoff>\s*<analyze>.*?</analyze>\s*"
                     r"<response>.*?</response>$", re.DOTALL)

GTALIGN_INSTRUCTION = (
    "Before answering, reason as a game between you (the LLM) and the user. Write your reasoning in "
    "<thinking>...</thinking>. Then write a JSON payoff matrix in <payoff>...</payoff> with the keys DQ_AQ, DQ_CQ, "
    "DQ_DA, VQ_AQ, VQ_CQ, VQ_DA (the user's question is detailed (DQ) or vague (VQ); you give a direct answer "
    "(DA), ask a clarifying question (CQ), or answer and ask a follow-up (AQ)), each mapping to "
    '{"LLM": your payoff, "user": the user\'s payoff}. In <analyze>...</analyze> pick the action that maximises '
    "the welfare of both. Finally write your reply to the user in <response>...</response>.")


def extract_block(text: str, tag: str) -> str | None:
    """The stripped content of the first ``<tag>…</tag>``, or None."""
    match = re.search(rf"<{tag}>(.*?)</{tag}>", text, flags=re.DOTALL)
    return match.group(1).strip() if match else None


def parse_payoff(text: str) -> dict[str, dict[str, float]]:
    """The payoff matrix from a ``<payoff>`` block's content: JSON, or a Python dict literal (single quotes,
    curly quotes); exactly the six profile keys, each ``{"LLM": number, "user": number}``. Raises ValueError."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        fixed = text.replace("\u201c", '"').replace("\u201d", '"').replace("\u2018", "'").replace("\u2019", "'")
        try:
            data = ast.literal_eval(fixed)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as error:
            raise ValueError(f"the payoff matrix is neither JSON nor a Python literal: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"the payoff matrix must be an object, got {type(data).__name__}")
    if set(data) != set(PAYOFF_KEYS):
        raise ValueError(f"payoff keys {sorted(map(str, data))} are not {list(PAYOFF_KEYS)}")
    matrix = {}
    for key in PAYOFF_KEYS:
        cell = data[key]
        if not isinstance(cell, dict) or set(cell) != set(PLAYERS):
            raise ValueError(f"payoff cell {key} must be an object with exactly 'LLM' and 'user'")
        if any(isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) for v in cell.values()):
            raise ValueError(f"payoff cell {key}: 'LLM' and 'user' must be finite numbers")
        matrix[key] = {p: float(cell[p]) for p in PLAYERS}
    return matrix


@dataclass
class ParsedOutput:
    """One output in the GTAlign format; ``payoff`` is None (with ``payoff_error``) when it did not parse."""

    text: str
    thinking: str | None
    analyze: str | None
    response: str | None
    payoff: dict[str, dict[str, float]] | None
    payoff_error: str | None = None
    format_score: float = 0.0

    @property
    def malformed(self) -> bool:
        return self.response is None


def parse_output(text: str) -> ParsedOutput:
    """Split an output into its blocks and score its format (1, 0.5 or 0, as the reference's format reward)."""
    payoff_text = extract_block(text, "payoff")
    payoff, error = None, None
    if payoff_text:
        try:
            payoff = parse_payoff(payoff_text)
        except ValueError as exc:
            error = str(exc)
    else:
        error = "no <payoff> block" if payoff_text is None else "an empty <payoff> block"
    well_formed = _FORMAT.match(text.strip()) is not None
    score = (1.0 if payoff is not None else 0.5) if well_formed else 0.0
    return ParsedOutput(text, extract_block(text, "thinking"), extract_block(text, "analyze"),
                        extract_block(text, "response"), payoff, error, score)


def format_progress(text: str) -> float:
    """The share of the eight tags of the format (:data:`TAGS`) found in order, each searched after the previous
    one found: 1 for a complete skeleton, 7/8 for an output cut off before ``</response>``, 0 with no tag."""
    position, found = 0, 0
    for tag in TAGS:
        index = text.find(tag, position)
        if index >= 0:
            position, found = index + len(tag), found + 1
    return found / len(TAGS)


# A detailed question's game as the demonstrations write it: answering directly (DQ_DA) has the highest welfare,
# and every cell's two payoffs differ by more than 10%, so payoff_quality is 1.
EXAMPLE_MATRIX = {"DQ_AQ": {"LLM": 3.0, "user": 3.4}, "DQ_CQ": {"LLM": 2.1, "user": 1.8},
                  "DQ_DA": {"LLM": 4.0, "user": 4.6}, "VQ_AQ": {"LLM": 2.5, "user": 2.9},
                  "VQ_CQ": {"LLM": 3.1, "user": 3.5}, "VQ_DA": {"LLM": 2.0, "user": 1.6}}


def demonstration(answer: str, matrix: dict[str, dict[str, float]] | None = None,
                  thinking: str = "The question is clear and detailed, so a direct answer serves us both.",
                  analyze: str = "DQ_DA has the highest welfare for both of us: answer directly.") -> str:
    """``answer`` written in the GTAlign format, with :data:`EXAMPLE_MATRIX` (or ``matrix``) as the payoff."""
    payoff = json.dumps(matrix or EXAMPLE_MATRIX)
    return (f"<thinking>{thinking}</thinking>\n<payoff>{payoff}</payoff>\n<analyze>{analyze}</analyze>\n"
            f"<response>{answer.strip()}</response>")


def gtalign_pairs(pairs: Sequence[Any], instruction: str | None = None) -> list[Any]:
    """Preference pairs with both responses written as :func:`demonstration` and ``instruction`` (default
    :data:`GTALIGN_INSTRUCTION`) as the system prompt; string responses only."""
    out = []
    for pair in pairs:
        if not isinstance(pair.chosen, str) or not isinstance(pair.rejected, str):
            raise ValueError("gtalign_pairs: responses must be plain strings")
        out.append(pair.model_copy(update={"chosen": demonstration(pair.chosen),
                                           "rejected": demonstration(pair.rejected),
                                           "system": instruction or GTALIGN_INSTRUCTION}))
    return out


def length_logistic(words: int, low: float, high: float, k: float = 0.005) -> float:
    """σ(k·(words − low))·σ(k·(high − words)): near 1 between ``low`` and ``high`` words, falling off outside."""
    def sigmoid(z: float) -> float:
        return 1.0 / (1.0 + math.exp(-z))
    return sigmoid(k * (words - low)) * sigmoid(k * (high - words))


def payoff_quality(matrix: dict[str, dict[str, float]] | None) -> float:
    """Σ over the six cells of 1/12·[user ≠ LLM] + 1/12·[|user − LLM| / max(|user|, |LLM|) > 0.1], in [0, 1]:
    the reference rewards matrices whose two players' payoffs differ (non-degenerate games)."""
    if matrix is None:
        return 0.0
    total = 0.0
    for cell in matrix.values():
        user, llm = cell["user"], cell["LLM"]
        if user != llm:
            total += 1 / 12
            if abs(user - llm) / max(abs(user), abs(llm)) > 0.1:
                total += 1 / 12
    return total


def welfare_action(matrix: dict[str, dict[str, float]] | None) -> str | None:
    """The profile with the largest Nash welfare sqrt(max(u, 0)·max(l, 0)) in the matrix (for logging)."""
    if matrix is None:
        return None
    return max(PAYOFF_KEYS, key=lambda k: math.sqrt(max(matrix[k]["user"], 0) * max(matrix[k]["LLM"], 0)))


@dataclass
class Welfare:
    """The reward and its parts, for logging."""

    reward: float
    user: float = 0.0
    llm: float = 0.0
    parts: dict[str, Any] = field(default_factory=dict)


def mutual_welfare(parsed: ParsedOutput, quality: float, epsilon: float = EPSILON,
                   malformed_reward: float = 0.0, partial_credit: float = 0.0) -> Welfare:
    """R = sqrt(U_user · U_LLM) of a parsed output whose answer quality is ``quality`` ∈ [0, 1]; a malformed
    output (no ``<response>`` block) gets ``malformed_reward + partial_credit · format_progress``."""
    if parsed.malformed:
        progress = format_progress(parsed.text)
        return Welfare(malformed_reward + partial_credit * progress,
                       parts={"malformed": True, "format": parsed.format_score, "progress": progress})
    q = min(1.0, max(0.0, float(quality)))
    reasoning = len(parsed.thinking or "") + len(parsed.analyze or "")
    response_len = length_logistic(len(parsed.response.split()), 20, 500)
    output_len = length_logistic(len(parsed.text.split()), 500, 1000)
    matrix_quality = payoff_quality(parsed.payoff)
    u_user = epsilon + 0.5 * q + 0.2 * response_len + 0.3 * math.exp(-reasoning / 500)
    u_llm = epsilon + 0.2 * parsed.format_score + 0.2 * matrix_quality + 0.4 * q + 0.2 * output_len
    parts = {"malformed": False, "format": parsed.format_score, "payoff_quality": matrix_quality, "quality": q,
             "reasoning_chars": reasoning, "action": welfare_action(parsed.payoff), "payoff_error": parsed.payoff_error}
    return Welfare(math.sqrt(u_user * u_llm), u_user, u_llm, parts)


class GTAlignReward:
    """A reward source: the mutual welfare of each output, the answer quality of its ``<response>`` text from
    ``quality`` (any reward source; the synthetic verifiers by default). ``quality_scale``: ``clamp`` keeps
    rewards already in [0, 1] (verifiers), ``sigmoid`` maps reward-model logits; ``auto`` picks sigmoid for a
    :class:`~alignkit.rewards.RewardModel`. ``partial_credit`` (default 0, the reference) shapes the reward of
    malformed outputs by how much of the format they wrote (:func:`mutual_welfare`)."""

    def __init__(self, quality: Any = None, quality_scale: str = "auto", epsilon: float = EPSILON,
                 malformed_reward: float = 0.0, partial_credit: float = 0.0):
        from alignkit.rewards.reward_model import RewardModel
        from alignkit.rewards.sources import VerifierReward

        if quality_scale not in ("auto", "clamp", "sigmoid"):
            raise ValueError(f"gtalign: quality_scale must be auto, clamp or sigmoid, got {quality_scale!r}")
        self.quality = quality if quality is not None else VerifierReward()
        if quality_scale == "auto":
            quality_scale = "sigmoid" if isinstance(self.quality, RewardModel) else "clamp"
        if not 0.0 <= partial_credit <= 1.0:
            raise ValueError(f"gtalign: partial_credit must lie in [0, 1], got {partial_credit}")
        self.quality_scale, self.epsilon, self.malformed_reward = quality_scale, epsilon, malformed_reward
        self.partial_credit = partial_credit
        self.last: list[Welfare] = []

    def welfare(self, prompts: Sequence[Text], responses: Sequence[str]) -> list[Welfare]:
        """The reward and its parts per output; answer quality is asked only for well-formed outputs."""
        check_lengths(prompts, responses)
        parsed = [parse_output(r) for r in responses]
        ok = [i for i, p in enumerate(parsed) if not p.malformed]
        scores = [0.0] * len(parsed)
        if ok:
            raw = self.quality.rewards([prompts[i] for i in ok], [parsed[i].response for i in ok]).float()
            raw = torch.sigmoid(raw) if self.quality_scale == "sigmoid" else raw.clamp(0.0, 1.0)
            for i, value in zip(ok, raw.tolist(), strict=True):
                scores[i] = value
        self.last = [mutual_welfare(p, q, self.epsilon, self.malformed_reward, self.partial_credit)
                     for p, q in zip(parsed, scores, strict=True)]
        return self.last

    def rewards(self, prompts: Sequence[Text], responses: Sequence[str]) -> Tensor:
        return torch.tensor([w.reward for w in self.welfare(prompts, responses)], dtype=torch.float32)

    def preferences(self, prompts: Sequence[Text], first: Sequence[str], second: Sequence[str]) -> Tensor:
        return preferences_from_rewards(self, prompts, first, second)

    @staticmethod
    def preference_from_rewards(first: Tensor, second: Tensor) -> Tensor:
        return ((1.0 + first.float() - second.float()) / 2).clamp(0.0, 1.0)


def build_gtalign(options: dict[str, Any], device=None, log=print) -> GTAlignReward:
    """:class:`GTAlignReward` from a source mapping: ``quality`` is itself a source spec (default: verifier)."""
    from alignkit.rewards.sources import build_source

    options = dict(options)
    quality = options.pop("quality", None)
    return GTAlignReward(build_source(quality, device, log) if quality is not None else None, **options)


__all__ = ["EPSILON", "EXAMPLE_MATRIX", "GTALIGN_INSTRUCTION", "GTAlignReward", "PAYOFF_KEYS", "ParsedOutput", "TAGS",
           "Welfare", "build_gtalign", "demonstration", "extract_block", "format_progress", "gtalign_pairs",
           "length_logistic", "mutual_welfare", "parse_output", "parse_payoff",
           "payoff_quality", "welfare_action"]
