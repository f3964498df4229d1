"""DPO training throughput: TRL's DPOTrainer against alignkit, side by side, in one invocation.

Every config runs in its own subprocess (so peak RSS is that config's own), on the same model (builtin
SmolLM2-135M via ``alignkit.models.load_model``), the same pairs in the same order and batches, the same
batch size, max length, learning rate, beta, constant schedule and fp32 (unless the config says bf16).

Identical tokens: TRL tokenizes conversational data itself; alignkit is handed exactly the token ids TRL
produces (alignkit's own encoder drops the newline the chat template puts after ``<|im_end|>``, which TRL
scores), so per-step losses compare the trainers, not the tokenizers. Identical order: alignkit's loop
draws micro-batches with ``alignkit.train.data.batch_order``; TRL is given a sampler that replays it
(``bench/trl_replay.py``, importable here because the script's own directory is on ``sys.path``).

Peers: every row is compared with ``trl_default`` (TRL's defaults: gradient checkpointing on) and, if run,
``trl_fastest`` (TRL's fastest exact configuration: precomputed reference log-probs, no checkpointing).

Cases (``--case``): ``hh`` (the first 256 HH pairs, ``--max-length``, default 512: key ``hh_512``) and
``long`` (prompts of >= 1,000 tokens, earlier HH dialogues' turns leading each prompt, built by
``bench/attention_segments.py``'s ``groups_for``, max length 2048: key ``long_2048``; both trainers get the
same token ids, TRL's own tokenisation is skipped there). ``both`` runs the two in one invocation.

    .venv/bin/python bench/dpo_throughput.py --steps 8            # writes bench/results/dpo_throughput.json
    .venv/bin/python bench/dpo_throughput.py --case both --long-steps 2

The JSON: ``command``, ``complete``, ``machine`` (``matmul_peak_flops`` for fp32 and bf16, measured in
the run), ``profile`` (how the time split is taken), ``cases`` ({case key: {``setup``, ``results``,
``bf16_loss_effect``, ``summary``}}) and, for files before the cases, the first case's ``setup``,
``results`` and ``bf16_loss_effect`` again at the top level. A result row keeps the older fields
(``pairs_per_s``, ``step_seconds``, ``losses``, ``peak_rss_mb``, ``fraction_of_matmul_peak``: of the
peak of the row's own precision, ...) and adds:

- ``pairs_per_s_vs_<peer>``, ``pairs_per_cpu_s_vs_<peer>``, ``peak_rss_vs_<peer>``,
  ``max_abs_loss_diff_vs_<peer>`` for each peer (``trl_default``, ``trl_fastest``);
- ``profile``: one extra step after the timed ones under ``torch.profiler`` (``--profile``, the default;
  ``bench/dpo_measure.py`` says how each bucket is decided): ``shares`` and ``seconds`` of self CPU time
  in ``attention``, ``linear``, ``lm_head``, ``optimizer``, ``other``, ``wall_seconds``, ``top_ops``. It is
  not in ``step_seconds``/``losses``; ``peak_rss_mb`` is the peak before it (``peak_rss_mb_at_exit`` after);
- ``summary`` per case: per row its pairs/s ratios to the peers, its fraction of the matmul peak and its
  time split shares.
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
LONG_MAX_LENGTH = 2048  # what attention_segments.groups_for builds its long prompts for

# name -> (trainer, settings). alignkit settings are TrainConfig overrides on top of the common ones.
CONFIGS: dict[str, tuple[str, dict]] = {
    "trl_default": ("trl", {}),
    "trl_precompute_ref": ("trl", {"precompute_ref_log_probs": True}),
    # TRL's fastest exact configuration: its default turns gradient checkpointing on
    "trl_fastest": ("trl", {"precompute_ref_log_probs": True, "gradient_checkpointing": False}),
    "alignkit_default": ("alignkit", {"overrides": []}),
    "alignkit_packed": ("alignkit", {"overrides": ["packing=true"]}),  # the default since 2026-11-25
    # packed rows cut at the batch's longest group (the default until 2026-12-01; now one row per batch)
    "alignkit_longest_rows": ("alignkit", {"overrides": ["pack_row_tokens=longest"]}),
    # glibc's mmap threshold fixed at 4 MiB (freed blocks leave the process): measured 2026-12-01 as a default, 9%
    # slower for 4% less memory, so not adopted (bench/README.md, run 6)
    "alignkit_mmap_4m": ("alignkit", {"overrides": [], "env": {"MALLOC_MMAP_THRESHOLD_": "4194304"}}),
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
# alignkit_packed_precomputed_ref rather than alignkit_precomputed_ref (the same now that packing is the
# default): its name means the same in older result files
DEFAULT_CONFIGS = ["trl_default", "trl_fastest", "alignkit_default", "alignkit_packed_precomputed_ref",
                   "alignkit_bf16", "alignkit_shared_prefix", "trl_precompute_ref", "alignkit_checkpointed"]
PEERS = ("trl_default", "trl_fastest")  # every row's ratios are taken against those of these that ran


def bench_model(spec: str):
    """(model, tokenizer) on CPU in fp32: a ``load_model`` spec, or ``tiny`` (a 2-layer Llama with SmolLM2's
    tokenizer, for smoke tests of the script only)."""
    from alignkit.models import load_model, load_tokenizer, tiny_llama

    if spec == "tiny":
        tokenizer = load_tokenizer(log=lambda m: None)
        return tiny_llama(tokenizer), tokenizer
    return load_model(spec, dtype="float32", device="cpu", log=lambda m: None)


def bench_tokenizer(spec: str):
    from alignkit.models import load_tokenizer

    return load_tokenizer(log=lambda m: None) if spec == "tiny" else load_tokenizer(spec, log=lambda m: None)


# ---------------------------------------------------------------- data


def prepare_data(args: argparse.Namespace, case: dict, path: Path) -> dict:
    """The case's pairs (TRL's rows and both trainers' token ids) and the batch order, written to ``path``.
    The order has one batch more than the timed steps when a step is profiled (the next epoch's first)."""
    from trl_replay import replay_order

    n = (args.warmup + case["steps"]) * args.batch_size
    rows, ids = (hh_pairs if case["kind"] == "hh" else long_pairs)(args, n, case["max_length"], path)
    order = replay_order(n, args.batch_size, args.warmup + case["steps"] + int(args.profile))
    data = {"rows": rows, "ids": ids, "order": order}
    path.write_text(json.dumps(data))
    return data


def hh_pairs(args: argparse.Namespace, n: int, max_length: int, path: Path) -> tuple[list[dict], list[dict]]:
    """The first pairs of the 256, as TRL conversational rows and as TRL's own token ids."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from alignkit.data import load_records

    records = load_records(DATA, kind="pair", on_invalid="skip", log=None).records[:256]
    if n > len(records):
        raise SystemExit(f"--steps needs {n} pairs, only {len(records)} in the 256")

    def messages(text, role):
        return [{"role": role, "content": text}] if isinstance(text, str) else [m.model_dump() for m in text]

    rows = [{"prompt": messages(r.prompt, "user"), "chosen": messages(r.chosen, "assistant"),
             "rejected": messages(r.rejected, "assistant")} for r in records[:n]]
    tokenizer = bench_tokenizer(args.model)
    targs = DPOConfig(output_dir=str(path.parent / "prep"), max_length=max_length, report_to=[], bf16=False,
                      use_cpu=True)
    # the trainer's own preparation (chat template, prompt/completion split); it reads nothing from `self`
    prepared = DPOTrainer._prepare_dataset(None, Dataset.from_list(rows), tokenizer, targs, "train")
    if len(prepared) != n:
        raise SystemExit("TRL dropped pairs whose prompt fills max_length; pick other pairs")
    ids = []
    for ex in prepared:
        room = max_length - len(ex["prompt_ids"])  # TRL's collator keeps the start of [prompt | response]
        ids.append({"prompt": ex["prompt_ids"], "chosen": ex["chosen_ids"][:room],
                    "rejected": ex["rejected_ids"][:room]})
    return rows, ids


def long_pairs(args: argparse.Namespace, n: int, max_length: int, path: Path) -> tuple[list[dict], list[dict]]:
    """Pairs with prompts of >= 1,000 tokens (earlier HH dialogues' turns lead each prompt, cut to fit
    2048), from ``bench/attention_segments.py``. Token ids for both: TRL's rows are already tokenised."""
    from attention_segments import groups_for

    from alignkit.data import load_records

    assert max_length == LONG_MAX_LENGTH
    records = load_records(DATA, kind="pair", on_invalid="skip", log=None).records
    groups = groups_for("long_prompt", bench_tokenizer(args.model), records, n)
    if len(groups) < n:
        raise SystemExit(f"the long case needs {n} pairs, the HH data makes {len(groups)}")
    ids = [{"prompt": prompt, "chosen": chosen, "rejected": rejected} for prompt, (chosen, rejected) in groups]
    rows = [{"prompt_ids": x["prompt"], "chosen_ids": x["chosen"], "rejected_ids": x["rejected"]} for x in ids]
    return rows, ids


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
    from dpo_measure import StepProfiler, durations
    from transformers import TrainerCallback
    from trl import DPOConfig
    from trl_replay import replay_trainer

    model, tokenizer = bench_model(args.model)
    losses: list[float] = []
    marks: list[float] = []
    Trainer = replay_trainer(data["order"], lambda trainer, loss: losses.append(loss))  # noqa: N806 - a class
    if "prompt_ids" in data["rows"][0]:  # already token ids (the long case): TRL's tokenisation is skipped
        Trainer._prepare_dataset = lambda self, dataset, *rest: dataset
    timed = args.warmup + args.steps
    profiler = StepProfiler() if args.profile else None

    class Clock(TrainerCallback):
        def on_step_begin(self, _args, state, control, **kwargs):
            if not marks:
                marks.append((time.perf_counter(), time.process_time()))
            if profiler and state.global_step == timed:  # the step after the timed ones
                profiler.start()

        def on_step_end(self, *a, **k):
            if profiler:
                profiler.stop()  # a no-op unless it runs
            marks.append((time.perf_counter(), time.process_time()))

    checkpointing = {k: settings[k] for k in ("gradient_checkpointing",) if k in settings}  # else TRL's default
    config = DPOConfig(
        output_dir=str(out_dir), per_device_train_batch_size=args.batch_size, max_length=args.max_length,
        learning_rate=args.lr, beta=args.beta, bf16=settings.get("bf16", False), use_cpu=True,
        max_steps=timed + int(args.profile), lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
        report_to=[], disable_tqdm=True, seed=0, dataloader_num_workers=0,
        precompute_ref_log_probs=settings.get("precompute_ref_log_probs", False), **checkpointing,
    )
    setup = time.perf_counter()
    ref = None if config.precompute_ref_log_probs else copy.deepcopy(model)
    trainer = Trainer(model=model, ref_model=ref, args=config, train_dataset=Dataset.from_list(data["rows"]),
                      processing_class=tokenizer, callbacks=[Clock()])
    init_seconds = time.perf_counter() - setup  # includes the reference precompute when enabled
    trainer.train()
    return {"losses": losses[:timed], **durations(marks, timed), "setup_seconds": init_seconds,
            "settings": {"gradient_checkpointing": config.gradient_checkpointing, "bf16": config.bf16,
                         **settings},
            **StepProfiler.result(profiler, model, "TrainerCallback.on_step_begin to on_step_end")}


def worker_alignkit(args: argparse.Namespace, data: dict, settings: dict, out_dir: Path) -> dict:
    from dpo_measure import StepProfiler, durations

    import alignkit.train.methods.preference as preference
    from alignkit.data.tokenize import EncodedPair
    from alignkit.train.config import load_config
    from alignkit.train.loop import train

    model, tokenizer = bench_model(args.model)  # from the bench's cache
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
    timed = args.warmup + args.steps
    profiler = StepProfiler() if args.profile else None

    def timed_step(self, *a, **k):  # one micro-step per optimizer step here: step i runs from its start to i+1's
        marks.append((time.perf_counter(), time.process_time()))
        if profiler and len(marks) == timed + 1:  # the step after the timed ones
            profiler.start()
        return step(self, *a, **k)

    preference.PreferenceMethod.step = timed_step
    logs: list[str] = []
    steps = timed + int(args.profile)
    config = load_config(None, [
        f"output_dir={out_dir / 'run'}", "model.device=cpu", "progress=false", "lora.enabled=false",
        "reference=copy", f"batch_size={args.batch_size}", f"max_steps={steps}", "eval_every=0", "save_every=0",
        f"optim.learning_rate={args.lr}", "optim.scheduler=constant", "optim.max_grad_norm=1.0",
        f"objectives=[{{name: dpo, beta: {args.beta}}}]", f"data.max_length={args.max_length}", "seed=0",
        *settings["overrides"],
    ])
    assert n == timed * args.batch_size
    setup = time.perf_counter()
    train(config, model=model, tokenizer=tokenizer, log=logs.append, stop_after_steps=steps)
    if profiler:
        profiler.stop()
    marks.append((time.perf_counter(), time.process_time()))
    lines = [json.loads(x) for x in (out_dir / "run" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if x["split"] == "train"]
    return {"losses": [x["loss"] for x in train_lines][:timed], **durations(marks, timed),
            "setup_seconds": marks[0][0] - setup, "log": logs,
            "settings": {"overrides": settings["overrides"], "lora": False,
                         "activation_checkpointing": "activation_checkpointing=true" in settings["overrides"]},
            **StepProfiler.result(profiler, model, "the step's PreferenceMethod.step call to train()'s return")}


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
    result["peak_rss_mb_at_exit"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if result.get("peak_rss_mb") is None:  # not profiled: the whole run's peak, as before
        result["peak_rss_mb"] = result["peak_rss_mb_at_exit"]
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- the driver


def summarise(name: str, result: dict, tokens: list[dict], args: argparse.Namespace, steps: int, params: int,
              peak: dict) -> dict:
    measured = slice(args.warmup, args.warmup + steps)
    seconds = sum(result["step_seconds"][measured])
    cpu_seconds = sum(result["step_cpu_seconds"][measured])
    unique = sum(t["unique"] for t in tokens[measured])
    pairs = steps * args.batch_size
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
        "peak_rss_mb": result["peak_rss_mb"], "peak_rss_mb_at_exit": result.get("peak_rss_mb_at_exit"),
        "losses": result["losses"],
        # against the matmul peak of the row's own precision
        "model_flops_per_s": model_flops, "fraction_of_matmul_peak": model_flops / peak[precision],
        # per CPU-second x threads: what the run would reach with the cores to itself
        "model_flops_per_s_cpu_time": 6 * params * unique / cpu_seconds * args.threads,
        "fraction_of_matmul_peak_cpu_time": 6 * params * unique / cpu_seconds * args.threads / peak[precision],
        "profile": result.get("profile"),
        "log": result.get("log", [])[-5:],
    }


def compare_with_peers(rows: dict[str, dict], names: list[str], steps: int) -> list[str]:
    """Adds each row's ratios to every peer that ran (the first config when none did); returns the peers."""
    peers = [n for n in PEERS if n in rows] or [names[0]]
    for peer in peers:
        for row in rows.values():
            row["max_abs_loss_diff_vs_" + peer] = max(abs(a - b) for a, b in zip(
                row["losses"][:steps], rows[peer]["losses"][:steps], strict=True))
            row["pairs_per_s_vs_" + peer] = row["pairs_per_s"] / rows[peer]["pairs_per_s"]
            row["pairs_per_cpu_s_vs_" + peer] = row["pairs_per_cpu_s"] / rows[peer]["pairs_per_cpu_s"]
            row["peak_rss_vs_" + peer] = row["peak_rss_mb"] / rows[peer]["peak_rss_mb"]
    return peers


def run_case(args: argparse.Namespace, case: dict, names: list[str], stored: dict, peak: dict, params: int,
             work: Path, partial: dict) -> dict:
    """Every config of one case in its own subprocess (``--rounds`` alternations, the best kept); the case's
    block of the report."""
    data_path = work / f"data_{case['key']}.json"
    data = prepare_data(args, case, data_path)
    steps = case["steps"]
    tokens = step_tokens(data["ids"], data["order"], args.batch_size)[:args.warmup + steps]  # not the profiled
    base = [sys.executable, __file__, "--data", str(data_path), f"--steps={steps}",
            f"--max-length={case['max_length']}", f"--model={args.model}",
            "--profile" if args.profile else "--no-profile", *[
                f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("warmup", "batch_size", "lr", "beta",
                                                                         "threads")]]
    results: dict[str, dict] = partial.setdefault(case["key"], {})
    if args.from_partial:
        results.update({n: stored[n] for n in names})
    for round_index in range(0 if args.from_partial else args.rounds):
        for name in names:  # alternate configs so load from other processes spreads over all of them
            start = time.perf_counter()
            proc = subprocess.run([*base, "--worker", name], capture_output=True, text=True, cwd=REPO)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{case['key']} {name} failed")
            result = json.loads(line[-1][len("RESULT "):])
            measured = sum(result["step_seconds"][args.warmup:])
            print(f"{case['key']} round {round_index} {name}: {steps * args.batch_size / measured:.3f} pairs/s, "
                  f"{steps * args.batch_size / sum(result['step_cpu_seconds'][args.warmup:]):.4f} pairs/cpu-s, "
                  f"peak RSS {result['peak_rss_mb']:.0f} MB ({time.perf_counter() - start:.0f} s)", flush=True)
            keep = results.get(name)
            if keep is None or measured < sum(keep["step_seconds"][args.warmup:]):
                results[name] = result
            Path(args.out + ".partial").write_text(json.dumps({"cases": partial}))  # survives an interruption
    rows = {name: summarise(name, results[name], tokens, args, steps, params, peak) for name in names}
    peers = compare_with_peers(rows, names, args.warmup + steps)
    bf16 = [n for n in names if rows[n]["precision"] == "bf16"]
    fp32 = next((n for n in names if n.startswith("alignkit") and rows[n]["precision"] == "fp32"), None)
    print_table(case["key"], rows, peers)
    return {
        "setup": {"case": case["key"], "model": args.model, "params": params, "pairs": len(data["ids"]),
                  "batch_size": args.batch_size, "max_length": case["max_length"], "lr": args.lr, "beta": args.beta,
                  "warmup_steps": args.warmup, "measured_steps": steps, "schedule": "constant",
                  "profiled_steps": int(args.profile),
                  "flops_formula": "6 * params * unique tokens (prompt once + chosen + rejected) per second",
                  "tokens_per_step": tokens},
        "bf16_loss_effect": {n: max(abs(a - b) for a, b in zip(rows[n]["losses"], rows[fp32]["losses"], strict=True))
                             for n in bf16} if fp32 else {},
        "summary": {n: {**{f"pairs_per_s_vs_{p}": r[f"pairs_per_s_vs_{p}"] for p in peers},
                        "fraction_of_matmul_peak": r["fraction_of_matmul_peak"],
                        "time_split": (r["profile"] or {}).get("shares")} for n, r in rows.items()},
        "results": list(rows.values()),
    }


def print_table(key: str, rows: dict[str, dict], peers: list[str]) -> None:
    from dpo_measure import print_split

    ratio_heads = "".join(f" {'x ' + p.removeprefix('trl_'):>9}" for p in peers)
    print(f"\n{key}\n{'config':38} {'prec':5} {'pairs/s':>8}{ratio_heads} {'pairs/cpu-s':>11} {'uniq tok/s':>10} "
          f"{'RSS MB':>7} {'x TRL':>6} {'max|dloss|':>10} {'MFU':>6} {'MFU(cpu)':>8}")
    for r in rows.values():
        ratios = "".join(f" {r['pairs_per_s_vs_' + p]:9.2f}" for p in peers)
        print(f"{r['config']:38} {r['precision']:5} {r['pairs_per_s']:8.3f}{ratios} {r['pairs_per_cpu_s']:11.4f} "
              f"{r['unique_tokens_per_s']:10.1f} {r['peak_rss_mb']:7.0f} {r['peak_rss_vs_' + peers[0]]:6.2f} "
              f"{r['max_abs_loss_diff_vs_' + peers[0]]:10.2e} {r['fraction_of_matmul_peak']:6.1%} "
              f"{r['fraction_of_matmul_peak_cpu_time']:8.1%}")
    print_split(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="measured steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512, help="of the hh case (the long case's is 2048)")
    parser.add_argument("--lr", type=float, default=1e-6, help="TRL's default DPO learning rate")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="repeat the alternation; the best round is kept")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help=f"from {', '.join(CONFIGS)}")
    parser.add_argument("--case", choices=["hh", "long", "both"], default="hh",
                        help="hh: HH pairs at --max-length; long: prompts >= 1,000 tokens at 2048; both")
    parser.add_argument("--long-steps", type=int, default=2, help="measured steps of the long case")
    parser.add_argument("--long-configs", help="configs of the long case (default: --configs)")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                        help="profile one extra step after the timed ones (time split per config)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "dpo_throughput.json"))
    parser.add_argument("--from-partial", action="store_true",
                        help="write the report from the .partial results of an interrupted run (same options)")
    parser.add_argument("--model", default="smollm2-135m-instruct", help=argparse.SUPPRESS)  # "tiny": smoke tests
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_worker(args)

    cases = [{"kind": "hh", "key": f"hh_{args.max_length}", "steps": args.steps, "max_length": args.max_length,
              "configs": args.configs.split(",")},
             {"kind": "long", "key": f"long_{LONG_MAX_LENGTH}", "steps": args.long_steps,
              "max_length": LONG_MAX_LENGTH, "configs": (args.long_configs or args.configs).split(",")}]
    cases = [c for c in cases if args.case in (c["kind"], "both")]
    stored: dict[str, dict] = {}
    if args.from_partial:
        stored = json.loads(Path(args.out + ".partial").read_text())
        # older partial files hold one case's results, without the cases level
        stored = stored["cases"] if "cases" in stored else {cases[0]["key"]: stored.get("results", stored)}
        for case in cases:
            case["configs"] = [n for n in case["configs"] if n in stored.get(case["key"], {})]
        cases = [c for c in cases if c["configs"]]
        if not cases:
            raise SystemExit(f"no results of these configs in {args.out}.partial")
    unknown = [n for case in cases for n in case["configs"] if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configs {unknown}")
    # This process and the workers (they inherit the environment) keep alignkit's cache (the converted model,
    # reference log-probs) in a fresh directory: the user's ~/.cache/alignkit is never read or written, and a
    # stale reference cache cannot flatter a row. Removed at the end, and at exit on failure.
    cache = tempfile.TemporaryDirectory(prefix="bench-dpo-cache-")
    os.environ["ALIGNKIT_CACHE"] = cache.name
    work = Path(tempfile.mkdtemp(prefix="bench-dpo-"))
    from dpo_measure import matmul_peak

    peak = matmul_peak(args.threads)
    print(f"matmul peak: fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    model, _ = bench_model(args.model)
    params = sum(p.numel() for p in model.parameters())
    del model
    partial: dict[str, dict] = {}
    blocks = {case["key"]: run_case(args, case, case["configs"], stored.get(case["key"], {}), peak, params, work,
                                    partial) for case in cases}
    first = blocks[cases[0]["key"]]
    report = {
        "command": " ".join(["python", "bench/dpo_throughput.py", *sys.argv[1:]]),
        "complete": not args.from_partial,
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "matmul_peak_flops": peak,
                    "load_average_at_end": os.getloadavg()},
        "profile": {"enabled": args.profile,
                    "what": "one extra step after the timed ones (the next epoch's first batch) under torch.profiler "
                            "(CPU, record_shapes); self CPU time per bucket, rules in bench/dpo_measure.py"},
        # the first case's blocks at the top level, as files before the cases had them
        "setup": first["setup"], "bf16_loss_effect": first["bf16_loss_effect"], "results": first["results"],
        "cases": blocks,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    Path(args.out + ".partial").unlink(missing_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    cache.cleanup()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
