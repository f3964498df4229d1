"""DPO training throughput: TRL's DPOTrainer against alignkit, side by side, in one invocation.

Every config runs in its own subprocess (so peak RSS is that config's own), on the same model (builtin
SmolLM2-135M via ``alignkit.models.load_model``), the same pairs in the same order and batches, the same
batch size, max length, learning rate, beta, constant schedule and fp32 (unless the config says bf16).

Identical tokens: TRL tokenizes conversational data itself; alignkit is handed exactly the token ids TRL
produces (alignkit's own encoder drops the newline the chat template puts after ``<|im_end|>``, which TRL
scores), so per-step losses compare the trainers, not the tokenizers. Identical order: alignkit's loop
draws micro-batches with ``alignkit.train.data.batch_order``; TRL is given a sampler that replays it
(``bench/trl_replay.py``, importable here because the script's own directory is on ``sys.path``).

    .venv/bin/python bench/dpo_throughput.py --steps 8            # writes bench/results/dpo_throughput.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-test-first1000.jsonl.gz"

# name -> (trainer, settings). alignkit settings are TrainConfig overrides on top of the common ones.
CONFIGS: dict[str, tuple[str, dict]] = {
    "trl_default": ("trl", {}),
    "trl_precompute_ref": ("trl", {"precompute_ref_log_probs": True}),
    "alignkit_default": ("alignkit", {"overrides": []}),
    "alignkit_packed": ("alignkit", {"overrides": ["packing=true"]}),  # the default since 2026-11-25
    "alignkit_shared_prefix": ("alignkit", {"overrides": ["packing=false"]}),  # the default before
    "alignkit_padded": ("alignkit", {"overrides": ["layout=padded"]}),
    "alignkit_bf16": ("alignkit", {"overrides": ["bf16=true"]}),
    "alignkit_packed_bf16": ("alignkit", {"overrides": ["packing=true", "bf16=true"]}),
    "alignkit_precomputed_ref": ("alignkit", {"overrides": ["reference=precomputed"]}),
    "alignkit_checkpointed": ("alignkit", {"overrides": ["activation_checkpointing=true"]}),
    "alignkit_precomputed_ref_checkpointed": ("alignkit", {"overrides": ["reference=precomputed",
                                                                         "activation_checkpointing=true"]}),
    "alignkit_packed_precomputed_ref": ("alignkit", {"overrides": ["packing=true", "reference=precomputed"]}),
}
DEFAULT_CONFIGS = ["trl_default", "alignkit_default", "alignkit_shared_prefix", "trl_precompute_ref",
                   "alignkit_precomputed_ref", "alignkit_checkpointed"]


# ---------------------------------------------------------------- data


def prepare_data(args: argparse.Namespace, path: Path) -> dict:
    """The first pairs of the 256, as TRL conversational rows and as TRL's own token ids."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from alignkit.data import load_records
    from alignkit.models import load_tokenizer

    records = load_records(DATA, kind="pair", on_invalid="skip", log=None).records[:256]
    n = (args.warmup + args.steps) * args.batch_size
    if n > len(records):
        raise SystemExit(f"--steps needs {n} pairs, only {len(records)} in the 256")

    def messages(text, role):
        return [{"role": role, "content": text}] if isinstance(text, str) else [m.model_dump() for m in text]

    rows = [{"prompt": messages(r.prompt, "user"), "chosen": messages(r.chosen, "assistant"),
             "rejected": messages(r.rejected, "assistant")} for r in records[:n]]
    tokenizer = load_tokenizer()
    targs = DPOConfig(output_dir=str(path.parent / "prep"), max_length=args.max_length, report_to=[], bf16=False,
                      use_cpu=True)
    # the trainer's own preparation (chat template, prompt/completion split); it reads nothing from `self`
    prepared = DPOTrainer._prepare_dataset(None, Dataset.from_list(rows), tokenizer, targs, "train")
    if len(prepared) != n:
        raise SystemExit("TRL dropped pairs whose prompt fills max_length; pick other pairs")
    ids = []
    for ex in prepared:
        room = args.max_length - len(ex["prompt_ids"])  # TRL's collator keeps the start of [prompt | response]
        ids.append({"prompt": ex["prompt_ids"], "chosen": ex["chosen_ids"][:room],
                    "rejected": ex["rejected_ids"][:room]})
    from trl_replay import replay_order

    order = replay_order(n, args.batch_size, args.warmup + args.steps)
    data = {"rows": rows, "ids": ids, "order": order}
    path.write_text(json.dumps(data))
    return data


def step_tokens(ids: list[dict], order: list[int], batch_size: int) -> list[dict]:
    """Per step: unique tokens (prompt once + both responses) and what a padded layout feeds."""
    out = []
    for start in range(0, len(order), batch_size):
        batch = [ids[i] for i in order[start:start + batch_size]]
        unique = sum(len(b["prompt"]) + len(b["chosen"]) + len(b["rejected"]) for b in batch)
        rows = [len(b["prompt"]) + len(b[k]) for b in batch for k in ("chosen", "rejected")]
        out.append({"unique": unique, "padded_rows": max(rows) * len(rows), "prompt_twice": sum(rows)})
    return out


# ---------------------------------------------------------------- workers (one config per process)


def worker_trl(args: argparse.Namespace, data: dict, settings: dict, out_dir: Path) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig
    from trl_replay import replay_trainer

    from alignkit.models import load_model

    model, tokenizer = load_model(dtype="float32", device="cpu", log=lambda m: None)
    losses: list[float] = []
    marks: list[float] = []
    Trainer = replay_trainer(data["order"], lambda trainer, loss: losses.append(loss))  # noqa: N806 - a class

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            if not marks:
                marks.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, *a, **k):
            marks.append((time.perf_counter(), time.process_time()))

    config = DPOConfig(
        output_dir=str(out_dir), per_device_train_batch_size=args.batch_size, max_length=args.max_length,
        learning_rate=args.lr, beta=args.beta, bf16=settings.get("bf16", False), use_cpu=True,
        max_steps=args.warmup + args.steps, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
        report_to=[], disable_tqdm=True, seed=0, dataloader_num_workers=0,
        precompute_ref_log_probs=settings.get("precompute_ref_log_probs", False),
    )
    setup = time.perf_counter()
    ref = None if config.precompute_ref_log_probs else copy.deepcopy(model)
    trainer = Trainer(model=model, ref_model=ref, args=config, train_dataset=Dataset.from_list(data["rows"]),
                      processing_class=tokenizer, callbacks=[Clock()])
    init_seconds = time.perf_counter() - setup  # includes the reference precompute when enabled
    trainer.train()
    return {"losses": losses, **_durations(marks), "setup_seconds": init_seconds,
            "settings": {"gradient_checkpointing": config.gradient_checkpointing, "bf16": config.bf16,
                         **settings}}


def worker_alignkit(args: argparse.Namespace, data: dict, settings: dict, out_dir: Path) -> dict:
    import alignkit.train.methods.preference as preference
    from alignkit.data.tokenize import EncodedPair
    from alignkit.models import load_model
    from alignkit.train.config import load_config
    from alignkit.train.loop import train

    model, tokenizer = load_model(dtype="float32", device="cpu", log=lambda m: None)  # from the bench's cache
    # reference log-probs go to this worker's own cache (the root is read when they are cached, after the model
    # has loaded), so no config reuses another's precomputed reference
    os.environ["ALIGNKIT_CACHE"] = str(out_dir / "cache")
    n = len(data["ids"])
    items = [EncodedPair(x["prompt"], x["chosen"], x["rejected"]) for x in data["ids"]]

    def load(self, tokenizer, run_dir, log):  # TRL's token ids instead of alignkit's own encoding
        self._log = log
        return items, items[:2]

    preference.PreferenceMethod.load = load
    marks: list[tuple[float, float]] = []
    step = preference.PreferenceMethod.step

    def timed_step(self, *a, **k):  # one micro-step per optimizer step here: step i runs from its start to i+1's
        marks.append((time.perf_counter(), time.process_time()))
        return step(self, *a, **k)

    preference.PreferenceMethod.step = timed_step
    logs: list[str] = []
    steps = args.warmup + args.steps
    config = load_config(None, [
        f"output_dir={out_dir / 'run'}", "model.device=cpu", "progress=false", "lora.enabled=false",
        "reference=copy", f"batch_size={args.batch_size}", f"max_steps={steps}", "eval_every=0", "save_every=0",
        f"optim.learning_rate={args.lr}", "optim.scheduler=constant", "optim.max_grad_norm=1.0",
        f"objectives=[{{name: dpo, beta: {args.beta}}}]", f"data.max_length={args.max_length}", "seed=0",
        *settings["overrides"],
    ])
    assert n == (args.warmup + args.steps) * args.batch_size
    setup = time.perf_counter()
    train(config, model=model, tokenizer=tokenizer, log=logs.append, stop_after_steps=steps)
    marks.append((time.perf_counter(), time.process_time()))
    lines = [json.loads(x) for x in (out_dir / "run" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if x["split"] == "train"]
    durations = _durations(marks)
    return {"losses": [x["loss"] for x in train_lines], **durations,
            "setup_seconds": marks[0][0] - setup, "log": logs,
            "settings": {"overrides": settings["overrides"], "lora": False,
                         "activation_checkpointing": "activation_checkpointing=true" in settings["overrides"]}}


def _durations(marks: list[tuple[float, float]]) -> dict[str, list[float]]:
    """Wall and CPU seconds between consecutive marks. CPU time (all threads of the process) is the fairer
    figure on a machine shared with other jobs: it counts the work done, not the time spent waiting."""
    pairs = list(zip(marks, marks[1:], strict=False))
    return {"step_seconds": [b[0] - a[0] for a, b in pairs], "step_cpu_seconds": [b[1] - a[1] for a, b in pairs]}


def run_worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    data = json.loads(Path(args.data).read_text())
    kind, settings = CONFIGS[args.worker]
    out_dir = Path(tempfile.mkdtemp(prefix=f"bench-{args.worker}-"))
    try:
        fn = worker_trl if kind == "trl" else worker_alignkit
        result = fn(args, data, settings, out_dir)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- machine peak and the driver


def matmul_peak(threads: int, size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Best-of FLOP/s of a square matmul in fp32 and bf16 (the ceiling the model's matmuls could reach)."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for name, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16)]:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        torch.matmul(a, b)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - start)
        out[name] = 2 * size**3 / best
    return out


def summarise(name: str, result: dict, tokens: list[dict], args: argparse.Namespace, params: int,
              peak: dict) -> dict:
    measured = slice(args.warmup, args.warmup + args.steps)
    seconds = sum(result["step_seconds"][measured])
    cpu_seconds = sum(result["step_cpu_seconds"][measured])
    unique = sum(t["unique"] for t in tokens[measured])
    pairs = args.steps * args.batch_size
    precision = "bf16" if "bf16=true" in result["settings"].get("overrides", []) or result["settings"].get("bf16") \
        else "fp32"
    model_flops = 6 * params * unique / seconds
    return {
        "config": name, "precision": precision, "settings": result["settings"],
        "pairs_per_s": pairs / seconds, "unique_tokens_per_s": unique / seconds,
        "pairs_per_cpu_s": pairs / cpu_seconds, "unique_tokens_per_cpu_s": unique / cpu_seconds,
        "step_seconds": result["step_seconds"], "step_cpu_seconds": result["step_cpu_seconds"],
        "setup_seconds": result["setup_seconds"],
        "pairs_per_s_incl_setup": pairs / (seconds + result["setup_seconds"]),
        "peak_rss_mb": result["peak_rss_mb"], "losses": result["losses"],
        "model_flops_per_s": model_flops, "fraction_of_matmul_peak": model_flops / peak[precision],
        # per CPU-second x threads: what the run would reach with the cores to itself
        "model_flops_per_s_cpu_time": 6 * params * unique / cpu_seconds * args.threads,
        "fraction_of_matmul_peak_cpu_time": 6 * params * unique / cpu_seconds * args.threads / peak[precision],
        "log": result.get("log", [])[-5:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="measured steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-6, help="TRL's default DPO learning rate")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="repeat the alternation; the best round is kept")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help=f"from {', '.join(CONFIGS)}")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "dpo_throughput.json"))
    parser.add_argument("--from-partial", action="store_true",
                        help="write the report from the .partial results of an interrupted run (same options)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_worker(args)

    names = args.configs.split(",")
    if args.from_partial:
        stored = json.loads(Path(args.out + ".partial").read_text())
        stored = stored.get("results", stored)
        names = [n for n in names if n in stored]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configs {unknown}")
    # This process and the workers (they inherit the environment) keep alignkit's cache (the converted model,
    # reference log-probs) in a fresh directory: the user's ~/.cache/alignkit is never read or written, and a
    # stale reference cache cannot flatter a row. Removed at the end, and at exit on failure.
    cache = tempfile.TemporaryDirectory(prefix="bench-dpo-cache-")
    os.environ["ALIGNKIT_CACHE"] = cache.name
    work = Path(tempfile.mkdtemp(prefix="bench-dpo-"))
    data_path = work / "data.json"
    data = prepare_data(args, data_path)
    tokens = step_tokens(data["ids"], data["order"], args.batch_size)
    peak = matmul_peak(args.threads)
    print(f"matmul peak: fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s", flush=True)
    results: dict[str, dict] = {}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, __file__, "--data", str(data_path), *[
        f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("steps", "warmup", "batch_size", "max_length", "lr",
                                                                 "beta", "threads")]]
    if args.from_partial:
        results = {n: stored[n] for n in names}
    for round_index in range(0 if args.from_partial else args.rounds):
        for name in names:  # alternate configs so load from other processes spreads over all of them
            start = time.perf_counter()
            proc = subprocess.run([*base, "--worker", name], capture_output=True, text=True, cwd=REPO)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{name} failed")
            result = json.loads(line[-1][len("RESULT "):])
            measured = sum(result["step_seconds"][args.warmup:])
            print(f"round {round_index} {name}: {args.steps * args.batch_size / measured:.3f} pairs/s, "
                  f"{args.steps * args.batch_size / sum(result['step_cpu_seconds'][args.warmup:]):.4f} pairs/cpu-s, "
                  f"peak RSS {result['peak_rss_mb']:.0f} MB ({time.perf_counter() - start:.0f} s)", flush=True)
            keep = results.get(name)
            if keep is None or measured < sum(keep["step_seconds"][args.warmup:]):
                results[name] = result
            Path(args.out + ".partial").write_text(json.dumps(results))  # survives an interrupted run
    from alignkit.models import load_model

    model, _ = load_model(device="cpu", log=lambda m: None)
    params = sum(p.numel() for p in model.parameters())
    rows = {name: summarise(name, results[name], tokens, args, params, peak) for name in names}
    reference = next((n for n in names if n.startswith("trl_default")), names[0])
    compare = args.warmup + args.steps
    for row in rows.values():
        base_losses = rows[reference]["losses"][:compare]
        row["max_abs_loss_diff_vs_" + reference] = max(abs(a - b) for a, b in zip(row["losses"][:compare],
                                                                                 base_losses, strict=True))
        row["pairs_per_s_vs_" + reference] = row["pairs_per_s"] / rows[reference]["pairs_per_s"]
        row["pairs_per_cpu_s_vs_" + reference] = row["pairs_per_cpu_s"] / rows[reference]["pairs_per_cpu_s"]
        row["peak_rss_vs_" + reference] = row["peak_rss_mb"] / rows[reference]["peak_rss_mb"]
    bf16 = [n for n in names if rows[n]["precision"] == "bf16"]
    fp32 = next((n for n in names if n.startswith("alignkit") and rows[n]["precision"] == "fp32"), None)
    report = {
        "command": " ".join(["python", "bench/dpo_throughput.py", *sys.argv[1:]]),
        "complete": not args.from_partial,
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "matmul_peak_flops": peak,
                    "load_average_at_end": os.getloadavg()},
        "setup": {"model": "builtin smollm2-135m-instruct", "params": params, "pairs": len(data["ids"]),
                  "batch_size": args.batch_size, "max_length": args.max_length, "lr": args.lr, "beta": args.beta,
                  "warmup_steps": args.warmup, "measured_steps": args.steps, "schedule": "constant",
                  "flops_formula": "6 * params * unique tokens (prompt once + chosen + rejected) per second",
                  "tokens_per_step": tokens},
        "bf16_loss_effect": {n: max(abs(a - b) for a, b in zip(rows[n]["losses"], rows[fp32]["losses"], strict=True))
                             for n in bf16} if fp32 else {},
        "results": list(rows.values()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    Path(args.out + ".partial").unlink(missing_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    cache.cleanup()
    print(f"{'config':38} {'prec':5} {'pairs/s':>8} {'x TRL':>6} {'pairs/cpu-s':>11} {'x TRL':>6} {'uniq tok/s':>10} "
          f"{'RSS MB':>7} {'x TRL':>6} {'max|dloss|':>10} {'MFU':>6} {'MFU(cpu)':>8}")
    for r in rows.values():
        print(f"{r['config']:38} {r['precision']:5} {r['pairs_per_s']:8.3f} {r['pairs_per_s_vs_' + reference]:6.2f} "
              f"{r['pairs_per_cpu_s']:11.4f} {r['pairs_per_cpu_s_vs_' + reference]:6.2f} "
              f"{r['unique_tokens_per_s']:10.1f} {r['peak_rss_mb']:7.0f} {r['peak_rss_vs_' + reference]:6.2f} "
              f"{r['max_abs_loss_diff_vs_' + reference]:10.2e} {r['fraction_of_matmul_peak']:6.1%} "
              f"{r['fraction_of_matmul_peak_cpu_time']:8.1%}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
