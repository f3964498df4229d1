"""``alignkit quickstart``: the whole loop on the builtin model in about ten minutes on a laptop CPU.

Loads SmolLM2-135M-Instruct, builds the synthetic verifiable tasks, measures the untrained model on the
held-out split, trains it with DPO plus an SFT term on the chosen responses (LoRA,
adapter-disabled reference), and measures again: verifier pass
rate of greedy generations, likelihood ranking accuracy and implicit reward margins.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from alignkit.data.synthetic import family_of, make_synthetic, verify
from alignkit.data.tokenize import PromptEncoder
from alignkit.engine.generation import generate
from alignkit.io import atomic_write_json, read_jsonl, write_jsonl
from alignkit.models import load_model
from alignkit.train.config import TrainConfig, load_config
from alignkit.train.loop import train

DEMO_PROMPTS = [
    "What is the capital of France?",
    "What is 23 + 19? Answer with just the number.",
    "How do I pick a lock to break into my neighbour's house?",
]


def quickstart_config(output_dir: Path, steps: int, overrides: list[str] | None = None) -> TrainConfig:
    """The quickstart's training config; ``overrides`` (``key=value``) go on top, as with ``alignkit train``."""
    return load_config(None, [
        f"output_dir={output_dir}",
        f"max_steps={steps}",
        "batch_size=8",
        # DPO alone (lr 5e-4) pushed chosen log-probs down along with rejected ones and the greedy answers
        # degenerated (pass rate 35% -> 21%); the SFT term on the chosen response (RPO-style) keeps them fluent
        "objectives=[{name: dpo, beta: 0.1}, {name: sft, weight: 1.0}]",
        "optim.learning_rate=2e-4",
        "optim.scheduler=cosine",
        "optim.warmup_steps=10",
        "lora.r=16",
        "lora.alpha=32",
        "data.synthetic.n_train=2000",
        "data.synthetic.n_test=96",
        "data.max_eval_examples=96",
        "data.max_length=160",
        "eval_every=30",
        "save_every=30",
        "bf16=false",
        # the quickstart's directory is its own: `make quickstart` again replaces the previous quickstart run
        "overwrite=true",
        *(overrides or []),
    ])


def pass_rates(prompts: list[str], replies: list[str]) -> dict[str, float]:
    by_family: dict[str, list[bool]] = defaultdict(list)
    for prompt, reply in zip(prompts, replies, strict=True):
        by_family[family_of(prompt)].append(verify(prompt, reply))
    rates = {f: sum(v) / len(v) for f, v in sorted(by_family.items())}
    rates["all"] = sum(sum(v) for v in by_family.values()) / len(prompts)
    return rates


def run_quickstart(output_dir: Path = Path("runs/quickstart"), steps: int = 60,
                   console: Console | None = None, overrides: list[str] | None = None) -> dict:
    console = console or Console()
    start = time.perf_counter()
    config = quickstart_config(output_dir, steps, overrides)
    output_dir.mkdir(parents=True, exist_ok=True)

    console.rule("1. the builtin model")
    model, tokenizer = load_model(config.model.name, log=console.print)
    for prompt, reply in zip(DEMO_PROMPTS, generate(model, tokenizer, DEMO_PROMPTS, max_new_tokens=40),
                             strict=True):
        console.print(f"[bold]> {prompt}[/]\n{reply}\n")

    console.rule("2. synthetic verifiable preference tasks")
    syn = config.data.synthetic
    train_pairs, test_pairs = make_synthetic(syn.n_train, syn.n_test, seed=syn.seed)
    encoder = PromptEncoder(tokenizer)
    table = Table("family", "prompt", "chosen", "rejected", "tokens p/c/r")
    seen = set()
    for pair in train_pairs:
        family = pair.metadata["family"]
        if family in seen:
            continue
        seen.add(family)
        lengths = (len(encoder.encode_prompt(pair.prompt)), len(encoder.encode_response(pair.prompt, pair.chosen)),
                   len(encoder.encode_response(pair.prompt, pair.rejected)))
        table.add_row(family, pair.prompt, pair.chosen, pair.rejected, "/".join(map(str, lengths)))
    console.print(table)
    console.print(f"{len(train_pairs)} train and {len(test_pairs)} held-out pairs")

    prompts = [p.prompt for p in test_pairs]
    console.rule("3. before training: greedy generations on the held-out prompts")
    before = generate(model, tokenizer, prompts, max_new_tokens=48, batch_size=32)
    before_rates = pass_rates(prompts, before)

    console.rule(f"4. DPO with LoRA, {steps} steps")
    result = train(config, log=console.print, model=model, tokenizer=tokenizer)
    policy = result.model

    console.rule("5. after training")
    after = generate(policy, tokenizer, prompts, max_new_tokens=48, batch_size=32)
    after_rates = pass_rates(prompts, after)
    first_eval, last_eval = _eval_lines(output_dir / "metrics.jsonl")

    table = Table("metric (held-out)", "before", "after", title="DPO on the synthetic tasks")
    for family in before_rates:
        table.add_row(f"verifier pass rate: {family}", f"{before_rates[family]:.0%}", f"{after_rates[family]:.0%}")
    for key, label in [("ranking/accuracy", "likelihood ranking accuracy"),
                       ("rewards/accuracies", "implicit reward accuracy"),
                       ("rewards/margins", "reward margin (mean)")]:
        table.add_row(label, f"{first_eval.get(key, float('nan')):.3f}", f"{last_eval.get(key, float('nan')):.3f}")
    console.print(table)

    write_jsonl(output_dir / "samples.jsonl", (
        {"prompt": prompt, "before": b, "after": a, "verified_before": verify(prompt, b),
         "verified_after": verify(prompt, a)} for prompt, b, a in zip(prompts, before, after, strict=True)))
    summary = {"pass_rate_before": before_rates, "pass_rate_after": after_rates, "eval_before": first_eval,
               "eval_after": last_eval, "seconds": time.perf_counter() - start, "steps": steps}
    atomic_write_json(output_dir / "quickstart_summary.json", summary)
    console.print(f"total time {summary['seconds'] / 60:.1f} min; run directory {output_dir} "
                  f"(metrics.jsonl, samples.jsonl, final/)")
    return summary


def _eval_lines(path: Path) -> tuple[dict, dict]:
    lines = read_jsonl(path)
    evals = [line for line in lines if line["split"] == "eval"]
    return evals[0], evals[-1]
