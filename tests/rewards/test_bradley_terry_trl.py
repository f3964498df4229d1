"""Bradley-Terry reward models against TRL 1.16's ``RewardTrainer``: the same tiny sequence-classification Llama
from the same initial weights, fed the same token ids in the same order, gives the same loss and accuracy at
every step (within 1e-5), in the shared-prefix/packed layout and in padded rows, with and without margins and
reward centring."""

from __future__ import annotations

import copy
import json
import random

import pytest
from torch.utils.data import SequentialSampler

from alignkit.data.synthetic import make_synthetic, write_jsonl
from alignkit.models import tiny_llama
from alignkit.train.batching import micro_batches
from alignkit.train.config import load_config
from alignkit.train.loop import train
from alignkit.train.methods.reward_model import BradleyTerryMethod

STEPS, BATCH, LR = 6, 4, 2e-3


def _run_alignkit(tmp_path, tokenizer, monkeypatch, layout: str, objective: str, data: str | None):
    """Train with the loop; return (per-step metrics, train items, initial classifier state, pad id)."""
    captured: dict = {}
    original_load, original_wrap = BradleyTerryMethod.load, BradleyTerryMethod.wrap_model

    def load(self, *args, **kwargs):
        captured["items"] = original_load(self, *args, **kwargs)[0]
        return captured["items"], []

    def wrap(self, model):
        wrapped = original_wrap(self, model)
        captured["initial"] = copy.deepcopy(wrapped.state_dict())
        captured["layout"] = self.layout
        return wrapped

    monkeypatch.setattr(BradleyTerryMethod, "load", load)
    monkeypatch.setattr(BradleyTerryMethod, "wrap_model", wrap)
    overrides = [f"output_dir={tmp_path / 'run'}", "model.device=cpu", "progress=false", "lora.enabled=false",
                 f"batch_size={BATCH}", f"max_steps={STEPS}", "eval_every=0", "save_every=0", "log_every=1",
                 f"optim.learning_rate={LR}", "optim.scheduler=constant", "optim.warmup_steps=0",
                 "optim.weight_decay=0.0", "optim.max_grad_norm=1.0", "data.synthetic.n_train=32",
                 "data.synthetic.n_test=0", "data.eval_fraction=0", f"layout={layout}", "packing=true",
                 f"objectives=[{objective}]"]
    if data is not None:
        overrides.append(f"data.train={data}")
    config = load_config(None, overrides)
    train(config, model=tiny_llama(tokenizer), tokenizer=tokenizer)
    assert captured["layout"] == layout
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    metrics = [line for line in lines if line["split"] == "train"]
    order = [i for batch, _ in zip(micro_batches(config, captured["items"]), range(STEPS), strict=False)
             for i in batch]
    return metrics, captured["items"], captured["initial"], order


def _run_trl(tmp_path, tokenizer, items, initial, order, center: float | None):
    from datasets import Dataset
    from transformers import LlamaForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    class Recording(RewardTrainer):
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset or self.train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            self.__dict__.setdefault("seen", []).append((loss.item(), self._metrics["train"]["accuracy"][-1]))
            return loss

    config = copy.deepcopy(tiny_llama(tokenizer).config)
    config.num_labels, config.pad_token_id = 1, tokenizer.pad_token_id
    model = LlamaForSequenceClassification(config)
    model.load_state_dict(initial)
    rows = []
    for i in order:
        item = items[i]
        row = {"chosen_ids": item.prompt + item.chosen, "rejected_ids": item.prompt + item.rejected}
        if item.margin is not None:
            row["margin"] = item.margin
        rows.append(row)
    args = RewardConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=BATCH, max_steps=STEPS,
                        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                        max_grad_norm=1.0, logging_steps=1, report_to="none", save_strategy="no", bf16=False,
                        gradient_checkpointing=False, use_cpu=True, max_length=None, disable_dropout=True,
                        center_rewards_coefficient=center, dataloader_drop_last=True, seed=0)
    trainer = Recording(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    return trainer.seen


@pytest.mark.parametrize("layout", ["shared_prefix", "padded"])
def test_same_losses_and_accuracies_as_trl_reward_trainer(tmp_path, tokenizer, monkeypatch, layout):
    ours, items, initial, order = _run_alignkit(tmp_path, tokenizer, monkeypatch, layout, "{name: bradley_terry}",
                                                None)
    theirs = _run_trl(tmp_path, tokenizer, items, initial, order, None)
    assert len(ours) == len(theirs) == STEPS
    for step, (mine, (loss, accuracy)) in enumerate(zip(ours, theirs, strict=True), start=1):
        assert mine["loss"] == pytest.approx(loss, abs=1e-5), step
        assert mine["accuracy"] == pytest.approx(accuracy, abs=1e-5), step
    assert ours[-1]["loss"] < ours[0]["loss"]  # it learns


def test_margins_and_centring_match_trl(tmp_path, tokenizer, monkeypatch):
    pairs, _ = make_synthetic(32, 0, seed=1)
    rng = random.Random(0)
    tagged = [p.model_copy(update={"metadata": {"margin": rng.choice([0.0, 0.5, 1.5])}}) for p in pairs]
    path = write_jsonl(tagged, tmp_path / "margins.jsonl")
    ours, items, initial, order = _run_alignkit(
        tmp_path, tokenizer, monkeypatch, "shared_prefix", "{name: bradley_terry, center_rewards_coefficient: 0.05}",
        str(path))
    assert {item.margin for item in items} == {0.0, 0.5, 1.5}
    theirs = _run_trl(tmp_path, tokenizer, items, initial, order, 0.05)
    for step, (mine, (loss, accuracy)) in enumerate(zip(ours, theirs, strict=True), start=1):
        assert mine["loss"] == pytest.approx(loss, abs=1e-5), step
        assert mine["accuracy"] == pytest.approx(accuracy, abs=1e-5), step
