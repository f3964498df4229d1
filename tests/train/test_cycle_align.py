"""CycleAlign on tiny models: black-box and white-box rankings of the same samples, their agreement as the label
of the ranking loss, demonstrations written, and a run through the loop."""

from __future__ import annotations

import json

import pytest
import torch

import alignkit.train.methods.cycle_align as cycle
from alignkit.engine.generation import Sampled
from alignkit.engine.layouts import collate
from alignkit.engine.logprobs import sequence_logps
from alignkit.io import read_jsonl
from alignkit.models import tiny_llama
from alignkit.objectives.cycle_align import agreement_ranking, ranking_loss
from alignkit.train.config import load_config
from alignkit.train.loop import train
from alignkit.train.methods import BatchContext, build_method


class ShortestWins:
    """A reward source preferring shorter responses."""

    def rewards(self, prompts, responses):
        return torch.tensor([-float(len(r)) for r in responses])


class PairwiseOnly:
    def preferences(self, prompts, first, second):  # P(first ≻ second) = 1 when first is shorter
        return torch.tensor([float(len(a) < len(b)) for a, b in zip(first, second, strict=True)])


def make_config(out, *overrides: str):
    base = [f"output_dir={out}", "model.device=cpu", "progress=false", "lora.enabled=false", "batch_size=2",
            "max_steps=2", "eval_every=2", "save_every=0", "data.synthetic.n_train=8", "data.synthetic.n_test=2",
            "objectives=[{name: cycle_align, n_candidates: 3, max_new_tokens: 6}]"]
    return load_config(None, base + list(overrides))


def test_black_box_ranking_from_rewards_or_pairwise_preferences():
    texts = ["ccc", "a", "bb"]
    assert cycle.black_box_ranking(ShortestWins(), "x", texts) == [1, 2, 0]
    assert cycle.black_box_ranking(PairwiseOnly(), "x", texts) == [1, 2, 0]


def test_loss_trains_on_the_agreement_of_both_rankings(tmp_path, tokenizer, monkeypatch):
    texts = ["Yes.", "No, I think not really.", "Maybe so.", "Certainly not, never."]
    ids = [tokenizer.encode(t, add_special_tokens=False) + [tokenizer.eos_token_id] for t in texts]
    monkeypatch.setattr(cycle, "sample_ids", lambda model, prompts, params, n, **kw: Sampled(
        prompts=list(prompts), responses=[ids[:n] for _ in prompts]))
    monkeypatch.setattr(cycle, "build_source", lambda spec, device=None: ShortestWins())
    config = make_config(tmp_path / "run", "objectives=[{name: cycle_align, n_candidates: 4, sft_weight: 0.5}]")
    method = build_method(config)
    items, _ = method.load(tokenizer, tmp_path, lambda m: None)
    model = tiny_llama(tokenizer)
    ctx = BatchContext(model, None, tokenizer.pad_token_id, 1024, None, torch.device("cpu"), tokenizer)
    out = method.step(ctx, items, [0], None, {}, training=True)

    scored = sequence_logps(model, collate([(items[0].prompt, r) for r in ids], tokenizer.pad_token_id))
    normalised = (scored.logps / scored.tokens).tolist()
    white = sorted(range(4), key=lambda i: -normalised[i])
    black = sorted(range(4), key=lambda i: len(texts[i]))  # shortest first
    ranking, agreed = agreement_ranking(black, white)
    order = torch.tensor(ranking)
    expected = ranking_loss(scored.logps[order], scored.tokens[order], sft_weight=0.5).loss.item()
    assert out.loss.item() == pytest.approx(expected, abs=1e-5)
    assert out.metrics["cycle/agreement_rate"] == float(agreed)
    if agreed:
        (demo,) = read_jsonl(tmp_path / cycle.DEMONSTRATIONS_FILE)
        assert demo["ranking"] == [texts[i] for i in ranking] and demo["black_box"] == black


def test_runs_through_the_loop_with_the_verifier_as_black_box(tmp_path, tokenizer):
    result = train(make_config(tmp_path / "run"), model=tiny_llama(tokenizer), tokenizer=tokenizer,
                   log=lambda m: None)
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert len(train_rows) == 2
    for row in train_rows:
        assert {"cycle/agreement_rate", "cycle/kendall_tau", "rank_loss", "sft_loss"} <= set(row)
        assert -1.0 <= row["cycle/kendall_tau"] <= 1.0
