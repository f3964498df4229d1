"""Supervised fine-tuning on the chosen responses of preference pairs (no paper: plain maximum likelihood)."""

from __future__ import annotations

from alignkit.objectives.base import ObjectiveOutput, PairLogps, mean, register
from alignkit.objectives.params import Params
from alignkit.objectives.preference import logits_metric, token_mean


class SFTParams(Params):
    """:func:`sft` has no parameters; its weight in a mixture is the objective's ``weight``."""


@register("sft", needs_reference=False, params=SFTParams)
def sft(logps: PairLogps) -> ObjectiveOutput:
    """SFT: token-mean negative log-likelihood of the chosen response, per example; reference-free.

    ``L = -log π_θ(y_w|x) / |y_w|`` (prompt tokens masked). The rejected response is ignored, so this is
    the usual SFT warm-up on preference data and the NLL term that RPO/ORPO add. Each example's NLL is
    averaged over its own tokens and the loop then averages examples; TRL's "sft" term instead averages
    over all chosen tokens of the batch (identical when lengths are equal). No hyper-parameters.
    """
    nll = -token_mean(logps.chosen, logps.chosen_tokens)
    metrics = {
        "nll": mean(nll.detach()),
        "logps/chosen": mean(logps.chosen.detach()),
        **logits_metric(logps.chosen_logits_mean, logps.chosen_tokens, "logits/chosen"),
    }
    return ObjectiveOutput(nll, metrics)
