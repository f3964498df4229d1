"""Per-segment attention against the dense 4-D mask, side by side in one invocation, on the builtin SmolLM2.

Two cases built from the shared HH-RLHF pairs: the DPO bench's (a prompt and its two responses per group,
max length 512) and a long-prompt one (several dialogues' turns concatenated into prompts of >= 1,000
tokens, max length 2048), where the dense mask wastes most: it scores every query of a row against every
key. Each step is one forward + backward of the policy log-probs of a batch of pairs (what a DPO step
costs without the reference), shared-prefix layout, fp32. The two paths alternate step by step so drift
on a shared machine hits both alike; the log-probs of both are compared on every batch.

    .venv/bin/python bench/attention_segments.py        # writes bench/results/attention_segments.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-test-first1000.jsonl.gz"


def groups_for(case: str, tokenizer, records, count: int) -> list[tuple[list[int], list[list[int]]]]:
    from alignkit.data.tokenize import PromptEncoder

    encoder = PromptEncoder(tokenizer)
    max_length, min_prompt = (512, 0) if case == "hh" else (2048, 1000)
    out, i = [], 0
    while len(out) < count and i < len(records):
        prompt = encoder.encode_prompt(records[i].prompt)
        j = i + 1
        while len(prompt) < min_prompt and j < len(records):  # earlier dialogues' turns lead the prompt
            prompt = encoder.encode_prompt(records[j].prompt) + prompt
            j += 1
        responses = [encoder.encode_response(records[i].prompt, r) for r in (records[i].chosen, records[i].rejected)]
        budget = max_length - max(len(r) for r in responses)
        out.append((prompt[-budget:], responses))
        i = j
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "attention_segments.json")
    args = parser.parse_args()
    if not DATA.is_file():
        raise SystemExit(f"needs the shared HH-RLHF pairs at {DATA}")
    torch.set_num_threads(args.threads)
    from alignkit.data import load_records
    from alignkit.engine.exactness import layout_support
    from alignkit.engine.layouts import build_groups
    from alignkit.engine.logprobs import sequence_logps
    from alignkit.models import load_model

    model, tokenizer = load_model("smollm2-135m-instruct", log=lambda *_: None)
    assert layout_support(model, tokenizer.pad_token_id) is None
    records = load_records(DATA, kind="pair", on_invalid="skip", log=None).records
    results = {"machine": platform.machine(), "threads": args.threads, "torch": torch.__version__,
               "batch_size": args.batch_size, "steps": args.steps, "cases": {}}
    for case in ("hh", "long_prompt"):
        data = groups_for(case, tokenizer, records, (args.steps + 1) * args.batch_size)
        times: dict[str, list[float]] = {"dense": [], "segments": []}
        gap = 0.0
        for step in range(args.steps + 1):  # step 0 warms up both paths
            batch = build_groups(data[step * args.batch_size:(step + 1) * args.batch_size], tokenizer.pad_token_id)
            logps = {}
            for attention in ("dense", "segments") if step % 2 else ("segments", "dense"):
                model.zero_grad(set_to_none=True)
                start = time.perf_counter()
                out = sequence_logps(model, batch, attention=attention).logps
                out.sum().backward()
                if step:
                    times[attention].append(time.perf_counter() - start)
                logps[attention] = out.detach()
            gap = max(gap, float((logps["dense"] - logps["segments"]).abs().max()))
        tokens = [sum(len(p) + sum(len(r) for r in rs) for p, rs in data[i * args.batch_size:(i + 1) * args.batch_size])
                  for i in range(1, args.steps + 1)]
        mean_prompt = statistics.mean(len(p) for p, _ in data)
        row = {name: {"seconds_per_step": statistics.median(values),
                      "pairs_per_second": args.batch_size / statistics.median(values)}
               for name, values in times.items()}
        row.update(mean_prompt_tokens=round(mean_prompt, 1), mean_tokens_per_step=statistics.mean(tokens),
                   max_abs_logp_difference=gap,
                   speedup_segments_over_dense=row["dense"]["seconds_per_step"] / row["segments"]["seconds_per_step"])
        results["cases"][case] = row
        print(case, json.dumps(row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
