"""Weak-to-strong on tiny models: the weak probe is fitted on its own share only, its labels are what the
student trains on, the ceiling trains on the truth, and the eval predictions give PGR."""

from __future__ import annotations

import json

import pytest
import torch

import alignkit.train.methods.weak_to_strong as w2s
from alignkit.engine.layouts import collate
from alignkit.engine.logprobs import sequence_logps
from alignkit.io import read_jsonl
from alignkit.models import tiny_llama
from alignkit.objectives.binary import fit_udm_classifier
from alignkit.train.config import load_config
from alignkit.train.loop import train
from alignkit.train.methods import BatchContext, build_method


def make_config(out, *overrides: str, params: str = ""):
    base = [f"output_dir={out}", "model.device=cpu", "progress=false", "lora.enabled=false", "batch_size=8",
            "max_steps=6", "eval_every=3", "save_every=0", "optim.learning_rate=3e-3", "optim.scheduler=constant",
            "data.synthetic.n_train=24", "data.synthetic.n_test=6", "data.max_eval_examples=12",
            "data.max_length=160", f"objectives=[{{name: weak_to_strong{params}}}]"]
    return load_config(None, base + list(overrides))


def loaded(tmp_path, tokenizer, params: str = ""):
    method = build_method(make_config(tmp_path / "run", params=params))
    train_items, eval_items = method.load(tokenizer, tmp_path, lambda m: None)
    return method, train_items, eval_items


def test_split_examples_and_label_tokens(tmp_path, tokenizer):
    method, student, eval_items = loaded(tmp_path, tokenizer)
    # 24 synthetic pairs -> 48 examples, one chosen (positive) and one rejected (negative) each, halved
    assert len(method.weak_half) == len(student) == 24 and len(eval_items) == 12
    assert not {id(i) for i in method.weak_half} & {id(i) for i in student}
    assert sum(i.gold for i in method.weak_half + student + eval_items) * 2 == 48 + 12
    item = student[0]
    assert tokenizer.decode(item.positive).startswith("Yes") and tokenizer.decode(item.negative).startswith("No")
    assert tokenizer.decode(item.prompt).rstrip().endswith("assistant")
    assert "Answer Yes or No." in tokenizer.decode(item.prompt)


def test_weak_labels_come_from_a_probe_fitted_on_the_weak_share_only(tmp_path, tokenizer, monkeypatch):
    method, student, eval_items = loaded(tmp_path, tokenizer)
    fits = []

    def spy(desirable, undesirable, **kwargs):
        fits.append((desirable, undesirable))
        return fit_udm_classifier(desirable, undesirable, **kwargs)

    monkeypatch.setattr(w2s, "fit_udm_classifier", spy)
    model = tiny_llama(tokenizer)
    method.wrap_model(model)
    weak = method.weak_half
    features = w2s.layer_features(model, [i.prompt for i in weak + student], tokenizer.pad_token_id, 1, 5)
    gold = torch.tensor([i.gold for i in weak])
    (positive, negative), = fits
    torch.testing.assert_close(positive, features[:len(weak)][gold])  # the weak share, by its true labels
    torch.testing.assert_close(negative, features[:len(weak)][~gold])
    probe = fit_udm_classifier(positive, negative)
    expected = probe.prob_desirable(features[len(weak):])
    assert [i.weak_prob for i in student] == pytest.approx(expected.tolist(), abs=1e-6)
    assert all(0 <= i.weak_prob <= 1 for i in student + eval_items)
    written = read_jsonl(tmp_path / w2s.WEAK_LABELS_FILE)
    assert [r["weak_prob"] for r in written] == [i.weak_prob for i in student]
    hard, hard_student, _ = loaded(tmp_path / "hard", tokenizer, ", weak_soft: false")
    hard.wrap_model(model)
    assert [i.weak_prob for i in hard_student] == [float(p > 0.5) for p in expected.tolist()]


@pytest.mark.parametrize(("params", "target"), [(", loss: xent", "weak"), (", loss: xent, labels: ground_truth",
                                                                          "gold")])
def test_student_loss_is_cross_entropy_against_weak_labels_or_the_truth(tmp_path, tokenizer, params, target):
    method, student, _ = loaded(tmp_path, tokenizer, params)
    model = tiny_llama(tokenizer)
    method.wrap_model(model)
    ctx = BatchContext(model, None, tokenizer.pad_token_id, 1024, None, torch.device("cpu"), tokenizer)
    indices = [0, 3, 5, 6]
    out = method.step(ctx, student, indices, None, {}, training=True)
    expected = []
    for i in indices:
        item = student[i]
        scores = sequence_logps(model, collate([(item.prompt, item.positive), (item.prompt, item.negative)],
                                               tokenizer.pad_token_id)).logps
        p = torch.softmax(torch.stack([scores[1], scores[0]]), 0)[1].item()  # column 1 = positive
        q = item.weak_prob if target == "weak" else float(item.gold)
        expected.append(-(q * torch.log(torch.tensor(p)) + (1 - q) * torch.log(torch.tensor(1 - p))).item())
    assert out.loss.item() == pytest.approx(sum(expected) / len(expected), abs=1e-5)
    gold_acc = sum(bool(student[i].weak_prob > 0.5) == student[i].gold for i in indices) / len(indices)
    assert out.metrics["weak/accuracy"] == pytest.approx(gold_acc)


def test_logconf_progress_is_counted_in_the_objective_state(tmp_path, tokenizer):
    method, student, _ = loaded(tmp_path, tokenizer)
    model = tiny_llama(tokenizer)
    method.wrap_model(model)
    ctx = BatchContext(model, None, tokenizer.pad_token_id, 1024, None, torch.device("cpu"), tokenizer)
    state: dict = {}
    first = method.step(ctx, student, [0, 1, 2, 3], None, state, training=True)
    assert first.metrics["w2s/aux_coef"] == 0.0 and state["weak_to_strong"]["micro_steps"] == 1
    state["weak_to_strong"]["micro_steps"] = 3  # of max_steps 6: past warm-up
    assert method.step(ctx, student, [0, 1, 2, 3], None, state, training=True).metrics["w2s/aux_coef"] == 0.5


def test_weak_label_and_ceiling_runs_train_and_give_pgr(tmp_path, tokenizer):
    runs = {}
    for labels in ("weak", "ground_truth"):
        result = train(make_config(tmp_path / labels, params=f", labels: {labels}"), model=tiny_llama(tokenizer),
                       tokenizer=tokenizer, log=lambda m: None)
        metrics = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
        final = [m for m in metrics if m["split"] == "eval"][-1]
        predictions = read_jsonl(result.output_dir / w2s.PREDICTIONS_FILE)
        assert len(predictions) == 12
        assert final["accuracy"] == pytest.approx(sum(p["student_correct"] for p in predictions) / 12)
        assert final["weak/accuracy"] == pytest.approx(sum(p["weak_correct"] for p in predictions) / 12)
        runs[labels] = predictions
    assert [p["weak_prob"] for p in runs["weak"]] == [p["weak_prob"] for p in runs["ground_truth"]]
    report = w2s.pgr_from_runs(tmp_path / "weak", tmp_path / "ground_truth", n_boot=100)
    assert report["n"] == 12
    assert report["w2s_accuracy"] == pytest.approx(sum(p["student_correct"] for p in runs["weak"]) / 12)


def test_config_errors():
    with pytest.raises(ValueError, match="weak_fraction must be < 1"):
        load_config(None, ["objectives=[{name: weak_to_strong, weak_fraction: 1}]"])
    with pytest.raises(ValueError, match="unknown parameter 'los'"):
        load_config(None, ["objectives=[{name: weak_to_strong, los: xent}]"])


def test_layer_features_stop_early_and_equal_the_full_forwards_hidden_states(tokenizer):
    model = tiny_llama(tokenizer)  # 2 decoder layers: hidden_states has 3 entries, the last one normed
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    batch = collate([(p, []) for p in prompts], tokenizer.pad_token_id)
    with torch.no_grad():
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    mask = batch.attention_mask.unsqueeze(-1).float()
    calls = []
    handle = model.model.layers[1].register_forward_hook(lambda *args: calls.append(1))
    for layer in (0, 1, 2):
        expected = (full.hidden_states[layer] * mask).sum(1) / mask.sum(1)
        got = w2s.layer_features(model, prompts, tokenizer.pad_token_id, layer, batch_size=2)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    handle.remove()
    assert len(calls) == 2  # layer 1 is not run for layers 0 and 1, only for layer 2 (2 batches)
    with pytest.raises(ValueError, match="weak_layer 3 does not exist"):
        w2s.layer_features(model, prompts, tokenizer.pad_token_id, 3, batch_size=2)
