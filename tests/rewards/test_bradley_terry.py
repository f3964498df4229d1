"""Bradley-Terry reward models: the loss by hand, the score read where transformers' classifier reads it (in
every layout), LoRA and full training through the loop, and ``final/`` loading as a sequence classifier that
scores like the trained model and like :class:`alignkit.rewards.RewardModel`."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from alignkit.data.synthetic import make_synthetic, write_jsonl
from alignkit.data.tokenize import PromptEncoder, encode_pair
from alignkit.engine.layouts import collate
from alignkit.engine.pairs import pair_batch
from alignkit.models import tiny_llama
from alignkit.objectives.bradley_terry import bradley_terry_loss
from alignkit.objectives.params import ParamsError
from alignkit.rewards import RewardModel
from alignkit.train.config import load_config
from alignkit.train.loop import train
from alignkit.train.methods import BatchContext, build_method
from alignkit.train.methods.reward_model import score_rows


def make_config(tmp_path, *overrides: str):
    base = [f"output_dir={tmp_path / 'run'}", "model.device=cpu", "progress=false", "lora.enabled=false",
            "batch_size=8", "max_steps=8", "eval_every=0", "save_every=0", "optim.learning_rate=3e-3",
            "optim.scheduler=constant", "data.synthetic.n_train=64", "data.synthetic.n_test=16",
            "data.max_eval_examples=16", "objectives=[{name: bradley_terry}]"]
    return load_config(None, base + list(overrides))


def test_loss_by_hand():
    chosen, rejected = torch.tensor([1.0, -0.5]), torch.tensor([0.0, 0.5])
    out = bradley_terry_loss(chosen, rejected)
    expected = [math.log1p(math.exp(-1.0)), math.log1p(math.exp(1.0))]
    assert out.loss.tolist() == pytest.approx(expected, abs=1e-6)
    assert float(out.metrics["accuracy"]) == 0.5 and float(out.metrics["margin"]) == pytest.approx(0.0)
    margin = torch.tensor([0.5, 0.0])
    out = bradley_terry_loss(chosen, rejected, margin, center_rewards_coefficient=0.1)
    assert out.loss.tolist() == pytest.approx([math.log1p(math.exp(-0.5)) + 0.1 * 1.0,
                                               math.log1p(math.exp(1.0)) + 0.0], abs=1e-6)
    assert float(out.metrics["min_reward"]) == -0.5 and float(out.metrics["max_reward"]) == 1.0


def test_score_rows_read_the_classifiers_token():
    pad = 2
    rows = score_rows([1, 5, 6], [7, 8, pad], [9, pad], pad)  # trailing pads cut, prompt kept whole
    assert (rows.prompt, rows.chosen, rows.rejected) == ([1, 5, 6], [7, 8], [9])
    rows = score_rows([1, 5, 6], [7, pad], [pad], pad)  # an emptied response takes the prompt's tail
    assert (rows.prompt, rows.chosen, rows.rejected) == ([1, 5], [6, 7], [6])
    with pytest.raises(ValueError, match="fewer than two tokens"):
        score_rows([pad], [pad], [3], pad)


def test_params_are_checked_when_the_config_loads(tmp_path):
    with pytest.raises(ParamsError, match="unknown parameter 'centre'"):
        make_config(tmp_path, "objectives=[{name: bradley_terry, centre: 0.1}]")
    with pytest.raises(ParamsError, match="center_rewards_coefficient must be >= 0"):
        make_config(tmp_path, "objectives=[{name: bradley_terry, center_rewards_coefficient: -1}]")


@pytest.mark.parametrize("layout,packing", [("shared_prefix", True), ("shared_prefix", False), ("padded", False)])
def test_rewards_equal_the_classifiers_forward(tmp_path, tokenizer, layout, packing, monkeypatch):
    """One forward over [prompt | chosen | rejected] rows gives what the classifier gives each full sequence;
    packed, all pairs go in one row without padding (the decoder runs attention per segment)."""
    from alignkit.train.methods import reward_model

    fed = []
    monkeypatch.setattr(reward_model, "pair_batch", lambda *a, **k: fed.append(pair_batch(*a, **k)) or fed[-1])
    method = build_method(make_config(tmp_path, f"layout={layout}", f"packing={str(packing).lower()}"))
    items, _ = method.load(tokenizer, tmp_path, lambda m: None)
    classifier = method.wrap_model(tiny_llama(tokenizer)).eval()
    assert method.layout == layout
    ctx = BatchContext(classifier, None, tokenizer.pad_token_id, 1024, None, torch.device("cpu"), tokenizer)
    indices = list(range(6))
    with torch.no_grad():
        rewards, _ = method.rewards(ctx, items, indices)
        rows = [([], items[i].prompt + items[i].chosen) for i in indices]
        rows += [([], items[i].prompt + items[i].rejected) for i in indices]
        batch = collate(rows, tokenizer.pad_token_id)
        expected = classifier(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, 0]
    assert rewards.tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    if packing:
        assert fed[-1].batch.input_ids.shape[0] == 1 and bool((fed[-1].batch.segment >= 0).all())
    laid_out = pair_batch([score_rows(items[i].prompt, items[i].chosen, items[i].rejected, tokenizer.pad_token_id)
                           for i in indices], tokenizer.pad_token_id, layout, pack=packing)
    if layout == "shared_prefix":  # the prompt is fed once per pair
        assert laid_out.num_tokens == sum(len(items[i].prompt) + len(items[i].chosen) + len(items[i].rejected)
                                          for i in indices)


def test_checkpointed_reward_model_keeps_one_row_and_the_unchecked_gradients(tmp_path, tokenizer, monkeypatch):
    """The classifier holds a configuration of its own next to its backbone's: checkpointing enabled by the loop
    must switch both for the recompute, so the checkpointed model keeps per-segment attention (one row) and
    its rewards and gradients equal the unchecked model's."""
    from alignkit.train.methods import reward_model
    from alignkit.train.recompute import enable_activation_checkpointing

    fed = []
    monkeypatch.setattr(reward_model, "pair_batch", lambda *a, **k: fed.append(pair_batch(*a, **k)) or fed[-1])
    method = build_method(make_config(tmp_path))
    items, _ = method.load(tokenizer, tmp_path, lambda m: None)
    results = {}
    for checkpointed in (False, True):
        torch.manual_seed(0)
        classifier = method.wrap_model(tiny_llama(tokenizer)).train()
        if checkpointed:
            enable_activation_checkpointing(classifier)
        ctx = BatchContext(classifier, None, tokenizer.pad_token_id, 1024, None, torch.device("cpu"), tokenizer)
        rewards, _ = method.rewards(ctx, items, list(range(6)))
        (rewards * torch.arange(1.0, 13.0)).sum().backward()
        assert fed[-1].batch.input_ids.shape[0] == 1
        results[checkpointed] = (rewards.detach(), torch.cat([p.grad.flatten() for p in classifier.parameters()]))
    torch.testing.assert_close(results[True][0], results[False][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(results[True][1], results[False][1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("lora", [False, True])
def test_final_loads_as_a_sequence_classifier(tmp_path, tokenizer, lora):
    config = make_config(tmp_path, f"lora.enabled={str(lora).lower()}", "save_every=4")
    result = train(config, model=tiny_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None)
    loaded, info = AutoModelForSequenceClassification.from_pretrained(result.final_dir, output_loading_info=True)
    assert type(loaded).__name__ == "LlamaForSequenceClassification" and loaded.config.num_labels == 1
    assert not info["missing_keys"] and not info["unexpected_keys"]
    trained = result.model.eval()
    method = build_method(config)
    items, _ = method.load(tokenizer, tmp_path, lambda m: None)
    method.pad_id = tokenizer.pad_token_id
    indices = list(range(4))
    with torch.no_grad():
        ours, _ = method.rewards(BatchContext(trained, None, tokenizer.pad_token_id, 1024, None,
                                              torch.device("cpu"), tokenizer), items, indices)
        again, _ = method.rewards(BatchContext(loaded.eval(), None, tokenizer.pad_token_id, 1024, None,
                                               torch.device("cpu"), tokenizer), items, indices)
    assert again.tolist() == pytest.approx(ours.tolist(), abs=1e-5)
    if lora:  # only the adapter and the score head trained
        names = [n for n, p in trained.named_parameters() if p.requires_grad]
        assert names and all("lora_" in n or "score" in n for n in names)
    # RewardModel renders the conversation with the chat template: the very tokens training scored
    pair = make_synthetic(4, 0, seed=0)[0][0]
    encoded = encode_pair(PromptEncoder(tokenizer, response_end="template"), pair.prompt, pair.chosen,
                          pair.rejected, pair.system, 512, 256)
    scorer = RewardModel(str(result.final_dir))
    assert scorer.encode(pair.prompt, pair.chosen) == encoded.prompt + encoded.chosen
    item = type(items[0])(encoded.prompt, encoded.chosen, encoded.rejected)
    with torch.no_grad():
        direct, _ = method.rewards(BatchContext(trained, None, tokenizer.pad_token_id, 1024, None,
                                                torch.device("cpu"), tokenizer), [item], [0])
    assert scorer([pair.prompt, pair.prompt], [pair.chosen, pair.rejected]) == pytest.approx(direct.tolist(),
                                                                                             abs=1e-5)


def test_margins_must_be_on_every_pair(tmp_path, tokenizer):
    pairs, _ = make_synthetic(16, 0, seed=0)
    tagged = [p.model_copy(update={"metadata": {"margin": 1.0}}) if i % 2 else p for i, p in enumerate(pairs)]
    path = write_jsonl(tagged, tmp_path / "mixed.jsonl")
    method = build_method(make_config(tmp_path, f"data.train={path}"))
    with pytest.raises(ValueError, match="some pairs carry a 'margin' margin and some do not"):
        method.load(tokenizer, tmp_path, lambda m: None)


@pytest.mark.parametrize("lora", [False, True])
def test_checkpoint_and_resume(tmp_path, tokenizer, lora):
    common = ["max_steps=4", "save_every=2", "batch_size=4", f"lora.enabled={str(lora).lower()}"]
    straight = train(make_config(tmp_path / "a", *common), model=tiny_llama(tokenizer), tokenizer=tokenizer,
                     log=lambda m: None)
    train(make_config(tmp_path / "b", *common), model=tiny_llama(tokenizer), tokenizer=tokenizer,
          log=lambda m: None, stop_after_steps=2)
    resumed = train(make_config(tmp_path / "b", *common, "resume=true"), model=tiny_llama(tokenizer),
                    tokenizer=tokenizer, log=lambda m: None)
    a, b = dict(straight.model.named_parameters()), dict(resumed.model.named_parameters())
    assert a.keys() == b.keys() and any("score" in name for name in a)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0, msg=name)
