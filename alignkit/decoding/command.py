"""``alignkit generate``: the typer command function, registered in :mod:`alignkit.cli`.

Heavy imports (torch, transformers) happen inside the command so ``alignkit --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from alignkit.decoding.analyze_command import parse_numbers

console = Console()


def generate_command(
    model: Annotated[str, typer.Argument(help="builtin name, model/adapter directory, .gguf file or hub id")],
    prompts: Annotated[str, typer.Option("--prompts", help=".txt (one prompt a line), a file with a 'prompt' "
                                                           "column (JSONL/JSON/CSV/Parquet) or preference data")],
    out: Annotated[Path, typer.Option("--out", help="output JSON Lines file (one line per prompt)")],
    strategy: Annotated[str, typer.Option("--strategy", help="greedy, sample, best_of_n, urial, deal, rps, "
                                                             "steer")] = "greedy",
    reward: Annotated[list[str] | None, typer.Option("--reward", help="verifier:synthetic, reward_model:DIR (or a "
                                                     "directory), judge:MODEL, pal:DIR[@USER], gtalign, lsc:SPEC, "
                                                     "package.module:attr; 'W*SPEC' "
                                                     "weights it; repeat to sum several")] = None,
    n: Annotated[int, typer.Option("--n", help="best_of_n: samples per prompt", min=1)] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="tokens per response", min=1)] = 128,
    temperature: Annotated[float, typer.Option(help="sampling temperature")] = 1.0,
    top_p: Annotated[float, typer.Option(help="nucleus mass")] = 1.0,
    top_k: Annotated[int, typer.Option(help="sampling top-k (0: off)", min=0)] = 0,
    repetition_penalty: Annotated[float, typer.Option(help="CTRL-style repetition penalty")] = 1.0,
    stop: Annotated[list[str] | None, typer.Option("--stop", help="stop string (repeatable)")] = None,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    system: Annotated[str | None, typer.Option(help="system prompt")] = None,
    batch_size: Annotated[int, typer.Option(help="prompts per generation batch", min=1)] = 8,
    limit: Annotated[int | None, typer.Option(help="the first N prompts only", min=1)] = None,
    deal_top_k: Annotated[int, typer.Option("--deal-top-k", help="deal: candidate tokens per beam", min=1)] = 4,
    lookahead: Annotated[int, typer.Option("--lookahead", help="deal: lookahead tokens", min=0)] = 4,
    reward_weight: Annotated[float, typer.Option("--lambda", help="deal: reward weight λ")] = 1.0,
    beam: Annotated[int, typer.Option("--beam", help="deal: beams kept", min=1)] = 2,
    examples: Annotated[Path | None, typer.Option("--examples", help="urial: your own examples (JSONL with "
                                                                    "'query' and 'answer')")] = None,
    urial_k: Annotated[int | None, typer.Option("--urial-k", help="urial: use the first K examples", min=0)] = None,
    rps_k: Annotated[int, typer.Option("--rps-k", help="rps: directions (candidates) per prompt", min=1)] = 5,
    rps_angle: Annotated[float, typer.Option("--rps-angle", help="rps: target direction θ* in degrees in the "
                                                                 "plane of the two rewards")] = 45.0,
    rps_radius: Annotated[float, typer.Option("--rps-radius", help="rps: angular radius Δ in degrees",
                                              min=0, max=180)] = 30.0,
    rps_baseline: Annotated[bool, typer.Option("--rps-baseline", help="rps: k samples at the target direction "
                                                                      "instead of one per neighbour")] = False,
    rps_objectives: Annotated[str | None, typer.Option("--rps-objectives", help="rps: the two objectives' names "
                                                       "in the instruction, e.g. 'helpfulness,verbosity'")] = None,
    rps_in_prompt: Annotated[bool, typer.Option("--rps-in-prompt", help="rps: state the direction in the prompt, "
                                                                        "not the system message")] = False,
    steer_traits: Annotated[Path | None, typer.Option("--steer-traits", help="steer: questionnaire JSONL (default: "
                                                      "the builtin sample)")] = None,
    steer_trait: Annotated[str | None, typer.Option("--steer-trait", help="steer: the trait, e.g. "
                                                    "extraversion")] = None,
    steer_alpha: Annotated[float, typer.Option("--steer-alpha", help="steer: strength in units of σ (negative: "
                                                                     "away from the trait)")] = 4.0,
    steer_layers: Annotated[str | None, typer.Option("--steer-layers", help="steer: decoder layers, e.g. '15' or "
                                                     "'12,15' (default: the middle one)")] = None,
    steer_level: Annotated[str, typer.Option("--steer-level", help="steer: 'layer' (decoder layers' outputs) or "
                                             "'head' (probe-selected attention heads, PAS)")] = "layer",
    steer_heads: Annotated[int, typer.Option("--steer-heads", help="steer, head level: heads kept by probe "
                                             "accuracy", min=1)] = 24,
    deal_cache: Annotated[bool, typer.Option("--deal-cache/--no-deal-cache", help="deal: keep each beam's KV "
                                             "cache across steps (--no-deal-cache: re-read the prefix)")] = True,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = "auto",
    dtype: Annotated[str, typer.Option(help="weights dtype")] = "float32",
    column_map: Annotated[str | None, typer.Option(help='JSON, e.g. {"prompt": "question"}')] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="progress bar")] = True,
) -> None:
    """Generate with a decoding-time alignment strategy; one JSON line per prompt, in input order."""
    from alignkit.decoding.base import DecodeSettings, get_strategy
    from alignkit.decoding.run import run_generate

    get_strategy(strategy)  # an unknown name fails before any model loads
    try:
        mapping = json.loads(column_map) if column_map else None
    except json.JSONDecodeError as err:
        raise ValueError(f"--column-map is not valid JSON ({err.msg})") from None
    settings = DecodeSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                              repetition_penalty=repetition_penalty, stop=tuple(stop or ()), seed=seed,
                              system=system, batch_size=batch_size, n=n, deal_top_k=deal_top_k,
                              deal_lookahead=lookahead, deal_lambda=reward_weight, deal_beam=beam,
                              urial_examples=examples, urial_k=urial_k, rps_k=rps_k, rps_angle=rps_angle,
                              rps_radius=rps_radius, rps_baseline=rps_baseline, rps_in_prompt=rps_in_prompt,
                              rps_objectives=tuple(n.strip() for n in rps_objectives.split(",")) if rps_objectives
                              else (), steer_traits=steer_traits, steer_trait=steer_trait, steer_alpha=steer_alpha,
                              steer_layers=tuple(parse_numbers(steer_layers or "", int, "--steer-layers")),
                              steer_level=steer_level, steer_heads=steer_heads, deal_cache=deal_cache)
    summary = run_generate(model, prompts, out, strategy, reward, settings, limit=limit, device=device, dtype=dtype,
                           progress=progress, column_map=mapping, log=lambda m: console.print(m, highlight=False))
    table = Table("metric", "value", title=f"generate: {strategy}")
    for key in ("prompts", "reward", "mean_reward", "tokens_generated", "seconds", "prompts_per_second",
                "tokens_per_second"):
        if summary.get(key) is not None:
            value = summary[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    for point in summary.get("pass_rate_curve", []):
        table.add_row(f"pass rate, best of {point['n']}",
                      f"{point['pass_rate']:.3f} [{point['ci_low']:.3f}, {point['ci_high']:.3f}]")
    console.print(table)
    console.print(f"wrote {summary['out']}" + (f" and {summary['curve_file']}" if "curve_file" in summary else ""))
