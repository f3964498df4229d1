"""A tiny training run as its own process (SIGKILL and multi-process tests):
``python -m tests.train.run_tiny OUT [key=value ...]``; under ``torchrun`` every process runs it."""

from __future__ import annotations

import sys

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
    train(config, model=tiny_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None)


if __name__ == "__main__":
    main()
