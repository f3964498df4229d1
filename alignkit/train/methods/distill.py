"""Precompute what a DCKD or ADPA run needs before its first update, one model in memory at a time.

``python -m alignkit.train.methods.distill precompute -c <config> [key=value ...]`` computes DCKD's teacher
top-k tables into the teacher cache (no student needed), or ADPA's student samples and both teachers' tables
into ``<output_dir>/adpa/``; the run then reuses them. The methods are in ``dckd`` and ``adpa`` (Gao et al.,
"Advantage-Guided Distillation for Preference Alignment in Small Language Models", ICLR 2025, arXiv
2502.17927), the tables in ``teacher_cache``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from torch import nn

from alignkit.train.config import TrainConfig
from alignkit.train.methods.adpa import ADPAMethod
from alignkit.train.methods.dckd import DCKDMethod


def precompute(config: TrainConfig, log: Callable[[str], None] = print) -> None:
    """Everything a DCKD or ADPA run would compute before its first update, with one model in memory at a
    time: DCKD's teacher tables (no student needed), or ADPA's student samples and both teachers' tables."""
    from alignkit.models import load_model, load_tokenizer
    from alignkit.train.methods import build_method

    method = build_method(config)
    if not isinstance(method, DCKDMethod | ADPAMethod):
        raise ValueError(f"precompute is for dckd and adpa runs, not {[o.name for o in config.objectives]}")
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(config.model.name, trust_remote_code=config.model.trust_remote_code, log=log)
    method.load(tokenizer, out_dir, log)  # DCKD: computes the teacher tables here
    if isinstance(method, ADPAMethod):
        from alignkit.models import resolve_device

        def load_student() -> nn.Module:
            return load_model(config.model.name, dtype=config.model.dtype, device=config.model.device,
                              trust_remote_code=config.model.trust_remote_code, log=log)[0]

        method.prepare(resolve_device(config.model.device), load_student=load_student)
        log(f"adpa: data ready in {out_dir / 'adpa'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m alignkit.train.methods.distill",
                                     description="Precompute DCKD/ADPA teacher top-k (and ADPA student samples) "
                                                 "for a run config, one model in memory at a time.")
    sub = parser.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("precompute", help="compute and cache what the run in the config needs")
    pre.add_argument("-c", "--config", required=True, help="the run's YAML config (objective dckd or adpa)")
    pre.add_argument("overrides", nargs="*", help="dotted.key=value overrides, as for `alignkit train`")
    args = parser.parse_args(argv)
    from alignkit.train.config import load_config

    config = load_config(args.config, args.overrides)
    start = time.perf_counter()
    precompute(config)
    print(json.dumps({"done": True, "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = ["main", "precompute"]
