"""PAL: pluralistic rewards from an ideal-point mixture model (Chen et al., "PAL: Pluralistic Alignment Framework
for Learning from Heterogeneous Preferences", 2024, arXiv:2406.08469; code RamyaLab/pluralistic-alignment).

PAL-A with the reference code's default user model ``f(Pw)``, on a frozen encoder (the paper's "Tiny" setting):

    item point     e(x, y) = f(φ(x, y))                 f: a 2-layer MLP (the shared mapping), φ: the encoder
    user ideal     a_u = f(w_u · P)                     P ∈ R^{K×D}: K prototypes in φ-space
    user weights   w_u = softmax(W_u / T)               W_u ∈ R^K per user, T = 1
    distance       d_u(x, y) = ‖e(x, y) − a_u‖₂         the user prefers the response closer to their ideal point
    P_u(y ≻ y' | x) = σ(d_u(x, y') − d_u(x, y));        reward r_u(x, y) = −d_u(x, y)

Loss per pair with m = d_u(rejected) − d_u(chosen): hinge max(0, margin − m) with margin 1 (the reference
default) or logistic −log σ(m), plus the prototype-norm bound λ·Σ_k relu(‖p_k‖ − B) (λ = 1, B = 23); with
``balance_users`` each pair weighs 1/(its user's pair count). Optimiser: AdamW, projector weight decay 0.01,
10% linear warm-up, prototypes lr 5e-3, as the reference's ``vanilla`` config; the reference's projector lr 1e-4,
user-logit lr 5e-3, one epoch at batch 4 are tuned for large data sets, so our defaults (projector 1e-3, user
logits 5e-2, 20 epochs at batch 32) are chosen for the small frozen-encoder setting (the synthetic users of
:mod:`alignkit.data.synthetic.heterogeneous` fit in seconds).
A new user is fitted by :func:`adapt_users`: everything frozen but a fresh W_u (randn), trained on the user's
few comparisons. Not implemented: PAL-B (prompt-dependent prototypes, inner-product reward), the token-level
weighting over response positions (we embed whole responses), Gumbel-softmax weights, fine-tuning φ.

A trained model is a directory: ``config.json`` (dimensions, encoder, user ids, training options) and
``pal.safetensors`` (plus ``bt.safetensors``, the Bradley-Terry baseline of :mod:`alignkit.rewards.pal_eval`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from alignkit.data.records import Text
from alignkit.io import atomic_directory
from alignkit.progress import Bars
from alignkit.rewards.base import check_lengths, preferences_from_rewards
from alignkit.rewards.pal_data import Embedder, PairTensors

FORMAT = "alignkit-pal"
Loss = Literal["hinge", "logistic"]


class PAL(nn.Module):
    """The ideal-point mixture model over precomputed embeddings φ [N, input_dim]."""

    def __init__(self, input_dim: int, dim: int = 64, hidden: int = 256, prototypes: int = 4, users: int = 0,
                 temperature: float = 1.0, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):  # a seeded projector without touching the global stream
            torch.manual_seed(seed)
            self.projector = nn.Sequential(nn.Linear(input_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        # Gaussian prototypes with expected norm 1, like the unit-norm embeddings they mix.
        self.prototypes = nn.Parameter(torch.randn(prototypes, input_dim, generator=generator) / input_dim ** 0.5)
        self.user_logits = nn.Parameter(torch.randn(users, prototypes, generator=generator))
        self.temperature = temperature

    def mixture(self, logits: Tensor) -> Tensor:
        """w = softmax(W / T), [U, K] on the simplex."""
        return torch.softmax(logits / self.temperature, dim=-1)

    def ideal_points(self, weights: Tensor) -> Tensor:
        """a = f(w · P) for mixture weights [U, K] -> [U, dim]."""
        return self.projector(weights @ self.prototypes)

    def distances(self, embeddings: Tensor, ideal: Tensor) -> Tensor:
        """‖f(φ) − a‖₂ per row: embeddings [N, D] with ideal points [N, dim] (or one [dim])."""
        return (self.projector(embeddings) - ideal).norm(dim=-1)

    def margins(self, data: PairTensors, logits: Tensor | None = None) -> Tensor:
        """m = d(rejected) − d(chosen) per pair (> 0: the chosen response is closer to its user's ideal point)."""
        logits = self.user_logits if logits is None else logits
        ideal = self.ideal_points(self.mixture(logits))[data.users]
        return self.distances(data.rejected, ideal) - self.distances(data.chosen, ideal)


def pair_loss(margins: Tensor, loss: Loss = "hinge", margin: float = 1.0) -> Tensor:
    """Per-pair loss of m = d(rejected) − d(chosen): hinge max(0, margin − m) or logistic −log σ(m)."""
    if loss == "hinge":
        return torch.relu(margin - margins)
    if loss == "logistic":
        return nn.functional.softplus(-margins)
    raise ValueError(f"unknown PAL loss {loss!r}; known: hinge, logistic")


def norm_bound(prototypes: Tensor, bound: float = 23.0) -> Tensor:
    """Σ_k relu(‖p_k‖ − B): keeps prototypes from drifting far from the embeddings they mix."""
    return torch.relu(prototypes.norm(dim=-1) - bound).sum()


def user_weights(users: Tensor, n_users: int) -> Tensor:
    """1 / (pairs of the pair's user), normalised to mean 1: every user counts equally."""
    counts = torch.bincount(users, minlength=n_users).float()
    weights = 1.0 / counts[users]
    return weights * len(users) / weights.sum()


def fit(groups: list[dict], loss_of: Callable[[Tensor], Tensor], n: int, epochs: int, batch_size: int,
        warmup: float = 0.1, seed: int = 0, progress: bool = False, label: str = "fit") -> list[float]:
    """AdamW over ``groups`` (param groups with their lr / weight decay) minimising ``loss_of(batch_index)``
    for ``epochs`` shuffled passes over ``n`` items, with linear warm-up over the first ``warmup`` of the steps.
    Returns the mean loss per epoch."""
    optimizer = torch.optim.AdamW(groups)
    steps_per_epoch = max(1, -(-n // batch_size))
    total, warm = epochs * steps_per_epoch, max(1, int(warmup * epochs * steps_per_epoch))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warm))
    generator = torch.Generator().manual_seed(seed)
    history = []
    with Bars(progress).open() as bars:
        advance = bars.task(label, total)
        for _ in range(epochs):
            order, losses = torch.randperm(n, generator=generator), []
            for start in range(0, n, batch_size):
                loss = loss_of(order[start:start + batch_size])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(float(loss.detach()))
                advance(1)
            history.append(sum(losses) / len(losses))
    return history


def train_pal(data: PairTensors, prototypes: int = 4, dim: int = 64, hidden: int = 256, epochs: int = 20,
              batch_size: int = 32, loss: Loss = "hinge", margin: float = 1.0, lr_projector: float = 1e-3,
              lr_prototypes: float = 5e-3, lr_users: float = 5e-2, weight_decay: float = 0.01,
              bound: float = 23.0, bound_weight: float = 1.0, balance_users: bool = False, temperature: float = 1.0,
              seed: int = 0, progress: bool = False) -> tuple[PAL, list[float]]:
    """Fit a PAL model to embedded user-tagged pairs; returns (model, mean loss per epoch)."""
    model = PAL(data.chosen.shape[1], dim, hidden, prototypes, len(data.user_ids), temperature, seed)
    weights = user_weights(data.users, len(data.user_ids)) if balance_users else torch.ones(len(data))

    def loss_of(index: Tensor) -> Tensor:
        batch = data.subset(index)
        per_pair = pair_loss(model.margins(batch), loss, margin)
        return (per_pair * weights[index]).mean() + bound_weight * norm_bound(model.prototypes, bound)

    groups = [{"params": model.projector.parameters(), "lr": lr_projector, "weight_decay": weight_decay},
              {"params": [model.prototypes], "lr": lr_prototypes, "weight_decay": 0.0},
              {"params": [model.user_logits], "lr": lr_users, "weight_decay": 0.0}]
    history = fit(groups, loss_of, len(data), epochs, batch_size, seed=seed, progress=progress, label="pal-train")
    return model.eval(), history


def adapt_users(model: PAL, data: PairTensors, steps: int = 300, lr: float = 0.05, loss: Loss = "hinge",
                margin: float = 1.0, seed: int = 0) -> Tensor:
    """Few-shot logits W_u [len(data.user_ids), K] for the users of ``data`` with the shared parts (projector,
    prototypes) frozen: each W_u starts from randn and is fitted by full-batch Adam on its user's pairs."""
    generator = torch.Generator().manual_seed(seed)
    logits = nn.Parameter(torch.randn(len(data.user_ids), model.prototypes.shape[0], generator=generator))
    frozen = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        optimizer = torch.optim.Adam([logits], lr=lr)
        for _ in range(steps):
            # A sum over pairs: each user's logits see only their own pairs, at the same step size for any n.
            objective = pair_loss(model.margins(data, logits), loss, margin).sum()
            optimizer.zero_grad()
            objective.backward()
            optimizer.step()
    finally:
        for p, flag in zip(model.parameters(), frozen, strict=True):
            p.requires_grad_(flag)
    return logits.detach()


# ------------------------------------------------------------------------------------------ saving, loading


def save_pal(directory: str | Path, model: PAL, config: dict[str, Any], extra: dict[str, dict[str, Tensor]]
             | None = None, copy_from: str | Path | None = None) -> Path:
    """Write ``config.json`` + ``pal.safetensors`` (+ ``NAME.safetensors`` per ``extra`` item, + files of
    ``copy_from`` not written here) as one directory swapped in whole."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    config = {**config, "format": FORMAT, "version": 1, "input_dim": model.prototypes.shape[1],
              "prototypes": model.prototypes.shape[0], "temperature": model.temperature,
              "dim": model.projector[2].out_features, "hidden": model.projector[0].out_features}

    def fill(tmp: Path) -> None:
        if copy_from is not None:
            for file in Path(copy_from).glob("*.safetensors"):
                shutil.copy2(file, tmp / file.name)
        save_file(state, str(tmp / "pal.safetensors"))
        for name, tensors in (extra or {}).items():
            save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp / f"{name}.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    return atomic_directory(directory, fill)


def read_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a PAL model directory (no config.json)")
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: not a PAL model (format {config.get('format')!r}, expected {FORMAT!r})")
    return config


def load_pal(directory: str | Path) -> tuple[PAL, dict[str, Any]]:
    """(model in eval mode, config) from a directory written by :func:`save_pal`."""
    from safetensors.torch import load_file

    config = read_config(directory)
    model = PAL(config["input_dim"], config["dim"], config["hidden"], config["prototypes"], len(config["users"]),
                config["temperature"])
    model.load_state_dict(load_file(str(Path(directory) / "pal.safetensors")))
    return model.eval().requires_grad_(False), config


class PALReward:
    """A reward source from a trained PAL model: r_u(x, y) = −‖f(φ(x, y)) − a_u‖₂ for one ``user`` of the
    model, or, with no user, for the population's mean mixture w̄ = mean_u softmax(W_u / T) (the ideal point of
    the average user). P(y ≻ y') = σ(r(y) − r(y'))."""

    def __init__(self, model: str | Path, user: str | None = None, device: str | None = None,
                 embedder: Callable[[Sequence[Text], Sequence[Text]], Tensor] | None = None, log=print):
        self.model, self.config = load_pal(model)
        users = self.config["users"]
        if user is not None and user not in users:
            raise ValueError(f"PAL model {model}: no user {user!r} ({len(users)} users, e.g. {users[:3]}); fit a new "
                             "user with 'alignkit reward pal-adapt'")
        with torch.no_grad():
            if user is None:
                weights = self.model.mixture(self.model.user_logits).mean(0, keepdim=True)
            else:
                weights = self.model.mixture(self.model.user_logits[users.index(user)][None])
            self.ideal = self.model.ideal_points(weights)[0]
        self.user = user
        device = "cpu" if device in (None, "auto") else str(device)
        self.embedder = embedder or Embedder(self.config["encoder"], device=device, log=log)

    @torch.no_grad()
    def rewards(self, prompts: Sequence[Text], responses: Sequence[str]) -> Tensor:
        check_lengths(prompts, responses)
        if not responses:
            return torch.zeros(0)
        return -self.model.distances(self.embedder(prompts, responses).float(), self.ideal)

    def preferences(self, prompts: Sequence[Text], first: Sequence[str], second: Sequence[str]) -> Tensor:
        return preferences_from_rewards(self, prompts, first, second)

    @staticmethod
    def preference_from_rewards(first: Tensor, second: Tensor) -> Tensor:
        return torch.sigmoid(first.float() - second.float())


__all__ = ["PAL", "PALReward", "adapt_users", "fit", "load_pal", "norm_bound", "pair_loss", "read_config",
           "save_pal", "train_pal", "user_weights"]
