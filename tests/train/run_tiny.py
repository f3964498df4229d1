"""A tiny training run as its own process (SIGKILL and multi-process tests):
``python -m tests.train.run_tiny OUT [key=value ...]``; under ``torchrun`` every process runs it.
``TINY_ATTENTION_DROPOUT=p`` turns on attention dropout, so every process draws from its own RNG stream."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from alignkit.models import load_tokenizer, tiny_llama
from alignkit.train.config import load_config
from alignkit.train.loop import train

DEFAULTS = ["model.device=cpu", "progress=false", "lora.enabled=false", "batch_size=2", "max_steps=8",
            "eval_every=4", "save_every=2", "keep_checkpoints=2", "optim.learning_rate=3e-3",
            "optim.scheduler=constant", "data.synthetic.n_train=64", "data.synthetic.n_test=8",
            "data.max_eval_examples=8"]


def main() -> None:
    out, overrides = sys.argv[1], sys.argv[2:]
    torch.set_num_threads(1)  # bit-identical results across processes
    config = load_config(None, [f"output_dir={out}", *DEFAULTS, *overrides])
    tokenizer = load_tokenizer()
    model = tiny_llama(tokenizer)
    dropout = float(os.environ.get("TINY_ATTENTION_DROPOUT", "0"))
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = dropout
    if os.environ.get("TINY_RECORD_EVALUATE"):
        record_whole_set_evaluations(Path(out))
    train(config, model=model, tokenizer=tokenizer, log=lambda m: None)


def record_whole_set_evaluations(out: Path) -> None:
    """Count DOVE's whole-set ``evaluate`` calls per process, in ``OUT.evaluate-rank<R>``."""
    from alignkit.train.methods.dove import DoveMethod

    original = DoveMethod.evaluate

    def evaluate(self, *args, **kwargs):
        with open(f"{out}.evaluate-rank{os.environ.get('RANK', '0')}", "a") as calls:
            calls.write("call\n")
        return original(self, *args, **kwargs)

    DoveMethod.evaluate = evaluate


if __name__ == "__main__":
    main()
