"""The Bradley-Terry reward-model loss: a pure function of the scalar rewards of chosen and rejected.

Model: Bradley & Terry, "Rank Analysis of Incomplete Block Designs", Biometrika 1952:
P(chosen ≻ rejected) = σ(r(x, y_c) − r(x, y_r)). Reward-model training minimises its negative
log-likelihood (Stiennon et al., "Learning to summarize from human feedback", NeurIPS 2020, arXiv 2009.01325;
Ouyang et al., InstructGPT, arXiv 2203.02155). Two options as in TRL's ``RewardTrainer.compute_loss``
(trl 1.16, ``trl/trainer/reward_trainer.py``):

* a per-pair ``margin`` m (Llama 2, Touvron et al., arXiv 2307.09288, §3.2.2: graded preference strength)
  subtracted inside the sigmoid;
* ``center_rewards_coefficient`` c (Eisenstein et al., "Helping or Herding? Reward Model Ensembles Mitigate but
  do not Eliminate Reward Hacking", arXiv 2312.09244): an auxiliary c·(r_c + r_r)² that keeps rewards centred
  on zero::

    L_i = −log σ(r_c,i − r_r,i − m_i) + c · (r_c,i + r_r,i)²

The mean of ``L_i`` over a batch is TRL's loss exactly (TRL adds c·mean((r_c + r_r)²) to the mean of the first
term). Metrics carry TRL's names (``accuracy`` = share of pairs with r_c > r_r, ``margin`` = mean r_c − r_r,
``min_reward`` / ``mean_reward`` / ``max_reward`` over both sides) plus alignkit's ``rewards/accuracies`` and
``rewards/margins`` (the same two numbers, under the keys the loop's log line and the report read).

Not registered as a log-prob objective: rewards come from a scalar head, so the ``bradley_terry`` *method*
(``alignkit.train.methods.reward_model``) runs it and registers its parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.objectives.base import ObjectiveOutput


def bradley_terry_loss(chosen: Tensor, rejected: Tensor, margin: Tensor | None = None,
                       center_rewards_coefficient: float | None = None) -> ObjectiveOutput:
    """Per-pair loss [B] −log σ(r_c − r_r − m) + c·(r_c + r_r)² (see the module docstring) and metrics.

    Args:
        chosen, rejected: [B] scalar rewards of the chosen and the rejected response.
        margin: [B] per-pair margins m (None: no margin).
        center_rewards_coefficient: c (None or 0: no centring term).
    """
    chosen, rejected = chosen.float(), rejected.float()
    difference = chosen - rejected
    logits = difference if margin is None else difference - margin.to(difference)
    loss = -F.logsigmoid(logits)
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * (chosen + rejected) ** 2
    with torch.no_grad():
        both = torch.cat([chosen, rejected])
        accuracy = (difference > 0).float().mean()
        mean_margin = difference.mean()
        metrics = {"accuracy": accuracy, "margin": mean_margin, "min_reward": both.min(),
                   "mean_reward": both.mean(), "max_reward": both.max(), "rewards/accuracies": accuracy,
                   "rewards/margins": mean_margin, "rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean()}
    return ObjectiveOutput(loss=loss, metrics=metrics)


__all__ = ["bradley_terry_loss"]
