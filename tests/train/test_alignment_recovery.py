"""Alignment recovery on tiny models: restores exactly the chosen aligned weights, rolls back when utility drops,
and runs through the training loop without gradient updates."""

from __future__ import annotations

import json

import pytest
import torch

import alignkit.train.methods.alignment_recovery as ar
from alignkit.models import tiny_llama
from alignkit.objectives.alignment_recovery import toward_mask
from alignkit.train.config import load_config
from alignkit.train.loop import train
from alignkit.train.methods import BatchContext, build_method


@pytest.fixture
def aligned_dir(tmp_path, tokenizer):
    """W_A: a tiny Llama of another seed than the fine-tuned one, saved with the tokenizer."""
    for part in (tiny_llama(tokenizer, seed=7), tokenizer):
        part.save_pretrained(tmp_path / "aligned")
    return tmp_path / "aligned"


def make_config(out, aligned, params: str = "", *overrides: str):
    base = [f"output_dir={out}", "model.device=cpu", "progress=false", "lora.enabled=false", "batch_size=4",
            "max_steps=4", "eval_every=2", "save_every=0", "data.synthetic.n_train=40", "data.synthetic.n_test=16",
            f"objectives=[{{name: alignment_recovery, aligned_model: '{aligned}', sparsity: 0.01, "
            f"eval_max_new_tokens: 4{params}}}]"]
    return load_config(None, base + list(overrides))


def setup(tmp_path, tokenizer, aligned_dir, params=""):
    method = build_method(make_config(tmp_path / "run", aligned_dir, params))
    items, _ = method.load(tokenizer, tmp_path, lambda m: None)
    model = tiny_llama(tokenizer)
    method.wrap_model(model)
    ctx = BatchContext(model, None, tokenizer.pad_token_id, 1024, None, torch.device("cpu"), tokenizer)
    return method, items, model, ctx


def test_recovery_step_restores_the_top_k_descent_weights_to_aligned(tmp_path, tokenizer, aligned_dir):
    method, items, model, ctx = setup(tmp_path, tokenizer, aligned_dir, ", warmup_steps: 100")
    params = ar.recoverable(model, 1)
    assert params and all(".layers.0." in n and "norm" not in n for n in params)  # tiny: 2 layers -> layer_end 1
    before = {n: p.detach().clone() for n, p in params.items()}
    loss = ar.direction_loss(ar.last_token_hidden(model, [items[i][0] for i in [0, 1, 2, 3]],
                                                  tokenizer.pad_token_id, 1), method.directions[0])
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
    state: dict = {}
    method.utility = lambda ctx: 0.0
    out = method.step(ctx, items, [0, 1, 2, 3], None, state, training=True)
    n = sum(p.numel() for p in params.values())
    changed = {name: params[name].detach() != before[name] for name in params}
    assert out.metrics["recovery/restored"] == sum(int(c.sum()) for c in changed.values()) == int(0.01 * n)
    for name, mask in changed.items():
        assert torch.equal(params[name].detach()[mask], method.aligned[name][mask])  # set to W_A exactly
        assert toward_mask(before[name], method.aligned[name], grads[name])[mask].all()
    smallest_kept = min(grads[nm].abs()[m].min() for nm, m in changed.items() if m.any())
    largest_skipped = max(grads[nm].abs()[toward_mask(before[nm], method.aligned[nm], grads[nm]) & ~m].max()
                          for nm, m in changed.items())
    assert smallest_kept >= largest_skipped
    assert out.loss.item() == 0.0 and state["alignment_recovery"]["steps"] == 1


def test_utility_drop_restarts_from_finetuned_and_rolls_back(tmp_path, tokenizer, aligned_dir):
    method, items, model, ctx = setup(tmp_path, tokenizer, aligned_dir, ", warmup_steps: 1, rollback_rate: 0.5")
    utilities = iter([1.0, 0.5])  # W_F's utility, then the check after warm-up: a drop beyond 5 %
    method.utility = lambda ctx: next(utilities)
    state: dict = {}
    first = method.step(ctx, items, [0, 1, 2, 3], None, state, training=True)
    assert first.metrics["recovery/rollback_active"] == 0.0 and first.metrics["recovery/rolled_back"] == 0
    second = method.step(ctx, items, [4, 5, 6, 7], None, state, training=True)
    assert second.metrics["recovery/rollback_active"] == 1.0
    params = ar.recoverable(model, 1)
    restored_now = second.metrics["recovery/restored"] - second.metrics["recovery/rolled_back"]
    differs = sum(int((p.detach() != method.finetuned[n]).sum()) for n, p in params.items())
    assert differs == restored_now  # the restart wiped the first step's restorations
    assert 0 < second.metrics["recovery/rolled_back"] <= int(0.5 * second.metrics["recovery/restored"])


def test_runs_in_the_training_loop_and_reports_harm_and_utility(tmp_path, tokenizer, aligned_dir):
    result = train(make_config(tmp_path / "run", aligned_dir), model=tiny_llama(tokenizer), tokenizer=tokenizer,
                   log=lambda m: None)
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["split"] == "eval"]
    assert {"recovery/harmful_compliance", "recovery/utility", "recovery/aligned_fraction"} <= set(evals[-1])
    fractions = [r["recovery/aligned_fraction"] for r in rows if r["split"] == "train"]
    assert fractions == sorted(fractions) and fractions[-1] > fractions[0]  # no rollback: only more W_A weights


def test_config_errors(aligned_dir):
    with pytest.raises(ValueError, match="aligned_model must name"):
        build_method(load_config(None, ["lora.enabled=false", "objectives=[{name: alignment_recovery}]"]))
    with pytest.raises(ValueError, match="lora.enabled=false"):
        build_method(load_config(None, [f"objectives=[{{name: alignment_recovery, aligned_model: {aligned_dir}}}]"]))
