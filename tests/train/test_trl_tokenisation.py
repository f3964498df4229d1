"""``data.response_end: template`` reproduces TRL's DPOTrainer: from the same conversational pairs file, the
same tiny model trained 4 steps through ``alignkit.train`` and through TRL give the same losses and log-probs
(within 1e-4). With the default ``eos`` ending, alignkit scores one token fewer per response (the newline
ChatML writes after <|im_end|>), which the second half checks is a real difference."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

from alignkit.models import tiny_llama
from alignkit.train.config import load_config
from alignkit.train.loop import train

STEPS, BATCH, LR = 4, 2, 1e-3


def pairs() -> list[dict]:
    questions = ["What is 2 + 2?", "Name a colour.", "Say hello politely.", "What is the capital of France?",
                 "Give one prime number.", "Spell 'cat' backwards.", "What is 3 * 3?", "Name a fruit."]
    return [{"prompt": [{"role": "user", "content": q}],
             "chosen": [{"role": "assistant", "content": f"A short, correct answer to: {q}"}],
             "rejected": [{"role": "assistant", "content": "No."}]} for q in questions]


def trl_replay():
    """bench/trl_replay.py, shared with bench/dpo_throughput.py (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("trl_replay", Path(__file__).parents[2] / "bench" / "trl_replay.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def trl_run(model, tokenizer, rows: list[dict], tmp_path) -> list[dict]:
    from datasets import Dataset
    from trl import DPOConfig

    replay = trl_replay()
    logged: list[dict] = []

    def on_loss(trainer, loss: float) -> None:
        step = {k: sum(v) / len(v) for k, v in trainer._metrics["train"].items() if v}  # this step's raw values
        logged.append({**step, "loss": loss})

    Trainer = replay.replay_trainer(replay.replay_order(len(rows), BATCH, STEPS), on_loss)  # noqa: N806 - a class

    config = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=BATCH, max_length=512,
                       learning_rate=LR, beta=0.1, bf16=False, use_cpu=True, max_steps=STEPS,
                       lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=[],
                       disable_tqdm=True, seed=0, dataloader_num_workers=0, gradient_checkpointing=False,
                       max_grad_norm=1.0, weight_decay=0.0)
    trainer = Trainer(model=model, ref_model=copy.deepcopy(model), args=config,
                      train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    return logged


def alignkit_run(model, tokenizer, data_file, tmp_path, response_end: str) -> list[dict]:
    config = load_config(None, [
        f"output_dir={tmp_path / response_end}", "model.device=cpu", "progress=false", "lora.enabled=false",
        f"batch_size={BATCH}", f"max_steps={STEPS}", "eval_every=0", "save_every=0", f"optim.learning_rate={LR}",
        "optim.scheduler=constant", "optim.max_grad_norm=1.0", f"data.train={data_file}", "data.eval_fraction=0",
        "data.max_length=512", f"data.response_end={response_end}", "reference=copy", "packing=false",
        "objectives=[{name: dpo, beta: 0.1}]"])
    result = train(config, model=model, tokenizer=tokenizer, log=lambda m: None)
    lines = (result.output_dir / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if row["split"] == "train"]


@pytest.mark.slow
def test_template_response_end_reproduces_trl_dpo(tmp_path, tokenizer):
    rows = pairs()
    data_file = tmp_path / "pairs.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    theirs = trl_run(tiny_llama(tokenizer), tokenizer, rows, tmp_path)
    ours = alignkit_run(tiny_llama(tokenizer), tokenizer, data_file, tmp_path, "template")
    assert len(theirs) == len(ours) == STEPS
    for step, (t, a) in enumerate(zip(theirs, ours, strict=True), start=1):
        assert a["loss"] == pytest.approx(t["loss"], abs=1e-4), step
        assert a["logps/chosen"] == pytest.approx(t["logps/chosen"], abs=1e-4), step
        assert a["logps/rejected"] == pytest.approx(t["logps/rejected"], abs=1e-4), step
    # the default ending scores one token fewer per response: the log-probs move by far more than 1e-4
    default = alignkit_run(tiny_llama(tokenizer), tokenizer, data_file, tmp_path, "eos")
    assert abs(default[0]["logps/chosen"] - theirs[0]["logps/chosen"]) > 1e-2
