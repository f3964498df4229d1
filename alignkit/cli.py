"""The ``alignkit`` command line: models, data, train, quickstart, eval, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="alignkit: align language models with human preferences.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
models_app = typer.Typer(help="List, inspect and convert models.", no_args_is_help=True)
data_app = typer.Typer(help="Build and inspect datasets.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
console = Console()


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


# ---------------------------------------------------------------- models


@models_app.command("list")
def models_list() -> None:
    """Builtin models (available offline once their wheel is installed)."""
    from alignkit.models.builtin import BUILTIN_MODELS, converted_dir, locate_gguf

    table = Table("name", "installed", "cached", "description")
    for model in BUILTIN_MODELS.values():
        try:
            locate_gguf(model)
            installed = "yes"
        except Exception:  # noqa: BLE001 - any failure means "not installed"; the hint follows
            installed = f"no: {model.pip_command}"
        cached = "yes" if (converted_dir(model) / "config.json").is_file() else "no"
        table.add_row(model.name, installed, cached, model.description)
    console.print(table)


@models_app.command("info")
def models_info(name: Annotated[str, typer.Argument(help="builtin name, directory or .gguf")]) -> None:
    """Architecture, size, chat template and special tokens of a model."""
    from alignkit.models import ModelNotAvailableError, load_model

    try:
        model, tokenizer = load_model(name, device="cpu", log=lambda m: None)
    except ModelNotAvailableError as err:
        _fail(str(err))
    config = model.config
    rows = {
        "architecture": ",".join(config.architectures or [type(model).__name__]),
        "parameters": f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M",
        "layers": getattr(config, "num_hidden_layers", "?"),
        "hidden size": getattr(config, "hidden_size", "?"),
        "vocabulary": len(tokenizer),
        "context": getattr(config, "max_position_embeddings", "?"),
        "chat template": "yes" if getattr(tokenizer, "chat_template", None) else "no (plain fallback)",
        "bos / eos / pad": f"{tokenizer.bos_token!r} / {tokenizer.eos_token!r} / {tokenizer.pad_token!r}",
    }
    table = Table("field", "value", title=name)
    for key, value in rows.items():
        table.add_row(key, str(value))
    console.print(table)


@models_app.command("convert")
def models_convert(spec: str, out_dir: Path) -> None:
    """Save any loadable model (e.g. a .gguf file) as a float32 safetensors directory."""
    from alignkit.models import load_model

    model, tokenizer = load_model(spec, device="cpu")
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    console.print(f"wrote {out_dir}")


# ---------------------------------------------------------------- data


@data_app.command("synth")
def data_synth(
    out_dir: Annotated[Path, typer.Option("--out", help="directory for train.jsonl and test.jsonl")] = Path(
        "data/synthetic"),
    n_train: int = 2000,
    n_test: int = 200,
    seed: int = 0,
    families: Annotated[str | None, typer.Option(help="comma-separated subset of families")] = None,
) -> None:
    """Generate the synthetic verifiable preference tasks as TRL-format JSONL."""
    from alignkit.data.synthetic import make_synthetic, write_jsonl

    chosen_families = families.split(",") if families else None
    train, test = make_synthetic(n_train, n_test, seed=seed, families=chosen_families)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(train, out_dir / "train.jsonl")
    write_jsonl(test, out_dir / "test.jsonl")
    console.print(f"wrote {len(train)} train and {len(test)} test pairs to {out_dir}")


def _histogram(values: list[int], bins: int = 8, width: int = 30) -> str:
    if not values:
        return "(none)"
    low, high = min(values), max(values)
    step = max(1, -(-(high - low + 1) // bins))
    counts = [0] * bins
    for v in values:
        counts[min((v - low) // step, bins - 1)] += 1
    top = max(counts)
    lines = [f"{low + i * step:>6}-{low + (i + 1) * step - 1:<6} {'#' * round(width * c / top):<{width}} {c}"
             for i, c in enumerate(counts) if c]
    return "\n".join(lines)


@data_app.command("inspect")
def data_inspect(
    file: str,
    kind: str = "pair",
    model: Annotated[str, typer.Option(help="tokenizer used for token lengths")] = "smollm2-135m-instruct",
    skip_invalid: Annotated[bool, typer.Option(help="skip invalid rows instead of stopping")] = False,
    column_map: Annotated[str | None, typer.Option(help='JSON, e.g. {"chosen": "pos"}')] = None,
) -> None:
    """Row counts, validation summary and token-length histograms per field."""
    from alignkit.data import DataError, load_records
    from alignkit.data.tokenize import PromptEncoder
    from alignkit.models import load_tokenizer

    try:
        result = load_records(file, kind=kind, on_invalid="skip" if skip_invalid else "error",
                              column_map=json.loads(column_map) if column_map else None, log=console.print)
    except DataError as err:
        _fail(f"{err}\n(use --skip-invalid to skip invalid rows and list them)")
    console.print(f"[bold]{file}[/]: {result.n_read} rows read, {len(result.records)} valid, "
                  f"{result.n_skipped} skipped")
    for rejected in result.rejected[:5]:
        console.print(f"  invalid row {rejected['row']}, field {rejected['field']}: {rejected['error']}")
    encoder = PromptEncoder(load_tokenizer(model, log=lambda m: None))
    fields = {"pair": ("chosen", "rejected"), "binary": ("completion",), "judgment": ("response",)}.get(kind, ())
    lengths: dict[str, list[int]] = {"prompt": [], **{f: [] for f in fields}}
    for record in result.records:
        lengths["prompt"].append(len(encoder.encode_prompt(record.prompt, record.system)))
        for f in fields:
            lengths[f].append(len(encoder.encode_response(record.prompt, getattr(record, f), record.system)))
    for name, values in lengths.items():
        if values:
            console.print(f"\n[bold]{name}[/] tokens: mean {sum(values) / len(values):.0f}, max {max(values)}")
            console.print(_histogram(values))


# ---------------------------------------------------------------- train


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("-c", "--config", help="YAML config")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the newest checkpoint")] = False,
) -> None:
    """Train with a YAML config; extra ``key=value`` arguments override it (e.g. optim.learning_rate=1e-4)."""
    from alignkit.train.config import load_config
    from alignkit.train.loop import train as run_training

    overrides = list(ctx.args) + (["resume=true"] if resume else [])
    try:
        cfg = load_config(config, overrides)
    except (ValueError, OSError) as err:
        _fail(str(err))
    result = run_training(cfg, log=console.print)
    console.print(f"run directory: {result.output_dir}")


@app.command()
def quickstart(
    output_dir: Path = Path("runs/quickstart"),
    steps: Annotated[int, typer.Option(help="training steps")] = 60,
    overrides: Annotated[list[str] | None, typer.Argument(help="config overrides, key=value")] = None,
) -> None:
    """Load the builtin SmolLM2, train it with DPO on the synthetic tasks, and show before/after."""
    from alignkit.quickstart import run_quickstart

    run_quickstart(output_dir=output_dir, steps=steps, console=console, overrides=overrides)


from alignkit.eval.command import eval_command, report_command  # noqa: E402 - kept next to its registration

app.command("eval")(eval_command)
app.command("report")(report_command)


def main() -> None:  # pragma: no cover
    app()
