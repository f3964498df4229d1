"""Reward-model (Bradley-Terry) training throughput: TRL's RewardTrainer against alignkit, in one invocation.

Each side runs in its own subprocess, so each peak RSS is that side's own. Both train the builtin SmolLM2-135M
as a sequence classifier (``num_labels=1``, score at the last non-pad token) on the same HH-RLHF pairs, fed the
same token ids in the same order and batches, with the same batch size, max length, learning rate, constant
schedule, AdamW, grad-norm clip 1.0 and fp32 weights:

* **Token ids.** The main process encodes the pairs with alignkit's own reward-model path
  (``BradleyTerryMethod.load``: chat template, response ends as the template writes them, truncation to
  ``max_length``); the alignkit worker encodes them again the same way inside its run, TRL is given those ids
  as ``chosen_ids``/``rejected_ids`` (prompt + response), so the losses compare the trainers, not tokenizers.
* **Order.** alignkit draws micro-batches with ``alignkit.train.batching.micro_batches``; TRL gets the rows in
  that order and a sequential sampler, so step *k* sees the same pairs on both sides.
* **Initial weights.** The backbone is the same checkpoint. alignkit initialises the score head itself; its
  initial head is saved and copied into TRL's model (TRL would draw its own), so step-1 losses can match.
* **TRL defaults otherwise**, including ``gradient_checkpointing=True`` (TRL's default), ``bf16`` off.

    flock /tmp/cpu.lock .venv/bin/python bench/reward_throughput.py --steps 8   # writes bench/results/...
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dpo_measure import durations, matmul_peak  # same directory

from alignkit.io import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-test-first1000.jsonl.gz"


def checkpointing(every: int, selective: bool = False) -> list[str]:
    """TrainConfig overrides: every ``every``-th layer fully checkpointed, the others selectively if asked."""
    return ["activation_checkpointing=true", f"activation_checkpointing_every={every}",
            *(["selective_checkpointing=true"] if selective else [])]


# name -> (trainer, settings); alignkit settings are TrainConfig overrides on top of the common ones
CONFIGS: dict[str, tuple[str, dict]] = {
    "alignkit_default": ("alignkit", {"overrides": []}),
    # checkpointed layers recompute inside per-segment attention's context (since 2026-12-01), so checkpointing keeps
    # per-segment attention and one row per batch; _dense is the dense 4-D mask it used before
    "alignkit_checkpointed": ("alignkit", {"overrides": ["activation_checkpointing=true"]}),
    # every n-th decoder layer checkpointed (2: half the recompute for about half the activation saving)
    **{f"alignkit_checkpointed_every{n}": ("alignkit", {"overrides": checkpointing(n)}) for n in (2, 3)},
    # selective checkpointing (alignkit.train.recompute): layers keep only matmul and attention outputs and recompute
    # norms, rotary embeddings, SiLU and residual adds; alone, or on the layers every-n full checkpointing leaves
    "alignkit_selective": ("alignkit", {"overrides": ["selective_checkpointing=true"]}),
    **{f"alignkit_checkpointed_every{n}_selective": ("alignkit", {"overrides": checkpointing(n, selective=True)})
       for n in (2, 3, 4, 6, 8)},
    # glibc's malloc never maps large blocks on their own (M_MMAP_MAX=0): every block comes from the heap, so freed
    # activation pages are reused rather than new pages mapped (tried on 2026-12-01, on both sides)
    "alignkit_checkpointed_every8_selective_heap_only": ("alignkit", {"overrides": checkpointing(8, selective=True),
                                                                      "env": {"MALLOC_MMAP_MAX_": "0"}}),
    "trl_default_heap_only": ("trl", {"env": {"MALLOC_MMAP_MAX_": "0"}}),
    # one glibc malloc arena for every thread (glibc's default allows 8 per core): tried on 2026-12-01
    "alignkit_selective_arena1": ("alignkit", {"overrides": ["selective_checkpointing=true"],
                                               "env": {"MALLOC_ARENA_MAX": "1"}}),
    "alignkit_checkpointed_dense": ("alignkit", {"overrides": ["activation_checkpointing=true"],
                                                 "env": {"ALIGNKIT_ATTENTION": "dense"}}),
    "alignkit_padded": ("alignkit", {"overrides": ["layout=padded"]}),
    # glibc's mmap threshold fixed at 4 MiB on either side (freed blocks leave the process); tried as alignkit's
    # default on 2026-12-01 and not adopted (bench/README.md)
    "alignkit_mmap_4m": ("alignkit", {"overrides": [], "env": {"MALLOC_MMAP_THRESHOLD_": "4194304"}}),
    "alignkit_checkpointed_every2_mmap_4m": ("alignkit", {"overrides": checkpointing(2),
                                                          "env": {"MALLOC_MMAP_THRESHOLD_": "4194304"}}),
    "trl_default_mmap_4m": ("trl", {"env": {"MALLOC_MMAP_THRESHOLD_": "4194304"}}),
    # packed rows cut at the batch's longest group (the default until 2026-12-01; now one row per batch)
    "alignkit_longest_rows": ("alignkit", {"overrides": ["pack_row_tokens=longest"]}),
    "trl_default": ("trl", {}),
    "trl_no_checkpointing": ("trl", {"gradient_checkpointing": False}),
    # the same glibc malloc setting on both sides: a fixed 1 MiB mmap threshold hands freed activations back to
    # the OS at once (by default the threshold rises with freed blocks and they stay resident in a fragmented heap)
    "alignkit_mmap_1m": ("alignkit", {"overrides": [], "env": {"MALLOC_MMAP_THRESHOLD_": "1048576"}}),
    "alignkit_checkpointed_mmap_1m": ("alignkit", {"overrides": ["activation_checkpointing=true"], "env": {
        "ALIGNKIT_ATTENTION": "dense", "MALLOC_MMAP_THRESHOLD_": "1048576"}}),
    "trl_default_mmap_1m": ("trl", {"env": {"MALLOC_MMAP_THRESHOLD_": "1048576"}}),
}
# alignkit first: TRL's worker copies the score head alignkit initialised
DEFAULT_CONFIGS = ["alignkit_default", "alignkit_checkpointed", "trl_default"]


def alignkit_config(args: argparse.Namespace, run_dir: Path, overrides: list[str]):
    from alignkit.train.config import load_config

    return load_config(None, [
        f"output_dir={run_dir}", "model.device=cpu", "model.dtype=float32", "progress=false",
        "lora.enabled=false", f"batch_size={args.batch_size}", f"max_steps={args.warmup + args.steps}",
        "eval_every=0", "save_every=0", "log_every=1", f"optim.learning_rate={args.lr}", "optim.scheduler=constant",
        "optim.warmup_steps=0", "optim.weight_decay=0.0", "optim.max_grad_norm=1.0",
        "objectives=[{name: bradley_terry}]", f"data.train={DATA}", "data.eval_fraction=0",
        f"data.max_train_examples={(args.warmup + args.steps) * args.batch_size}",
        f"data.max_length={args.max_length}", "data.on_invalid=skip", "seed=0", *overrides,
    ])


# ---------------------------------------------------------------- data (main process)


def prepare_data(args: argparse.Namespace, work: Path) -> dict:
    """alignkit's encoding of the pairs and its batch order: the rows TRL replays."""
    from alignkit.models import load_tokenizer
    from alignkit.train.batching import micro_batches
    from alignkit.train.methods.reward_model import BradleyTerryMethod

    config = alignkit_config(args, work / "prep", [])
    items, _ = BradleyTerryMethod(config).load(load_tokenizer(), work / "prep", lambda m: None)
    steps = args.warmup + args.steps
    order = [i for batch, _ in zip(micro_batches(config, items), range(steps), strict=False) for i in batch]
    rows = [{"chosen_ids": items[i].prompt + items[i].chosen, "rejected_ids": items[i].prompt + items[i].rejected}
            for i in order]
    batches = [rows[s:s + args.batch_size] for s in range(0, len(rows), args.batch_size)]
    # what each side feeds: TRL pads 2B rows of [prompt | response] to the longest; alignkit's packed
    # shared-prefix rows hold each prompt once and no padding
    padded = [2 * len(b) * max(len(r[k]) for r in b for k in ("chosen_ids", "rejected_ids")) for b in batches]
    unique = [sum(len(items[i].prompt) + len(items[i].chosen) + len(items[i].rejected)
                  for i in order[s:s + args.batch_size]) for s in range(0, len(order), args.batch_size)]
    return {"rows": rows, "tokens_per_step": unique, "padded_tokens_per_step": padded, "pairs": len(items),
            "longest_side": max(max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in rows)}


# ---------------------------------------------------------------- workers (one config per process)


def worker_alignkit(args: argparse.Namespace, work: Path, settings: dict, out_dir: Path) -> dict:
    from safetensors.torch import save_file

    from alignkit.train.loop import train
    from alignkit.train.methods.reward_model import BradleyTerryMethod

    marks: list[tuple[float, float]] = []
    resident: list[float] = []
    params: list[int] = []
    step, wrap = BradleyTerryMethod.step, BradleyTerryMethod.wrap_model

    def timed_step(self, *a, **k):  # one micro-step per optimizer step: step i runs from its mark to i+1's
        marks.append(mark())
        resident.append(resident_mb())
        return step(self, *a, **k)

    def saving_wrap(self, model):  # the head alignkit draws is the one TRL starts from
        classifier = wrap(self, model)
        if not (work / "score_init.safetensors").exists():  # the first alignkit config's (all draw it from seed 0)
            save_file({"weight": classifier.score.weight.detach().clone().contiguous()},
                      str(work / "score_init.safetensors"))
        params.append(sum(p.numel() for p in classifier.parameters()))
        return classifier

    BradleyTerryMethod.step, BradleyTerryMethod.wrap_model = timed_step, saving_wrap
    config = alignkit_config(args, out_dir / "run", settings["overrides"])
    setup = time.perf_counter()
    logs: list[str] = []
    # stop as if killed after the last step: the timed span ends there, not after writing final/ (~0.5 GB)
    train(config, log=logs.append, stop_after_steps=config.max_steps)
    marks.append(mark())
    lines = [json.loads(x) for x in (out_dir / "run" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if x["split"] == "train"]
    return {"losses": [x["loss"] for x in train_lines], "accuracies": [x["accuracy"] for x in train_lines],
            **durations(marks, len(marks)), "setup_seconds": marks[0][0] - setup, "log": logs[-6:], "params": params[0],
            "rss_at_step_start_mb": resident,
            "settings": {"overrides": settings["overrides"], "env": settings.get("env", {}), "lora": False}}


def worker_trl(args: argparse.Namespace, work: Path, settings: dict, out_dir: Path) -> dict:
    import torch
    from datasets import Dataset
    from safetensors.torch import load_file
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from alignkit.models import load_tokenizer
    from alignkit.models.loading import resolve_model_path

    rows = json.loads((work / "data.json").read_text())["rows"]
    setup = time.perf_counter()
    location, _ = resolve_model_path("smollm2-135m-instruct", log=lambda m: None)
    model = AutoModelForSequenceClassification.from_pretrained(location, num_labels=1, dtype=torch.float32)
    with torch.no_grad():
        model.score.weight.copy_(load_file(str(work / "score_init.safetensors"))["weight"])
    tokenizer = load_tokenizer()
    seen: list[tuple[float, float]] = []
    marks: list[tuple[float, float]] = []
    resident: list[float] = []

    class Trainer(RewardTrainer):
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset or self.train_dataset)  # rows are already in alignkit's order

        def training_step(self, *a, **k):  # marked as alignkit's step: each span holds one optimizer step
            marks.append(mark())
            resident.append(resident_mb())
            return super().training_step(*a, **k)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            seen.append((float(loss.detach()), self._metrics["train"]["accuracy"][-1]))
            return loss

    config = RewardConfig(
        output_dir=str(out_dir), per_device_train_batch_size=args.batch_size, max_length=args.max_length,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        max_steps=args.warmup + args.steps, logging_steps=1, save_strategy="no", report_to="none", bf16=False,
        use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0, dataloader_drop_last=True,
        **({"gradient_checkpointing": settings["gradient_checkpointing"]} if "gradient_checkpointing" in settings
           else {}))
    trainer = Trainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    init_seconds = time.perf_counter() - setup
    trainer.train()
    marks.append(mark())
    return {"losses": [s[0] for s in seen], "accuracies": [s[1] for s in seen], **durations(marks, len(marks)),
            "setup_seconds": init_seconds, "params": sum(p.numel() for p in model.parameters()),
            "rss_at_step_start_mb": resident,
            "settings": {"gradient_checkpointing": config.gradient_checkpointing, "bf16": config.bf16,
                         "env": settings.get("env", {}),
                         "optim": str(config.optim)}}


def resident_mb() -> float:
    """Resident set size now (VmRSS), MB: sampled at each step's start it shows memory the allocator keeps
    between steps, next to the peak."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def mark() -> tuple[float, float]:
    """(wall, CPU) seconds now; CPU time counts all threads of the process, the fairer figure when other jobs
    share the machine."""
    return time.perf_counter(), time.process_time()


WORKERS = {"alignkit": worker_alignkit, "trl": worker_trl}


def run_worker(args: argparse.Namespace) -> None:
    """One config in this process; prints its result as a ``RESULT {json}`` line. The builtin model comes from
    the usual cache (converted beforehand by the driver): a conversion here would count in the peak RSS."""
    import torch

    torch.set_num_threads(args.threads)
    kind, settings = CONFIGS[args.worker]
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-{args.worker}-"))
    try:
        result = WORKERS[kind](args, Path(args.work), settings, scratch)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- the driver


def summarise(name: str, result: dict, data: dict, args: argparse.Namespace, peak: float) -> dict:
    measured = slice(args.warmup, args.warmup + args.steps)
    seconds, cpu_seconds = sum(result["step_seconds"][measured]), sum(result["step_cpu_seconds"][measured])
    pairs = args.steps * args.batch_size
    useful_flops = 6 * result["params"] * sum(data["tokens_per_step"][measured]) / seconds
    return {
        "config": name, "settings": result["settings"],
        # useful work only (each prompt once, no padding, no recompute) against the fp32 matmul peak
        "useful_model_flops_per_s": useful_flops, "useful_fraction_of_matmul_peak": useful_flops / peak,
        "pairs_per_s": pairs / seconds, "pairs_per_cpu_s": pairs / cpu_seconds,
        "unique_tokens_per_s": sum(data["tokens_per_step"][measured]) / seconds,
        "step_seconds": result["step_seconds"], "step_cpu_seconds": result["step_cpu_seconds"],
        "setup_seconds": result["setup_seconds"], "peak_rss_mb": result["peak_rss_mb"],
        "rss_at_step_start_mb": result["rss_at_step_start_mb"],
        "losses": result["losses"], "accuracies": result["accuracies"], "log": result.get("log", []),
    }


def median_of_rounds(rounds: list[dict]) -> dict:
    """One row for a config run in several rounds: the medians of pairs/s and peak RSS, every round's figures
    beside them (losses are the same in every round: same ids, same seed)."""
    row = dict(rounds[0])
    for key in ("pairs_per_s", "pairs_per_cpu_s", "peak_rss_mb", "useful_model_flops_per_s",
                "useful_fraction_of_matmul_peak"):
        row[key] = statistics.median(r[key] for r in rounds)
    row["rounds"] = [{key: r[key] for key in ("pairs_per_s", "pairs_per_cpu_s", "peak_rss_mb", "step_seconds")}
                     for r in rounds]
    return row


def compare(rows: dict[str, dict], reference: str) -> None:
    base = rows[reference]
    for row in rows.values():
        for key in ("pairs_per_s", "peak_rss_mb"):  # paired within each round: both ran minutes apart
            row[f"rounds_{key}_vs_{reference}"] = [r[key] / b[key] for r, b in zip(
                row.get("rounds", [row]), base.get("rounds", [base]), strict=True)]
        row["max_abs_loss_diff_vs_" + reference] = max(abs(a - b) for a, b in zip(row["losses"], base["losses"],
                                                                                 strict=True))
        row["max_abs_accuracy_diff_vs_" + reference] = max(
            abs(a - b) for a, b in zip(row["accuracies"], base["accuracies"], strict=True))
        for key in ("pairs_per_s", "pairs_per_cpu_s", "peak_rss_mb"):
            row[f"{key}_vs_{reference}"] = row[key] / base[key]


# the options every worker gets too: name -> (default, help)
SHARED_OPTIONS = {"steps": (8, "measured steps (after --warmup)"), "warmup": (1, "untimed first steps"),
                  "batch_size": (4, "pairs per step"), "max_length": (512, "tokens per [prompt | response]"),
                  "lr": (1e-5, "learning rate (constant)"), "threads": (2, "torch threads per worker")}


def run_config(args: argparse.Namespace, work: Path, name: str) -> dict:
    """Run one config in its own process; its ``RESULT`` line."""
    shared = [f"--{key.replace('_', '-')}={getattr(args, key)}" for key in SHARED_OPTIONS]
    env = {**os.environ, **CONFIGS[name][1].get("env", {})}
    proc = subprocess.run([sys.executable, __file__, "--work", str(work), *shared, "--worker", name],
                          capture_output=True, text=True, cwd=REPO, env=env)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{name} failed")
    return json.loads(line[-1][len("RESULT "):])


def config_names(text: str) -> list[str]:
    names = text.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configs {unknown}; choose from {', '.join(CONFIGS)}")
    kinds = [CONFIGS[n][0] for n in names]
    if "trl" in kinds and "alignkit" not in kinds[:kinds.index("trl")]:
        raise SystemExit("put an alignkit config before the TRL ones (TRL starts from alignkit's initial head)")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for key, (default, text) in SHARED_OPTIONS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(default), default=default, help=text)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # set by the driver for its subprocesses
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "reward_throughput.json"))
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help=f"from {', '.join(CONFIGS)}; an alignkit config must come before any TRL one")
    parser.add_argument("--rounds", type=int, default=1, help="run the configs this many times in turn; report "
                        "medians (TRL's own pairs/s moved 0.267-0.315 between runs on one host)")
    args = parser.parse_args()
    if args.worker:
        return run_worker(args)
    names = config_names(args.configs)
    if not DATA.is_file():
        raise SystemExit(f"HH-RLHF pairs not found at {DATA}")
    from alignkit.models.loading import resolve_model_path

    resolve_model_path("smollm2-135m-instruct")  # GGUF -> safetensors once, outside the measured processes
    work = Path(tempfile.mkdtemp(prefix="bench-reward-"))
    data = prepare_data(args, work)
    (work / "data.json").write_text(json.dumps(data))
    peak = matmul_peak(args.threads)["fp32"]
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s", flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for round_index in range(args.rounds):  # configs alternate, so a slow spell of the host hits each of them
        for name in names:
            start = time.perf_counter()
            runs[name].append(row := summarise(name, run_config(args, work, name), data, args, peak))
            print(f"[round {round_index + 1}/{args.rounds}] {name}: {row['pairs_per_s']:.3f} pairs/s, "
                  f"{row['pairs_per_cpu_s']:.4f} pairs/cpu-s, peak RSS {row['peak_rss_mb']:.0f} MB "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    results = {name: median_of_rounds(rounds) for name, rounds in runs.items()}
    reference = next((n for n in names if n.startswith("trl_default")), names[-1])
    compare(results, reference)
    ours = next(n for n in names if n.startswith("alignkit"))
    speed, memory = results[ours][f"pairs_per_s_vs_{reference}"], results[ours][f"peak_rss_mb_vs_{reference}"]
    report = {
        "command": " ".join(["python", "bench/reward_throughput.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "fp32_matmul_peak_flops": peak,
                    "load_average_at_end": os.getloadavg()},
        "setup": {"model": "builtin smollm2-135m-instruct as AutoModelForSequenceClassification (num_labels=1)",
                  "objective": "bradley_terry", "pairs": data["pairs"], "batch_size": args.batch_size,
                  "max_length": args.max_length, "longest_side_tokens": data["longest_side"], "lr": args.lr,
                  "warmup_steps": args.warmup, "measured_steps": args.steps, "rounds": args.rounds,
                  "schedule": "constant", "precision": "fp32", "unique_tokens_per_step": data["tokens_per_step"],
                  "trl_padded_tokens_per_step": data["padded_tokens_per_step"]},
        "targets": {"pairs_per_s_ratio": {"target": ">= 3", "measured": speed, "met": speed >= 3},
                    "peak_rss_ratio": {"target": "<= 0.7", "measured": memory, "met": memory <= 0.7},
                    "max_abs_loss_diff": results[ours][f"max_abs_loss_diff_vs_{reference}"],
                    "compared": f"{ours} / {reference}",
                    "configs_meeting_both": [n for n, r in results.items() if n.startswith("alignkit")
                                             and r[f"pairs_per_s_vs_{reference}"] >= 3
                                             and r[f"peak_rss_mb_vs_{reference}"] <= 0.7]},
        "results": list(results.values()),
    }
    atomic_write_json(args.out, report)
    shutil.rmtree(work, ignore_errors=True)
    columns = [("pairs/s", "pairs_per_s", ".3f"), ("x TRL", f"pairs_per_s_vs_{reference}", ".2f"),
               ("pairs/cpu-s", "pairs_per_cpu_s", ".4f"), ("x TRL", f"pairs_per_cpu_s_vs_{reference}", ".2f"),
               ("RSS MB", "peak_rss_mb", ".0f"), ("x TRL", f"peak_rss_mb_vs_{reference}", ".2f"),
               ("max|dloss|", f"max_abs_loss_diff_vs_{reference}", ".2e"),
               ("useful MFU", "useful_fraction_of_matmul_peak", ".1%")]
    print(f"{'config':24}" + "".join(f" {header:>11}" for header, _, _ in columns))
    for row in results.values():
        print(f"{row['config']:24}" + "".join(f" {row[key]:>11{spec}}" for _, key, spec in columns))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
