"""Ranking-accuracy scoring throughput: alignkit's shared-prefix no-grad log-probs against a plain forward.

Both score the same pairs of the HH-RLHF sample (alignkit's own encoding, max length 512) with the builtin
SmolLM2-135M in fp32: "plain" runs one transformers forward per pair ([prompt|chosen] and [prompt|rejected]
padded into a batch of two) and takes log_softmax over the full logits; alignkit lays ``--batch-size``
pairs out as [prompt | chosen | rejected] rows (optionally packed), projects only response positions, in
chunks. The two alternate chunk by chunk, so load from other processes hits both alike. The script checks
that both give the same log-probs and ranking decisions.

    .venv/bin/python bench/eval_throughput.py --pairs 64     # writes bench/results/eval_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-test-first1000.jsonl.gz"


def plain_pair_logps(model, prompt: list[int], responses: list[list[int]], pad_id: int) -> torch.Tensor:
    rows = [prompt + r for r in responses]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    out = []
    for i, response in enumerate(responses):
        start = len(prompt)
        positions = torch.arange(start - 1, start - 1 + len(response))
        out.append(logprobs[i, positions, torch.tensor(response)].sum())
    return torch.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per alignkit forward")
    parser.add_argument("--chunk", type=int, default=16, help="pairs per alternation")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pack", action="store_true", help="also pack several pairs per row")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "eval_throughput.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from alignkit.data import load_records
    from alignkit.data.tokenize import PromptEncoder, encode_pair
    from alignkit.engine.exactness import layout_support
    from alignkit.engine.layouts import build_groups
    from alignkit.engine.logprobs import sequence_logps
    from alignkit.models import load_model

    model, tokenizer = load_model(dtype="float32", device="cpu", log=lambda m: None)
    model.eval()
    pad = tokenizer.pad_token_id
    if reason := layout_support(model, pad):
        raise SystemExit(f"shared prefix unsupported here: {reason}")
    records = load_records(DATA, kind="pair", on_invalid="skip", log=None).records[:256][:args.pairs]
    encoder = PromptEncoder(tokenizer)
    pairs = [encode_pair(encoder, r.prompt, r.chosen, r.rejected, r.system, args.max_length, 256) for r in records]

    results = {"plain": [], "alignkit": []}
    seconds = {"plain": 0.0, "alignkit": 0.0}
    with torch.no_grad():
        # warm-up both paths (allocator, thread pools) outside the clock
        plain_pair_logps(model, pairs[0].prompt, [pairs[0].chosen, pairs[0].rejected], pad)
        sequence_logps(model, build_groups([(pairs[0].prompt, [pairs[0].chosen, pairs[0].rejected])], pad))
        for n, start in enumerate(range(0, len(pairs), args.chunk)):
            chunk = pairs[start:start + args.chunk]
            order = ["plain", "alignkit"] if n % 2 == 0 else ["alignkit", "plain"]
            for name in order:
                t0 = time.perf_counter()
                if name == "plain":
                    out = [plain_pair_logps(model, p.prompt, [p.chosen, p.rejected], pad) for p in chunk]
                else:
                    out = []
                    for b in range(0, len(chunk), args.batch_size):
                        groups = [(p.prompt, [p.chosen, p.rejected]) for p in chunk[b:b + args.batch_size]]
                        logps = sequence_logps(model, build_groups(groups, pad, pack=args.pack)).logps
                        out.extend(logps.view(-1, 2))
                seconds[name] += time.perf_counter() - t0
                results[name].extend(out)
    plain = torch.stack(results["plain"])
    ours = torch.stack(results["alignkit"])
    accuracy = {k: float((v[:, 0] > v[:, 1]).float().mean()) for k, v in (("plain", plain), ("alignkit", ours))}
    report = {
        "command": " ".join(["python", "bench/eval_throughput.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "load_average_at_end": os.getloadavg()},
        "pairs": len(pairs), "batch_size": args.batch_size, "packed": args.pack,
        "pairs_per_s": {k: len(pairs) / v for k, v in seconds.items()},
        "speedup": seconds["plain"] / seconds["alignkit"],
        "ranking_accuracy": accuracy,
        "max_abs_logp_diff": float((plain - ours).abs().max()),
        "same_decisions": bool(((plain[:, 0] > plain[:, 1]) == (ours[:, 0] > ours[:, 1])).all()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
