"""Training, few-shot adaptation and per-user evaluation of PAL (:mod:`alignkit.rewards.pal`) against one
Bradley-Terry model on the same embeddings.

The baseline is the fair, fast one: r(x, y) = g(φ(x, y)) with g an MLP of PAL's projector shape plus a linear
score, trained on every user's pairs with the Bradley-Terry loss −log σ(r(chosen) − r(rejected)) and the same
optimiser and epochs. Accuracy is per user (the share of their pairs ranked right, ties wrong), averaged over
users, with a 95% percentile bootstrap CI over users. Few-shot: for each new user the last ``test_pairs`` of
their pairs are the test set; n shots are drawn from the rest (``repeats`` draws), W_u is fitted with the shared
parts frozen, and the user's accuracy is the mean over draws. n = 0 is the population's mean mixture.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from alignkit.rewards.pal import PAL, adapt_users, fit, load_pal, read_config, save_pal, train_pal
from alignkit.rewards.pal_data import Embedder, PairTensors, embed_pairs, load_user_pairs
from alignkit.stats import bootstrap_mean


class BradleyTerry(nn.Module):
    """One reward for everyone: r = w · f(φ) + b with f an MLP of PAL's projector shape."""

    def __init__(self, input_dim: int, dim: int = 64, hidden: int = 256, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(input_dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.GELU(),
                                     nn.Linear(dim, 1))

    def forward(self, embeddings: Tensor) -> Tensor:
        return self.net(embeddings).squeeze(-1)

    def margins(self, data: PairTensors) -> Tensor:
        return self(data.chosen) - self(data.rejected)


def train_bt(data: PairTensors, dim: int = 64, hidden: int = 256, epochs: int = 20, batch_size: int = 32,
             lr: float = 1e-3, weight_decay: float = 0.01, seed: int = 0, progress: bool = False) -> BradleyTerry:
    model = BradleyTerry(data.chosen.shape[1], dim, hidden, seed)

    def loss_of(index: Tensor) -> Tensor:
        return nn.functional.softplus(-model.margins(data.subset(index))).mean()

    fit([{"params": model.parameters(), "lr": lr, "weight_decay": weight_decay}], loss_of, len(data), epochs,
        batch_size, seed=seed, progress=progress, label="bt-train")
    return model.eval()


def per_user_accuracy(correct: Tensor, users: Tensor) -> Tensor:
    """Accuracy of each user who has pairs, [users present], ordered by user index."""
    present = torch.unique(users)
    return torch.stack([correct[users == u].float().mean() for u in present])


def mean_ci(values: Tensor, resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean with a 95% percentile bootstrap CI (resampling the values, i.e. users)."""
    x = values.detach().double().cpu().numpy()
    low, high = bootstrap_mean(x, resamples, seed=seed)
    return {"mean": float(x.mean()), "ci_low": low, "ci_high": high, "users": len(x)}


@torch.no_grad()
def seen_user_report(model: PAL, bt: BradleyTerry | None, data: PairTensors) -> dict[str, Any]:
    """Per-user accuracy of PAL (each user's own W_u) and of the BT baseline on pairs of the model's users."""
    report = {"pal": mean_ci(per_user_accuracy(model.margins(data) > 0, data.users)), "pairs": len(data)}
    if bt is not None:
        report["bradley_terry"] = mean_ci(per_user_accuracy(bt.margins(data) > 0, data.users))
    return report


def split_shots(data: PairTensors, test_pairs: int) -> tuple[list[Tensor], Tensor]:
    """(per user: indices of the pool shots are drawn from, all test indices): the last ``test_pairs`` pairs of
    each user are their test set."""
    pools, tests = [], []
    for user in data.user_ids:
        index = data.of_user(user)
        if len(index) <= test_pairs:
            raise ValueError(f"user {user!r} has {len(index)} pairs; few-shot evaluation needs more than "
                             f"test_pairs={test_pairs}")
        pools.append(index[:-test_pairs])
        tests.append(index[-test_pairs:])
    return pools, torch.cat(tests)


@torch.no_grad()
def _population_correct(model: PAL, data: PairTensors) -> Tensor:
    mean = model.mixture(model.user_logits).mean(0, keepdim=True)
    ideal = model.ideal_points(mean)[0]
    return model.distances(data.rejected, ideal) > model.distances(data.chosen, ideal)


def few_shot_report(model: PAL, bt: BradleyTerry | None, data: PairTensors, shots: Sequence[int] = (1, 2, 4, 8, 16),
                    repeats: int = 5, test_pairs: int = 16, seed: int = 0, **adapt: Any) -> dict[str, Any]:
    """Per-user test accuracy of new users after fitting W_u on n of their pairs, for each n in ``shots``,
    next to n = 0 (the population mixture) and the BT baseline, on the same test pairs."""
    pools, test_index = split_shots(data, test_pairs)
    if max(shots, default=0) > min(len(p) for p in pools):
        raise ValueError(f"{max(shots)} shots need that many pairs per user besides the {test_pairs} test pairs; "
                         f"the smallest pool has {min(len(p) for p in pools)}")
    test = data.subset(test_index)
    report: dict[str, Any] = {"test_pairs_per_user": test_pairs, "repeats": repeats,
                              "pal_n0": mean_ci(per_user_accuracy(_population_correct(model, test), test.users))}
    if bt is not None:
        with torch.no_grad():
            report["bradley_terry"] = mean_ci(per_user_accuracy(bt.margins(test) > 0, test.users))
    report["pal"] = {}
    for n in shots:
        runs = []
        for r in range(repeats):
            generator = torch.Generator().manual_seed(seed * 7919 + r)
            chosen = torch.cat([pool[torch.randperm(len(pool), generator=generator)[:n]] for pool in pools])
            logits = adapt_users(model, data.subset(chosen), seed=seed * 7919 + r, **adapt)
            with torch.no_grad():
                runs.append(per_user_accuracy(model.margins(test, logits) > 0, test.users))
        report["pal"][str(n)] = mean_ci(torch.stack(runs).mean(0))
    return report


# ------------------------------------------------------------------------------------------ file-level drivers


def train_from_file(data: str | Path, out: str | Path, encoder: str = "all-minilm-l6-v2", baseline: bool = True,
                    device: str = "cpu", user_key: str | None = None, progress: bool = True, log=print,
                    **options: Any) -> dict[str, Any]:
    """Read user-tagged pairs, embed them, train PAL (and the BT baseline) and save both to ``out``."""
    start = time.perf_counter()
    rows = load_user_pairs(data, user_key, log=log)
    embedder = Embedder(encoder, device=device, log=log, progress=progress)
    tensors = embed_pairs(rows, embedder)
    log(f"{len(rows)} pairs from {len(tensors.user_ids)} users embedded with {encoder} "
        f"({time.perf_counter() - start:.1f}s)")
    seed = options.get("seed", 0)
    model, history = train_pal(tensors, progress=progress, **options)
    extra, config = {}, {"encoder": encoder, "users": tensors.user_ids, "data": str(data), "train": options,
                         "loss_history": history}
    bt = None
    if baseline:
        dim, hidden = options.get("dim", 64), options.get("hidden", 256)
        bt = train_bt(tensors, dim, hidden, options.get("epochs", 20), options.get("batch_size", 32),
                      options.get("lr_projector", 1e-3), options.get("weight_decay", 0.01), seed, progress)
        extra["bt"] = bt.state_dict()
        config["baseline"] = {"dim": dim, "hidden": hidden}
    save_pal(out, model, config, extra)
    return {"train": seen_user_report(model, bt, tensors), "seconds": round(time.perf_counter() - start, 1)}


def load_bt(directory: str | Path, config: dict[str, Any]) -> BradleyTerry | None:
    from safetensors.torch import load_file

    path = Path(directory) / "bt.safetensors"
    if "baseline" not in config or not path.is_file():
        return None
    bt = BradleyTerry(config["input_dim"], config["baseline"]["dim"], config["baseline"]["hidden"])
    bt.load_state_dict(load_file(str(path)))
    return bt.eval().requires_grad_(False)


def adapt_from_file(model_dir: str | Path, data: str | Path, shots: int, out: str | Path | None = None,
                    overwrite: bool = False, device: str = "cpu", user_key: str | None = None, seed: int = 0,
                    log=print, **adapt: Any) -> dict[str, Any]:
    """Fit W_u of every user in ``data`` from their first ``shots`` pairs, add them to the model (written to
    ``out``, default ``model_dir``), and report accuracy on their remaining pairs."""
    model, config = load_pal(model_dir)
    rows = load_user_pairs(data, user_key, log=log)
    new_ids = list(dict.fromkeys(u for u, _ in rows))
    clash = [u for u in new_ids if u in config["users"]]
    if clash and not overwrite:
        raise ValueError(f"{data}: users {clash[:5]} are already in {model_dir}; pass --overwrite to refit them")
    tensors = embed_pairs(rows, Embedder(config["encoder"], device=device, log=log), new_ids)
    fit_index = torch.cat([tensors.of_user(u)[:shots] for u in new_ids])
    logits = adapt_users(model, tensors.subset(fit_index), seed=seed, **adapt)
    rest = torch.tensor(sorted(set(range(len(tensors))) - set(fit_index.tolist())), dtype=torch.long)
    report: dict[str, Any] = {"users": len(new_ids), "shots": shots}
    if len(rest):
        with torch.no_grad():
            held = tensors.subset(rest)
            report["held_out"] = mean_ci(per_user_accuracy(model.margins(held, logits) > 0, held.users))
    kept = [u for u in config["users"] if u not in new_ids]
    old = model.user_logits.detach()[[config["users"].index(u) for u in kept]]
    model.user_logits = nn.Parameter(torch.cat([old, logits]))
    users = kept + new_ids
    adapted = {**config.get("adapted", {}), **{u: {"shots": shots, "data": str(data)} for u in new_ids}}
    save_pal(out or model_dir, model, {**config, "users": users, "adapted": adapted}, copy_from=model_dir)
    return report


def eval_from_file(model_dir: str | Path, data: str | Path, shots: Sequence[int] = (1, 2, 4, 8, 16),
                   repeats: int = 5, test_pairs: int = 16, device: str = "cpu", user_key: str | None = None,
                   seed: int = 0, log=print, progress: bool = False, **adapt: Any) -> dict[str, Any]:
    """Per-user accuracy on ``data``: the model's own users with their W_u, and users it has never seen
    through the few-shot protocol (:func:`few_shot_report`); the BT baseline next to both."""
    start = time.perf_counter()
    model, config = load_pal(model_dir)
    bt = load_bt(model_dir, read_config(model_dir))
    rows = load_user_pairs(data, user_key, log=log)
    embedder = Embedder(config["encoder"], device=device, log=log, progress=progress)
    seen = [(u, p) for u, p in rows if u in config["users"]]
    unseen = [(u, p) for u, p in rows if u not in config["users"]]
    report: dict[str, Any] = {"data": str(data), "model": str(model_dir)}
    if seen:
        report["seen_users"] = seen_user_report(model, bt, embed_pairs(seen, embedder, config["users"]))
    if unseen:
        report["new_users"] = few_shot_report(model, bt, embed_pairs(unseen, embedder), shots, repeats,
                                              test_pairs, seed, **adapt)
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


__all__ = ["BradleyTerry", "adapt_from_file", "eval_from_file", "few_shot_report", "load_bt", "mean_ci",
           "per_user_accuracy", "seen_user_report", "split_shots", "train_bt", "train_from_file"]
