"""``alignkit eval`` and ``alignkit report``: typer command functions, registered in :mod:`alignkit.cli`.

Heavy imports (torch, transformers) happen inside the commands so ``alignkit --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _parse_column_map(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    try:
        column_map = json.loads(text)
    except json.JSONDecodeError as err:
        _fail(f"--column-map is not valid JSON ({err.msg}); example: '{{\"chosen\": \"pos\"}}'")
    if not isinstance(column_map, dict) or not all(isinstance(v, str) for v in column_map.values()):
        _fail("--column-map must be a JSON object mapping our field to your column, e.g. '{\"chosen\": \"pos\"}'")
    return column_map


def _print_summary(summary: dict[str, Any]) -> None:
    table = Table("metric", "value", title="evaluation summary")

    def add(label: str, value: Any) -> None:
        if value is None:
            return
        table.add_row(label, f"{value:.4f}" if isinstance(value, float) else str(value))

    pref = summary.get("preferences") or {}
    if pref:
        ranking = pref.get("ranking", {})
        add("pairs", pref.get("n_examples"))
        add("ranking accuracy R", ranking.get("accuracy"))
        if ranking.get("accuracy_ci_low") is not None:
            add("  95% CI", f"[{ranking['accuracy_ci_low']:.3f}, {ranking['accuracy_ci_high']:.3f}]")
        add("ranking accuracy (length-normalised)", ranking.get("accuracy_normalized"))
        rewards = pref.get("rewards", {})
        add("implicit reward accuracy", rewards.get("accuracies"))
        if rewards.get("accuracies_ci_low") is not None:
            add("  95% CI", f"[{rewards['accuracies_ci_low']:.3f}, {rewards['accuracies_ci_high']:.3f}]")
        add("reward margin (mean)", rewards.get("margins"))
        if rewards.get("margins_ci_low") is not None:
            add("  95% CI", f"[{rewards['margins_ci_low']:.3f}, {rewards['margins_ci_high']:.3f}]")
        ideal = pref.get("idealized", {})
        add("idealized ranking accuracy R*", ideal.get("r_star"))
        add("alignment gap R* − R", ideal.get("alignment_gap"))
        add("mean α", ideal.get("alpha_mean"))
        diff = pref.get("difficulty", {})
        add("share mis-ranked by reference", diff.get("share_misranked_by_reference"))
        flips = pref.get("flips")
        if flips:
            add("flipped share", flips.get("share"))
            add("  flipped / mis-ranked before", f"{flips['n_flipped']} / {flips['n_misranked_before']}")
    gen = summary.get("generation") or {}
    if gen:
        add("prompts generated", gen.get("n_prompts"))
        add("response tokens (mean)", gen.get("length", {}).get("mean"))
        if "verifier" in gen:
            add("verifier pass rate", gen["verifier"].get("pass_rate"))
            add("  baseline pass rate", gen["verifier"].get("baseline_pass_rate"))
        if "reward" in gen:
            add("reward (mean)", gen["reward"].get("mean"))
            add("  baseline reward (mean)", gen["reward"].get("baseline_mean"))
        for scorer, w in gen.get("win_rate", {}).items():
            add(f"win rate vs baseline ({scorer})", f"{w['win_rate']:.3f} [{w['low']:.3f}, {w['high']:.3f}]")
            add("  length-adjusted", w.get("length_adjusted"))
        if "kl" in gen:
            add("KL(policy‖ref) k1 / k3", f"{gen['kl']['k1']:.4f} / {gen['kl']['k3']:.4f}")
    add("seconds", summary.get("seconds", {}).get("total"))
    console.print(table)


def eval_command(
    model: Annotated[str, typer.Argument(help="policy: builtin name, model/adapter directory (e.g. RUN/final), "
                                              ".gguf file or hub id")],
    overrides: Annotated[list[str] | None, typer.Argument(help="config overrides, key=value (e.g. "
                                                               "preferences.beta=0.2)")] = None,
    config: Annotated[Path | None, typer.Option("-c", "--config", help="YAML eval config (see docs/evaluation.md)")
                      ] = None,
    data: Annotated[str | None, typer.Option("--data", help="preference pairs: a file, a saved dataset, a hub id, "
                                                            "or 'synthetic'")] = None,
    reference: Annotated[str | None, typer.Option("--reference", help="reference model π_ref (same spec kinds)")
                         ] = None,
    before: Annotated[str | None, typer.Option("--before", help="earlier checkpoint: share of its mis-ranked pairs "
                                                                "that MODEL flipped")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="output directory (default: the run directory of "
                                                           "RUN/final, else runs/eval/<name>)")] = None,
    beta: Annotated[float | None, typer.Option(help="β for implicit rewards and R* (default 0.1)")] = None,
    alpha: Annotated[float | None, typer.Option(help="preference strength P(chosen ≻ rejected) for R* where a pair "
                                                     "has no 'agreement' metadata (default 0.75)")] = None,
    alpha_key: Annotated[str | None, typer.Option(help="metadata field holding per-pair α (default agreement)")] = None,
    column_map: Annotated[str | None, typer.Option(help='JSON, e.g. {"chosen": "pos"}')] = None,
    on_invalid: Annotated[str | None, typer.Option(help="invalid rows: error or skip (default error)")] = None,
    max_examples: Annotated[int | None, typer.Option(help="evaluate the first N pairs only")] = None,
    max_length: Annotated[int | None, typer.Option(help="prompt + response tokens (default 512)")] = None,
    max_prompt_length: Annotated[int | None, typer.Option(help="prompt tokens kept when truncating "
                                                              "(default 256)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="pairs per forward pass (default 8)")] = None,
    table_format: Annotated[str | None, typer.Option("--format", help="per-example table: parquet or jsonl "
                                                                     "(default parquet)")] = None,
    generate: Annotated[bool | None, typer.Option("--generate", help="also generate and score responses")] = None,
    prompts: Annotated[str | None, typer.Option(help="prompt file for --generate (.txt lines or a 'prompt' "
                                                     "column); default: the prompts of --data")] = None,
    max_prompts: Annotated[int | None, typer.Option(help="generate for at most N prompts (default 64)")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="tokens per generated response (default 128)")] = None,
    gen_batch_size: Annotated[int | None, typer.Option(help="prompts per generation batch (default 16)")] = None,
    sample: Annotated[bool | None, typer.Option("--sample/--greedy", help="sampling or greedy decoding "
                                                                          "(default greedy)")] = None,
    temperature: Annotated[float | None, typer.Option(help="sampling temperature (default 1.0)")] = None,
    top_p: Annotated[float | None, typer.Option(help="nucleus sampling mass (default 1.0)")] = None,
    seed: Annotated[int | None, typer.Option(help="synthetic data and sampling seed (default 0)")] = None,
    system: Annotated[str | None, typer.Option(help="system prompt for generation")] = None,
    baseline: Annotated[str | None, typer.Option("--baseline", help="baseline model whose answers MODEL is "
                                                                    "compared with (win rates)")] = None,
    reward_model: Annotated[str | None, typer.Option("--reward-model", help="HF sequence-classification model "
                                                                            "directory or hub id")] = None,
    judge: Annotated[str | None, typer.Option("--judge", help="causal LM asked which answer is better "
                                                              "(both orders); needs --baseline")] = None,
    tie_margin: Annotated[float | None, typer.Option(help="judge ties: |P − 0.5| ≤ margin (default 0.05)")] = None,
    kl: Annotated[bool | None, typer.Option("--kl/--no-kl", help="KL(policy‖reference) on policy samples when "
                                                                  "generating with --reference (default on)")] = None,
    kl_samples: Annotated[int | None, typer.Option(help="samples per prompt for the KL estimate (default 1)")] = None,
    report: Annotated[bool | None, typer.Option("--report", help="also write OUT/report.html")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, ... (default auto)")] = None,
    dtype: Annotated[str | None, typer.Option(help="model weights dtype (default float32)")] = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help="progress bars (default on)")
                        ] = None,
) -> None:
    """Evaluate a model: ranking accuracy, implicit rewards, R* and difficulty on preference pairs; win rates,
    rewards, pass rates and KL on its generations. Writes OUT/eval/{summary.json, per_example.*}.

    Settings come from defaults, then ``-c FILE``, then the flags, then ``key=value`` overrides."""
    from alignkit.configs import ConfigError
    from alignkit.eval.config import FLAGS, load_eval_config

    # every flag's parameter is named after it (--max-new-tokens: max_new_tokens), except --format
    given = {**locals(), "column_map": _parse_column_map(column_map)}
    flags = {key: given["table_format" if flag == "--format" else flag[2:].replace("-", "_")]
             for flag, key in FLAGS.items()}
    try:
        cfg = load_eval_config(config, overrides, {"model": model, **flags})
    except (ConfigError, OSError) as err:
        _fail(str(err))

    from alignkit.eval.pipeline import EvalError, run_eval

    try:
        run = run_eval(cfg, log=console.print)
    except EvalError as err:
        _fail(str(err))
    _print_summary(run.summary)
    for name, path in run.paths.items():
        console.print(f"{name}: {path}")


def report_command(
    run_dir: Annotated[Path, typer.Argument(help="training run or eval output directory")],
    out: Annotated[Path | None, typer.Option("--out", help="HTML file (default RUN_DIR/report.html)")] = None,
) -> None:
    """Write one self-contained HTML report: training curves, eval histograms, samples, config."""
    from alignkit.report import ReportError, write_report

    try:
        path = write_report(run_dir, out)
    except (FileNotFoundError, ReportError) as err:
        _fail(str(err))
    console.print(f"report: {path}")
