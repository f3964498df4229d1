"""Pairwise judging with position-bias cancellation, and a judge backed by a local causal LM.

A judge is any ``Callable[[prompt, first, second], float]`` returning P(first response is better).
LM judges systematically prefer one position (position bias: Zheng et al., "Judging LLM-as-a-Judge with
MT-Bench and Chatbot Arena", NeurIPS 2023 Datasets and Benchmarks, arXiv:2306.05685); asking in both orders
and averaging cancels any bias that is additive in probability space (``P_judge = P_true ± bias``
depending on position).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Judge = Callable[[str, str, str], float]

JUDGE_INSTRUCTION = "Which response is better? Answer A or B."


def judge_pair(judge: Judge, prompt: str, a: str, b: str) -> float:
    """P(a ≻ b) with position bias cancelled: ``½·[ J(prompt, a, b) + (1 − J(prompt, b, a)) ]``.

    Queries the judge exactly twice, first in order (a, b), then (b, a).
    """
    p_ab = float(judge(prompt, a, b))
    p_ba = float(judge(prompt, b, a))
    for p in (p_ab, p_ba):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"judge returned {p}, expected a probability in [0, 1]")
    return 0.5 * (p_ab + (1.0 - p_ba))


def compare(
    judge: Judge,
    prompts: Sequence[str],
    answers_a: Sequence[str],
    answers_b: Sequence[str],
    tie_margin: float = 0.05,
) -> list[float]:
    """Outcomes of ``a`` against ``b`` per prompt: 1 win, 0.5 tie, 0 loss.

    ``p = judge_pair(...)``; win if ``p > 0.5 + tie_margin``, loss if ``p < 0.5 − tie_margin``, else tie.
    Feed the result to a win-rate estimate (``alignkit.eval.metrics.win_rate``).
    """
    if not len(prompts) == len(answers_a) == len(answers_b):
        raise ValueError(
            f"prompts, answers_a and answers_b differ in length: "
            f"{len(prompts)}, {len(answers_a)}, {len(answers_b)}"
        )
    if not 0.0 <= tie_margin < 0.5:
        raise ValueError(f"tie_margin must be in [0, 0.5), got {tie_margin}")
    outcomes = []
    for prompt, a, b in zip(prompts, answers_a, answers_b, strict=True):
        p = judge_pair(judge, prompt, a, b)
        outcomes.append(1.0 if p > 0.5 + tie_margin else 0.0 if p < 0.5 - tie_margin else 0.5)
    return outcomes


class LMJudge:
    """Judge with a local causal LM: P(A) from the next-token distribution after a fixed comparison prompt.

    The user turn is the question and the two responses labelled ``[Response A]`` and ``[Response B]``,
    followed by ``JUDGE_INSTRUCTION`` ("Which response is better? Answer A or B."). It is wrapped in the
    tokenizer's chat template with the generation prompt appended (plain text ending in ``Answer:`` if the
    tokenizer has no template). From the logits of the first assistant token, only the tokens for "A" and
    "B" are kept:

    ``P(A) = exp(l_A) / (exp(l_A) + exp(l_B))``

    i.e. the model's preference conditioned on answering with one of the two letters. It is one position
    only: wrap it with :func:`judge_pair` / :func:`compare` to cancel position bias. Responses are not
    truncated; keep them within the model's context.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        instruction: str = JUDGE_INSTRUCTION,
        system_prompt: str | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.instruction = instruction
        self.system_prompt = system_prompt
        self.token_a = self._single_token("A")
        self.token_b = self._single_token("B")

    def _single_token(self, letter: str) -> int:
        ids = self.tokenizer.encode(letter, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"tokenizer splits {letter!r} into {len(ids)} tokens; LMJudge needs one")
        return int(ids[0])

    def build_prompt(self, prompt: str, first: str, second: str) -> str:
        """The exact text fed to the model (chat template applied)."""
        # Instruction last, right before the answer slot, so even small models see it after long responses.
        content = (
            f"[Question]\n{prompt}\n\n[Response A]\n{first}\n\n[Response B]\n{second}\n\n{self.instruction}"
        )
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": content}]
            if self.system_prompt is not None:
                messages.insert(0, {"role": "system", "content": self.system_prompt})
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{content}\nAnswer:"

    @torch.no_grad()
    def __call__(self, prompt: str, first: str, second: str) -> float:
        text = self.build_prompt(prompt, first, second)
        # The chat template already carries BOS/role markers; adding special tokens again would double them.
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        try:
            logits = self.model(
                input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)
            ).logits[0, -1]
        finally:
            self.model.train(was_training)
        pair = torch.stack([logits[self.token_a], logits[self.token_b]]).float()
        return float(torch.softmax(pair, dim=0)[0])
