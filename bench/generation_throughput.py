"""Best-of-N sampling throughput: the engine's one-prefill generator against transformers' ``generate``.

On the builtin SmolLM2-135M (fp32), the same prompts (held-out synthetic tasks, alignkit's chat encoding), the
same N and lengths (every row decodes exactly ``--max-new-tokens`` tokens: no early stop, so token counts are
equal and tokens/s compare like for like), three ways of drawing N samples per prompt:

* ``engine``: ``alignkit.engine.generation.sample_ids(n=N)``: each prompt prefilled once, its KV cache
  repeated N times;
* ``hf_nrs``: ``model.generate(num_return_sequences=N)`` (transformers expands the *input* N times, so the
  prompt is prefilled N times);
* ``hf_loop``: N separate ``model.generate`` calls, one sample per prompt each.

Each method runs in its own subprocess (so its peak RSS is its own: ``VmHWM`` reset before every N where the
kernel allows, else the process peak), methods alternate round by round so load from other processes hits all
alike, and tokens/s and peak memory are reported as ratios to ``engine``. Greedy outputs of the engine and
``generate`` are compared token for token on the same prompts.

    .venv/bin/python bench/generation_throughput.py      # writes bench/results/generation_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("engine", "hf_nrs", "hf_loop")


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB -> MB
    return float("nan")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(method: str, args: argparse.Namespace) -> dict:
    import torch

    from alignkit.data.synthetic import make_synthetic
    from alignkit.data.tokenize import PromptEncoder
    from alignkit.engine.generation import SamplingParams, _left_pad, sample_ids
    from alignkit.models import load_model

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, device="cpu", log=lambda m: None)
    model.eval().requires_grad_(False)
    encoder = PromptEncoder(tokenizer)
    prompts = [encoder.encode_prompt(p.prompt) for p in make_synthetic(0, args.prompts, seed=args.seed)[1]]
    pad = tokenizer.pad_token_id
    ids, mask = _left_pad(prompts, pad)
    length = args.max_new_tokens

    eos = tokenizer.eos_token_id

    def until_eos(row: list[int]) -> list[int]:
        return row[:row.index(eos) + 1] if eos in row else row

    def run(n: int, greedy: bool = False) -> list[list[int]]:
        """Sampling: exactly ``length`` tokens per row (no EOS stop on either side); greedy: stop at EOS."""
        if method == "engine":
            params = SamplingParams(max_new_tokens=length, do_sample=not greedy, seed=args.seed)
            out = sample_ids(model, prompts, params, n, eos_token_id=eos if greedy else None, pad_token_id=pad,
                             batch_size=len(prompts))
            return [r for rs in out.responses for r in rs]
        if greedy:
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=length, do_sample=False,
                                     pad_token_id=pad, eos_token_id=eos)
            return [until_eos(r) for r in out[:, ids.shape[1]:].tolist()]
        # HF suppresses EOS below min_new_tokens, the engine with no EOS id samples it as any token: equal lengths
        kwargs = dict(max_new_tokens=length, min_new_tokens=length, pad_token_id=pad, do_sample=True, top_k=0,
                      top_p=1.0, temperature=1.0)
        torch.manual_seed(args.seed)
        with torch.no_grad():
            if method == "hf_nrs":
                out = model.generate(input_ids=ids, attention_mask=mask, num_return_sequences=n, **kwargs)
                return out[:, ids.shape[1]:].tolist()
            rows = [model.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, ids.shape[1]:] for _ in range(n)]
            return torch.stack(rows, 1).flatten(0, 1).tolist()

    run(1)  # warm-up
    result: dict = {"method": method, "rss_after_load_mb": _status("VmRSS"), "runs": {}}
    for n in args.n:
        exact_peak = _reset_peak()
        start_rss = _status("VmRSS")
        t0 = time.perf_counter()
        rows = run(n)
        seconds = time.perf_counter() - t0
        tokens = sum(len(r) for r in rows)
        result["runs"][str(n)] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
                                  "peak_rss_mb": _status("VmHWM"), "peak_is_per_run": exact_peak,
                                  "rss_before_mb": start_rss}
    result["greedy"] = run(1, greedy=True)
    return result


def main() -> None:
    from alignkit.io import atomic_write_json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=1, help="rounds of all methods (results averaged)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="builtin name or model directory")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "generation_throughput.json"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return

    started = time.perf_counter()
    passed = ["--prompts", str(args.prompts), "--n", *map(str, args.n), "--max-new-tokens", str(args.max_new_tokens),
              "--threads", str(args.threads), "--seed", str(args.seed), "--model", args.model]
    results: dict[str, list[dict]] = {m: [] for m in METHODS}
    for round_ in range(args.rounds):
        for method in METHODS if round_ % 2 == 0 else METHODS[::-1]:
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, "--worker", method, *passed], capture_output=True,
                                 text=True, check=True, cwd=REPO)
            results[method].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {round_ + 1} {method}: {time.perf_counter() - t0:.0f} s", flush=True)

    table: dict[str, dict] = {}
    for n in map(str, args.n):
        row = {}
        for method in METHODS:
            runs = [r["runs"][n] for r in results[method]]
            row[method] = {"tokens_per_s": sum(r["tokens_per_s"] for r in runs) / len(runs),
                           "seconds": sum(r["seconds"] for r in runs) / len(runs), "tokens": runs[0]["tokens"],
                           "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                           "peak_above_load_mb": max(r["peak_rss_mb"] - r0["rss_after_load_mb"]
                                                     for r, r0 in zip(runs, results[method], strict=True))}
        for method in METHODS:
            row[method]["tokens_per_s_vs_engine"] = row[method]["tokens_per_s"] / row["engine"]["tokens_per_s"]
            row[method]["peak_rss_vs_engine"] = row[method]["peak_rss_mb"] / row["engine"]["peak_rss_mb"]
            base = row["engine"]["peak_above_load_mb"]  # None when too small to divide by
            row[method]["peak_above_load_vs_engine"] = row[method]["peak_above_load_mb"] / base if base >= 1 else None
        row["engine_speedup_vs_hf_nrs"] = row["engine"]["tokens_per_s"] / row["hf_nrs"]["tokens_per_s"]
        row["engine_speedup_vs_hf_loop"] = row["engine"]["tokens_per_s"] / row["hf_loop"]["tokens_per_s"]
        table[n] = row
    greedy_engine = results["engine"][0]["greedy"]
    greedy_hf = results["hf_nrs"][0]["greedy"]
    summary = {
        "command": "python bench/generation_throughput.py " + " ".join(passed),
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "load_average_at_end": os.getloadavg()},
        "model": f"{args.model} (fp32)", "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds, "by_n": table,
        "greedy_identical_rows": sum(a == b for a, b in zip(greedy_engine, greedy_hf, strict=True)),
        "greedy_rows": len(greedy_engine),
        "peak_is_per_run": all(r["runs"][n]["peak_is_per_run"] for m in METHODS for r in results[m]
                               for n in r["runs"]),
        "seconds_total": time.perf_counter() - started,
    }
    atomic_write_json(args.out, summary)
    for n, row in table.items():
        print(f"N={n}: " + "  ".join(f"{m} {row[m]['tokens_per_s']:.0f} tok/s ({row[m]['tokens_per_s_vs_engine']:.2f}x"
                                     f", peak {row[m]['peak_rss_mb']:.0f} MB)" for m in METHODS))
    print(f"greedy identical: {summary['greedy_identical_rows']}/{summary['greedy_rows']}; wrote {args.out}")


if __name__ == "__main__":
    main()
