"""Run TRL 1.16's own loss code on given log-probs, with no model, tokenizer or dataset.

The trainers are created with ``object.__new__`` (skipping ``__init__``, which wants a real model) and
given only the attributes their loss code reads. DPO/KTO go through the full ``_compute_loss`` with a
fake LM that returns preset per-token log-probs, so TRL's own masking, reductions and metric code run.
CPO/ORPO split the forward pass out (``concatenated_forward``), so that is the piece we replace.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import torch
from torch import Tensor

from alignkit.objectives import PairLogps, UnpairedLogps

_ACCELERATOR = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x)


class FakeLM:
    """Stands in for TRL's fused-LM-head forward.

    Each sequence carries its row id in ``input_ids[:, 0]`` (the "prompt" token). A row's response log-prob
    sits entirely on its first response position and the rest are 0, so TRL's token sums reproduce the
    given value exactly; the mean logit is the same at every position.
    """

    training = True

    def __init__(self, width: int) -> None:
        self.width = width  # sequence length L; the outputs cover the L - 1 shifted positions
        self.rows: list[tuple[Tensor, Tensor]] = []

    def add(self, logp: float, logit: float) -> int:
        per_token = torch.zeros(self.width - 1)
        per_token[0] = logp
        self.rows.append((per_token, torch.full((self.width - 1,), float(logit))))
        return len(self.rows) - 1

    def sequence(self, row: int, n_tokens: int) -> tuple[list[int], list[int]]:
        """input_ids and completion_mask for a one-token prompt followed by ``n_tokens`` response tokens."""
        ids = [row] + [1] * (self.width - 1)
        mask = [0] + [1] * n_tokens + [0] * (self.width - 1 - n_tokens)
        return ids, mask

    def __call__(self, input_ids: Tensor, **_: object) -> SimpleNamespace:
        rows = [self.rows[i] for i in input_ids[:, 0].tolist()]
        log_probs = torch.stack([r[0] for r in rows])
        return SimpleNamespace(log_probs=log_probs, mean_logits=torch.stack([r[1] for r in rows]),
                               entropy=torch.zeros_like(log_probs),
                               is_top1=torch.zeros_like(log_probs).bool())


def _bare(cls: type, **attrs: object) -> object:
    obj = object.__new__(cls)
    base = dict(accelerator=_ACCELERATOR, aux_loss_enabled=False, model=SimpleNamespace(training=True),
                _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0,
                _tp_size=1)
    for k, v in {**base, **attrs}.items():
        setattr(obj, k, v)
    return obj


def _logits(t: Tensor | None, n: int) -> list[float]:
    return [0.0] * n if t is None else t.tolist()


def trl_dpo(p: PairLogps, loss_types: list[str], loss_weights: list[float] | None = None, *,
            beta: float = 0.1, label_smoothing: float = 0.0) -> tuple[Tensor, dict[str, float]]:
    """Scalar loss and metrics of ``DPOTrainer._compute_loss`` (precomputed reference log-probs)."""
    from trl import DPOTrainer

    n = len(p.chosen)
    tokens = [int(t) for t in torch.cat([p.chosen_tokens, p.rejected_tokens]).tolist()]
    lm = FakeLM(width=max(tokens) + 2)
    logps = torch.cat([p.chosen, p.rejected]).tolist()
    logits = _logits(p.chosen_logits_mean, n) + _logits(p.rejected_logits_mean, n)
    seqs = [lm.sequence(lm.add(lp, lg), nt) for lp, lg, nt in zip(logps, logits, tokens, strict=True)]
    input_ids = torch.tensor([s[0] for s in seqs])
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
              "completion_mask": torch.tensor([s[1] for s in seqs]),
              "ref_chosen_logps": p.ref_chosen, "ref_rejected_logps": p.ref_rejected}
    trainer = _bare(DPOTrainer, beta=beta, label_smoothing=label_smoothing, loss_types=loss_types,
                    loss_weights=loss_weights or [1.0] * len(loss_types), precompute_ref_logps=True,
                    ld_alpha=None, f_divergence_type="reverse_kl", use_weighting=False)
    loss = trainer._compute_loss(lm, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}


def trl_kto(u: UnpairedLogps, *, beta: float = 0.1, desirable_weight: float = 1.0,
            undesirable_weight: float = 1.0) -> tuple[Tensor, dict[str, float]]:
    """Scalar loss and metrics of ``KTOTrainer._compute_loss`` (precomputed reference log-probs, KL on)."""
    from trl import KTOTrainer

    assert u.kl_policy is not None and u.kl_ref is not None
    tokens = [int(t) for t in u.tokens.tolist()]
    lm = FakeLM(width=max(tokens) + 2)
    logits = _logits(u.logits_mean, len(tokens))
    rows = zip(u.policy.tolist(), logits, tokens, strict=True)
    main = [lm.sequence(lm.add(lp, lg), nt) for lp, lg, nt in rows]
    kl = [lm.sequence(lm.add(lp, 0.0), 1) for lp in u.kl_policy.tolist()]
    input_ids, kl_ids = torch.tensor([s[0] for s in main]), torch.tensor([s[0] for s in kl])
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
              "completion_mask": torch.tensor([s[1] for s in main]),
              "KL_input_ids": kl_ids, "KL_attention_mask": torch.ones_like(kl_ids),
              "KL_completion_mask": torch.tensor([s[1] for s in kl]),
              "label": u.label.bool(), "ref_logps": u.ref, "ref_KL_logps": u.kl_ref}
    trainer = _bare(KTOTrainer, beta=beta, desirable_weight=desirable_weight,
                    undesirable_weight=undesirable_weight, loss_type="kto", calculate_KL=True,
                    precompute_ref_logps=True)
    loss = trainer._compute_loss(lm, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}


def _reference_free(cls: type, p: PairLogps, nll: Tensor, **attrs: object) -> tuple[object, dict[str, float]]:
    """Trainer plus the metrics of its ``get_batch_loss_metrics``, fed mean log-probs instead of a forward."""
    avg_w = p.chosen / p.chosen_tokens.clamp(min=1)
    avg_l = p.rejected / p.rejected_tokens.clamp(min=1)
    # TRL averages the raw logits tensor, so per-token means expanded over a length-1 axis reproduce them.
    lw = torch.tensor(_logits(p.chosen_logits_mean, len(avg_w)))[:, None, None]
    ll = torch.tensor(_logits(p.rejected_logits_mean, len(avg_l)))[:, None, None]
    trainer = _bare(cls, **attrs)
    trainer.concatenated_forward = lambda model, batch: (avg_w, avg_l, lw, ll, nll)
    loss, metrics = trainer.get_batch_loss_metrics(None, {}, "train")
    return trainer, {"loss": float(loss), **{k: float(v) for k, v in metrics.items()}}


def trl_cpo(p: PairLogps, *, beta: float, simpo_gamma: float, label_smoothing: float = 0.0,
            loss_type: str = "simpo") -> tuple[Tensor, dict[str, float]]:
    """Per-example ``CPOTrainer.cpo_loss`` on mean log-probs and its batch metrics (cpo_alpha=0)."""
    from trl.experimental.cpo import CPOTrainer

    trainer, metrics = _reference_free(CPOTrainer, p, torch.tensor(0.0), beta=beta, simpo_gamma=simpo_gamma,
                                       label_smoothing=label_smoothing, loss_type=loss_type, alpha=0.0,
                                       cpo_alpha=0.0)
    losses, _, _ = trainer.cpo_loss(p.chosen / p.chosen_tokens.clamp(min=1),
                                    p.rejected / p.rejected_tokens.clamp(min=1))
    return losses, metrics


def trl_orpo(p: PairLogps, nll: Tensor, *, beta: float = 0.1) -> tuple[Tensor, dict[str, float]]:
    """Per-example ORPO odds-ratio term ``beta·log σ(log odds)`` and batch metrics with ``nll`` injected."""
    from trl.experimental.orpo import ORPOTrainer

    trainer, metrics = _reference_free(ORPOTrainer, p, nll, beta=beta)
    ratio_term, *_ = trainer.odds_ratio_loss(p.chosen / p.chosen_tokens.clamp(min=1),
                                             p.rejected / p.rejected_tokens.clamp(min=1))
    return ratio_term, metrics
