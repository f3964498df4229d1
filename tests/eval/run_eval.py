"""``python -m tests.eval.run_eval OUT key=value ...``: one evaluation as its own process (under torchrun for
the multi-process test)."""

from __future__ import annotations

import sys

import torch

from alignkit.eval.config import load_eval_config
from alignkit.eval.pipeline import run_eval


def main() -> None:
    torch.set_num_threads(1)
    run_eval(load_eval_config(None, [f"out={sys.argv[1]}", *sys.argv[2:]]), log=lambda m: None)


if __name__ == "__main__":
    main()
