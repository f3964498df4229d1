"""``alignkit eval`` and ``alignkit report``: typer command functions, registered in :mod:`alignkit.cli`.

Heavy imports (torch, transformers) happen inside the commands so ``alignkit --help`` stays fast.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def _default_out(spec: str) -> Path:
    """A training run's ``final/`` (or ``checkpoint-*``) evaluates into the run directory, so the report
    shows training curves and evaluation together; anything else goes to ``runs/eval/<name>``."""
    path = Path(spec).expanduser()
    if path.is_dir() and any((path.parent / f).is_file() for f in ("metrics.jsonl", "config.yaml")):
        return path.parent
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name if path.exists() else spec).strip("_") or "model"
    return Path("runs") / "eval" / name


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


def _load_pairs(data: str, column_map: dict[str, str] | None, on_invalid: str, max_examples: int | None,
                seed: int) -> tuple[list[Any], dict[str, Any]]:
    from alignkit.data import DataError, PreferencePair, load_records, make_synthetic

    if data == "synthetic":
        if column_map:
            _fail("--column-map does not apply to --data synthetic")
        _, pairs = make_synthetic(n_train=0, n_test=max_examples or 200, seed=seed)
        return pairs, {"source": "synthetic (held-out split)", "n_read": len(pairs), "n_skipped": 0}
    try:
        loaded = load_records(data, kind="pair", column_map=column_map, on_invalid=on_invalid, log=console.print)
    except DataError as err:
        hint = "" if on_invalid == "skip" else "\n(use --on-invalid skip to skip invalid rows)"
        _fail(f"{err}{hint}")
    except ValueError as err:
        _fail(str(err))
    pairs = [r for r in loaded.records if isinstance(r, PreferencePair)]
    if max_examples is not None:
        pairs = pairs[:max_examples]
    return pairs, {"source": data, "n_read": loaded.n_read, "n_skipped": loaded.n_skipped}


def _load_prompts(path: str) -> list[Any]:
    """A prompt file: ``.txt`` (one prompt per line) or JSON Lines (``.jsonl[.gz]``) with a ``prompt`` field
    (a string or a list of chat messages)."""
    import gzip

    p = Path(path)
    if not p.is_file():
        _fail(f"prompt file {path} not found")
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8") as fh:
        lines = [line for line in fh.read().splitlines() if line.strip()]
    if p.name.removesuffix(".gz").endswith(".txt"):
        prompts: list[Any] = [line.strip() for line in lines]
    else:
        prompts = []
        for lineno, line in enumerate(lines, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                _fail(f"{path}:{lineno}: invalid JSON ({err.msg}); prompt files are .txt or JSON Lines")
            value = row.get("prompt") if isinstance(row, dict) else None
            if not value or not isinstance(value, str | list):
                _fail(f"{path}:{lineno}: expected an object with a non-empty 'prompt' (text or messages)")
            prompts.append(value)
    if not prompts:
        _fail(f"prompt file {path} holds no prompts")
    return prompts


def _load_causal(spec: str, role: str, device: str, dtype: str) -> tuple[Any, Any, float]:
    from alignkit.models import ModelNotAvailableError, load_model

    t0 = time.perf_counter()
    try:
        model, tokenizer = load_model(spec, dtype=dtype, device=device, log=lambda m: console.print(f"{role}: {m}"))
    except (ModelNotAvailableError, OSError, ValueError) as err:
        _fail(f"cannot load {role} model {spec!r}: {err}")
    model.requires_grad_(False)
    return model, tokenizer, time.perf_counter() - t0


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
        add("reward margin (mean)", rewards.get("margins"))
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
    data: Annotated[str | None, typer.Option("--data", help="preference pairs: a file, a saved dataset, a hub id, "
                                                            "or 'synthetic'")] = None,
    reference: Annotated[str | None, typer.Option("--reference", help="reference model π_ref (same spec kinds)")
                         ] = None,
    before: Annotated[str | None, typer.Option("--before", help="earlier checkpoint: share of its mis-ranked pairs "
                                                                "that MODEL flipped")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="output directory (default: the run directory of "
                                                           "RUN/final, else runs/eval/<name>)")] = None,
    beta: Annotated[float, typer.Option(help="β for implicit rewards and R*")] = 0.1,
    alpha: Annotated[float, typer.Option(help="preference strength P(chosen ≻ rejected) for R* where a pair has no "
                                              "'agreement' metadata")] = 0.75,
    alpha_key: Annotated[str, typer.Option(help="metadata field holding per-pair α")] = "agreement",
    column_map: Annotated[str | None, typer.Option(help='JSON, e.g. {"chosen": "pos"}')] = None,
    on_invalid: Annotated[str, typer.Option(help="invalid rows: error or skip")] = "error",
    max_examples: Annotated[int | None, typer.Option(help="evaluate the first N pairs only")] = None,
    max_length: Annotated[int, typer.Option(help="prompt + response tokens")] = 512,
    max_prompt_length: Annotated[int, typer.Option(help="prompt tokens kept when truncating")] = 256,
    batch_size: Annotated[int, typer.Option(help="pairs per forward pass")] = 8,
    table_format: Annotated[str, typer.Option("--format", help="per-example table: parquet or jsonl")] = "parquet",
    generate: Annotated[bool, typer.Option("--generate", help="also generate and score responses")] = False,
    prompts: Annotated[str | None, typer.Option(help="prompt file for --generate (.txt lines or a 'prompt' "
                                                     "column); default: the prompts of --data")] = None,
    max_prompts: Annotated[int, typer.Option(help="generate for at most N prompts")] = 64,
    max_new_tokens: Annotated[int, typer.Option(help="tokens per generated response")] = 128,
    gen_batch_size: Annotated[int, typer.Option(help="prompts per generation batch")] = 16,
    sample: Annotated[bool, typer.Option("--sample/--greedy", help="sampling or greedy decoding")] = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    system: Annotated[str | None, typer.Option(help="system prompt for generation")] = None,
    baseline: Annotated[str | None, typer.Option("--baseline", help="baseline model whose answers MODEL is "
                                                                    "compared with (win rates)")] = None,
    reward_model: Annotated[str | None, typer.Option("--reward-model", help="HF sequence-classification model "
                                                                            "directory or hub id")] = None,
    judge: Annotated[str | None, typer.Option("--judge", help="causal LM asked which answer is better "
                                                              "(both orders); needs --baseline")] = None,
    tie_margin: Annotated[float, typer.Option(help="judge ties: |P − 0.5| ≤ margin")] = 0.05,
    kl: Annotated[bool, typer.Option("--kl/--no-kl", help="KL(policy‖reference) on policy samples when "
                                                           "generating with --reference")] = True,
    kl_samples: Annotated[int, typer.Option(help="samples per prompt for the KL estimate")] = 1,
    report: Annotated[bool, typer.Option("--report", help="also write OUT/report.html")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = "auto",
    dtype: Annotated[str, typer.Option(help="model weights dtype")] = "float32",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="progress bars")] = True,
) -> None:
    """Evaluate a model: ranking accuracy, implicit rewards, R* and difficulty on preference pairs; win rates,
    rewards, pass rates and KL on its generations. Writes OUT/eval/{summary.json, per_example.*}."""
    t_start = time.perf_counter()
    if on_invalid not in ("error", "skip"):
        _fail(f"--on-invalid must be 'error' or 'skip', got {on_invalid!r}")
    if table_format not in ("parquet", "jsonl"):
        _fail(f"--format must be 'parquet' or 'jsonl', got {table_format!r}")
    if data is None and not (generate and prompts):
        _fail("nothing to evaluate: give --data PATH|synthetic (and/or --generate --prompts FILE)")
    if judge and not baseline:
        _fail("--judge compares against baseline answers: give --baseline SPEC")
    if (reward_model or judge or baseline or prompts) and not generate:
        _fail("--baseline, --reward-model, --judge and --prompts need --generate")
    if before and data is None:
        _fail("--before compares rankings of preference pairs: give --data")
    if not 0 <= tie_margin < 0.5:
        _fail(f"--tie-margin must lie in [0, 0.5), got {tie_margin}")
    if not 0 < alpha < 1:
        _fail(f"--alpha must lie strictly between 0 and 1, got {alpha}")
    if not beta > 0:
        _fail(f"--beta must be > 0, got {beta}")
    parsed_column_map = _parse_column_map(column_map)

    from alignkit.eval.run import (
        evaluate_generations,
        evaluate_preferences,
        load_reward_model,
        synthetic_verifier,
        write_result,
    )

    out_dir = out if out is not None else _default_out(model)
    file_prompts = _load_prompts(prompts)[:max_prompts] if prompts else None  # fail before any slow work
    seconds: dict[str, float] = {}
    pairs, data_info = ([], None)
    if data is not None:
        t0 = time.perf_counter()
        pairs, data_info = _load_pairs(data, parsed_column_map, on_invalid, max_examples, seed)
        if not pairs:
            _fail(f"{data}: no preference pairs to evaluate")
        seconds["load_data"] = time.perf_counter() - t0
        console.print(f"data: {len(pairs)} pairs from {data_info['source']}")

    policy, tokenizer, seconds["load_model"] = _load_causal(model, "model", device, dtype)

    def companion(spec: str | None, role: str) -> tuple[Any, Any]:
        if spec is None:
            return None, None
        if spec == model:  # same weights: reuse, and the recipe skips the duplicate forward pass
            return policy, tokenizer
        loaded, tok, secs = _load_causal(spec, role, device, dtype)
        seconds[f"load_{role}"] = secs
        return loaded, tok

    ref_model, ref_tok = companion(reference, "reference")
    before_model, before_tok = companion(before, "before")

    summary: dict[str, Any] = {
        "model": model, "reference": reference, "before": before, "data": data_info,
        "settings": {"beta": beta, "alpha": alpha, "alpha_key": alpha_key, "max_length": max_length,
                     "max_prompt_length": max_prompt_length, "batch_size": batch_size, "device": str(
                         next(policy.parameters()).device), "dtype": dtype},
    }
    per_example = generations = None
    try:
        if pairs:
            result = evaluate_preferences(
                policy, tokenizer, pairs, reference=ref_model, before=before_model, beta=beta, alpha=alpha,
                batch_size=batch_size, max_length=max_length, max_prompt_length=max_prompt_length,
                alpha_key=alpha_key, reference_tokenizer=ref_tok, before_tokenizer=before_tok, progress=progress)
            summary["preferences"] = result.summary
            per_example = result.per_example
            seconds["preferences"] = result.summary["seconds"]["total"]
        if generate:
            prompt_ids = None
            if file_prompts is not None:
                prompt_list = file_prompts
            else:
                # Unique prompts in data order: several pairs often share a prompt.
                first_index: dict[str, int] = {}
                for i, pair in enumerate(pairs):
                    key = json.dumps(pair.prompt if isinstance(pair.prompt, str) else
                                     [m.model_dump() for m in pair.prompt])
                    first_index.setdefault(key, i)
                indices = list(first_index.values())[:max_prompts]
                prompt_list = [pairs[i].prompt for i in indices]
                prompt_ids = [per_example[i]["prompt_id"] for i in indices] if per_example else None
            base_model = base_tok = None
            if baseline is not None:
                base_model, base_tok = companion(baseline, "baseline")
            rm = None
            if reward_model is not None:
                t0 = time.perf_counter()
                try:
                    rm = load_reward_model(reward_model, device=device, dtype=dtype)
                except (FileNotFoundError, ValueError) as err:
                    _fail(str(err))
                seconds["load_reward_model"] = time.perf_counter() - t0
            judge_fn = None
            if judge is not None:
                from alignkit.eval.judge import LMJudge

                judge_model, judge_tok = companion(judge, "judge")
                try:
                    judge_fn = LMJudge(judge_model, judge_tok)
                except ValueError as err:
                    _fail(f"--judge {judge}: {err}")
            text_prompts = [p for p in prompt_list if isinstance(p, str)]
            verifier = (synthetic_verifier if text_prompts and any(synthetic_verifier(p, "") is not None
                                                                    for p in text_prompts) else None)
            kl_reference = ref_model if (kl and ref_model is not None) else None
            if kl_reference is not None and ref_tok is not tokenizer:
                from alignkit.eval.run import same_tokenizer

                if not same_tokenizer(ref_tok, tokenizer):
                    console.print("[yellow]skipping KL: the reference tokenizes differently from the policy[/]")
                    kl_reference = None
            gen = evaluate_generations(
                policy, tokenizer, prompt_list, baseline=base_model, baseline_tokenizer=base_tok,
                verifier=verifier, reward_model=rm, judge=judge_fn, reference=kl_reference, kl_samples=kl_samples,
                max_new_tokens=max_new_tokens, batch_size=gen_batch_size, do_sample=sample,
                temperature=temperature, top_p=top_p, system=system, seed=seed, tie_margin=tie_margin,
                prompt_ids=prompt_ids, progress=progress)
            summary["generation"] = gen.summary
            generations = gen.per_example
            seconds["generation"] = gen.summary["seconds"]["total"]
    except ValueError as err:
        _fail(str(err))

    seconds["total"] = time.perf_counter() - t_start
    summary["seconds"] = seconds
    paths = write_result(out_dir, summary, per_example, generations, fmt=table_format)  # type: ignore[arg-type]
    # eval's own before/after samples (baseline vs model); a training run's OUT/samples.jsonl is left alone and
    # the report prefers it. Rewritten on every eval so the report never shows an earlier eval's samples.
    samples = out_dir / "eval" / "samples.jsonl"
    samples.unlink(missing_ok=True)
    if generations and any("baseline_response" in g for g in generations):
        samples.parent.mkdir(parents=True, exist_ok=True)
        with samples.open("w", encoding="utf-8") as fh:
            for g in generations:
                row = {"prompt": g["prompt"], "before": g["baseline_response"], "after": g["response"]}
                if "verified" in g:
                    row.update(verified_before=g.get("baseline_verified"), verified_after=g["verified"])
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    _print_summary(summary)
    for name, path in paths.items():
        console.print(f"{name}: {path}")
    if report:
        from alignkit.report import write_report

        console.print(f"report: {write_report(out_dir)}")


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
