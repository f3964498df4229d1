"""Janus: sibling-negative pairs, the system message placed identically, the recipes' losses and the
system-message sensitivity metric, on tiny models."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignkit.engine.layouts import collate
from alignkit.engine.logprobs import sequence_logps
from alignkit.models import tiny_llama
from alignkit.objectives import PairLogps
from alignkit.objectives.preference import orpo
from alignkit.train.config import load_config
from alignkit.train.loop import train
from alignkit.train.methods import BatchContext, build_method
from alignkit.train.methods.janus import SystemResponse, sibling_pairs, synthetic_groups, system_sensitivity


def make_config(out, params: str = "", *overrides: str):
    base = [f"output_dir={out}", "model.device=cpu", "progress=false", "lora.enabled=false", "batch_size=4",
            "max_steps=4", "eval_every=4", "save_every=0", "optim.learning_rate=3e-3", "optim.scheduler=constant",
            "data.synthetic.n_train=8", "data.synthetic.n_test=4", f"objectives=[{{name: janus{params}}}]"]
    return load_config(None, base + list(overrides))


ROWS = [SystemResponse("q1", "s1", "a1"), SystemResponse("q1", "s2", "a2"), SystemResponse("q1", "s3", "a3"),
        SystemResponse("q2", "s1", "b1")]


def test_sibling_pairs_share_the_instruction_and_differ_in_system():
    (chosen, rejected), = sibling_pairs(ROWS, seed=0)  # q2 has one system message: no pair
    assert chosen.prompt == rejected.prompt == "q1" and chosen.system != rejected.system
    assert chosen.output == {"s1": "a1", "s2": "a2", "s3": "a3"}[chosen.system]
    every = sibling_pairs(ROWS, seed=0, every=True)
    assert sorted((c.system, r.system) for c, r in every) == [
        ("s1", "s2"), ("s1", "s3"), ("s2", "s1"), ("s2", "s3"), ("s3", "s1"), ("s3", "s2")]


def test_synthetic_eval_uses_unseen_system_messages_and_instructions():
    train_rows, eval_rows = synthetic_groups(8, 4, seed=0)
    assert len(train_rows) == 24 and len(eval_rows) == 12
    assert not {r.system for r in train_rows} & {r.system for r in eval_rows}
    assert not {r.prompt for r in train_rows} & {r.prompt for r in eval_rows}


def test_pairs_place_the_chosen_system_message_in_the_shared_prompt(tmp_path, tokenizer):
    method = build_method(make_config(tmp_path / "run"))
    items, eval_items = method.load(tokenizer, tmp_path, lambda m: None)
    assert len(items) == 8 and len(eval_items) == 4  # one sibling pair per instruction
    train_rows, _ = synthetic_groups(8, 4, seed=0)
    by_output = {r.output: r for r in train_rows}
    for item in items:
        chosen = by_output[tokenizer.decode(item.chosen, skip_special_tokens=True).strip()]
        rejected = by_output[tokenizer.decode(item.rejected, skip_special_tokens=True).strip()]
        assert chosen.prompt == rejected.prompt and chosen.system != rejected.system
        prompt_text, sibling_text = tokenizer.decode(item.prompt), tokenizer.decode(item.sibling_prompt)
        assert chosen.system in prompt_text and rejected.system not in prompt_text  # one prompt for both sides
        assert rejected.system in sibling_text and chosen.prompt in sibling_text


def test_orpo_recipe_loss_and_system_sensitivity_by_hand(tmp_path, tokenizer):
    method = build_method(make_config(tmp_path / "run", ", recipe: orpo, beta: 0.3"))
    items, eval_items = method.load(tokenizer, tmp_path, lambda m: None)
    model = tiny_llama(tokenizer)
    ctx = BatchContext(model, None, tokenizer.pad_token_id, 1024, None, torch.device("cpu"), tokenizer)
    out = method.step(ctx, items, [0, 1], None, {}, training=True)
    scored = [sequence_logps(model, collate([(it.prompt, it.chosen), (it.prompt, it.rejected)],
                                            tokenizer.pad_token_id)) for it in items[:2]]
    logps = PairLogps(torch.stack([s.logps[0] for s in scored]), torch.stack([s.logps[1] for s in scored]),
                      torch.stack([s.tokens[0] for s in scored]), torch.stack([s.tokens[1] for s in scored]))
    assert out.loss.item() == pytest.approx(orpo(logps, beta=0.3).loss.mean().item(), abs=1e-5)
    deltas = []
    for it in eval_items:
        own = sequence_logps(model, collate([(it.prompt, it.chosen)], tokenizer.pad_token_id)).logps
        sibling = sequence_logps(model, collate([(it.sibling_prompt, it.chosen)], tokenizer.pad_token_id)).logps
        deltas.append((own - sibling).item())
    assert system_sensitivity(ctx, eval_items, 3) == pytest.approx(sum(deltas) / len(deltas), abs=1e-4)


def test_sft_recipe_trains_on_every_system_response_once(tmp_path, tokenizer):
    items, _ = build_method(make_config(tmp_path / "run", ", recipe: sft")).load(tokenizer, tmp_path, lambda m: None)
    assert len(items) == 8 * 3


def test_dpo_recipe_trains_and_reports_sensitivity(tmp_path, tokenizer):
    result = train(make_config(tmp_path / "run"), model=tiny_llama(tokenizer), tokenizer=tokenizer,
                   log=lambda m: None)
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["split"] == "eval"]
    assert len(evals) == 2 and all("janus/system_sensitivity" in r for r in evals)
    first_step = next(r for r in rows if r["split"] == "train")
    assert first_step["loss"] == pytest.approx(math.log(2), abs=1e-5)  # DPO: the policy starts as its reference
    assert evals[-1]["janus/system_sensitivity"] != evals[0]["janus/system_sensitivity"]
