"""The ``alignkit`` command line: models, data, train, quickstart, eval, report."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

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
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


_DEBUG = False  # set per invocation by --debug


def _debug() -> bool:
    return _DEBUG or os.environ.get("ALIGNKIT_DEBUG", "") not in ("", "0")


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the input is wrong", each reported as one line. Imported lazily: the CLI starts
    without torch."""
    import yaml

    from alignkit.data.errors import DataError
    from alignkit.models.builtin import ModelNotAvailableError

    types: list[type[BaseException]] = [ValueError, DataError, ModelNotAvailableError, FileNotFoundError,
                                        NotADirectoryError, IsADirectoryError, PermissionError, yaml.YAMLError]
    for module, name in (("alignkit.train.checkpoint", "CheckpointError"), ("alignkit.report", "ReportError")):
        try:
            types.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):  # pragma: no cover - optional pieces
            pass
    return tuple(types)


def guarded(command: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``command`` so that a user error prints ``error: ...`` on one line and exits 2; the traceback is
    shown only with ``--debug`` (or ``ALIGNKIT_DEBUG=1``). Bugs (any other exception) still raise."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as error:  # noqa: BLE001 - filtered just below
            if _debug() or not isinstance(error, _user_error_types()):
                raise
            message = " ".join(str(error).split("\n")[0].split()) or type(error).__name__
            _fail(message)

    return run


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks for errors")] = False) -> None:
    """alignkit: align language models with human preferences."""
    global _DEBUG
    _DEBUG = debug


# ---------------------------------------------------------------- models


@models_app.command("list")
@guarded
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
@guarded
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
@guarded
def models_convert(spec: str, out_dir: Path) -> None:
    """Save any loadable model (e.g. a .gguf file) as a float32 safetensors directory."""
    from alignkit.models import load_model

    model, tokenizer = load_model(spec, device="cpu")
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    console.print(f"wrote {out_dir}")


# ---------------------------------------------------------------- data


@data_app.command("synth")
@guarded
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


@data_app.command("split")
@guarded
def data_split(
    file: str,
    out_dir: Annotated[Path, typer.Option("--out", help="directory for train.jsonl and heldout.jsonl")],
    eval_fraction: Annotated[float, typer.Option(help="share held out")] = 0.2,
    seed: Annotated[int, typer.Option(help="shuffle seed (alignkit train's `seed`, default 0)")] = 0,
    skip_invalid: Annotated[bool, typer.Option(help="skip invalid rows instead of stopping")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace existing train.jsonl / heldout.jsonl")] = False,
) -> None:
    """Hold out a share of preference pairs, exactly as `alignkit train` does with `data.eval_fraction` and the
    same seed, and write both splits as JSONL (so `alignkit eval` can score the pairs a run never saw)."""
    from alignkit.data import load_records
    from alignkit.data.splits import split_and_cap
    from alignkit.io import write_jsonl

    if not 0 < eval_fraction < 1:
        _fail(f"--eval-fraction must be between 0 and 1, got {eval_fraction}")
    targets = [out_dir / "train.jsonl", out_dir / "heldout.jsonl"]
    if not overwrite and any(t.exists() for t in targets):
        _fail(f"{out_dir} already holds train.jsonl or heldout.jsonl; pass --overwrite to replace them")
    records = load_records(file, on_invalid="skip" if skip_invalid else "error", log=console.print).records
    train, heldout = split_and_cap(records, None, eval_fraction, seed, None, None)
    out_dir.mkdir(parents=True, exist_ok=True)
    for target, part in zip(targets, (train, heldout), strict=True):
        write_jsonl(target, [r.model_dump(mode="json", exclude_none=True) for r in part])
    console.print(f"wrote {len(train)} train and {len(heldout)} held-out pairs to {out_dir}")


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
@guarded
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
        mapping = json.loads(column_map) if column_map else None
    except json.JSONDecodeError as err:
        _fail(f"--column-map is not valid JSON ({err.msg} at character {err.pos}); "
              'give e.g. \'{"chosen": "pos"}\'')
    try:
        result = load_records(file, kind=kind, on_invalid="skip" if skip_invalid else "error",
                              column_map=mapping, log=console.print)
    except DataError as err:
        hint = " (use --skip-invalid to skip invalid rows and list them)" if err.row is not None else ""
        _fail(f"{err}{hint}")
    console.print(f"[bold]{file}[/]: {result.n_read} rows read, {len(result.records)} valid, "
                  f"{result.n_skipped} skipped")
    for rejected in result.rejected[:5]:
        console.print(f"  invalid row {rejected['row']}, field {rejected['field']}: {rejected['error']}")
    if kind == "pair":  # labels from `alignkit label` carry an annotator: report how much annotators agree
        from alignkit.label.agreement import agreement_lines

        for line in agreement_lines(result.records):
            console.print(line, highlight=False)
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
@guarded
def train(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("-c", "--config", help="YAML config")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the newest checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an earlier run in output_dir (deleted "
                                            "once the new run has its first checkpoint)")] = False,
    list_objectives: Annotated[bool, typer.Option("--list-objectives", help="print every objective and method "
                                                  "with its parameters, then exit")] = False,
) -> None:
    """Train with a YAML config; extra ``key=value`` arguments override it (e.g. optim.learning_rate=1e-4)."""
    if list_objectives:
        _print_objectives()
        return
    from alignkit.train.config import load_config
    from alignkit.train.loop import train as run_training

    overrides = list(ctx.args) + (["resume=true"] if resume else []) + (["overwrite=true"] if overwrite else [])
    cfg = load_config(config, overrides)
    result = run_training(cfg, log=console.print)
    console.print(f"run directory: {result.output_dir}")


def _print_objectives() -> None:
    import alignkit.train.methods  # noqa: F401 - registers every objective and method
    from alignkit.objectives.params import describe_all

    for name, rows in describe_all():
        table = Table("parameter", "type", "default", "description", title=f"[bold]{name}[/]", title_justify="left")
        for key, annotation, default, description in rows:
            table.add_row(key, annotation, repr(default), description)
        if not rows:
            table.add_row("(none)", "", "", "")
        console.print(table)


@app.command()
@guarded
def quickstart(
    output_dir: Path = Path("runs/quickstart"),
    steps: Annotated[int, typer.Option(help="training steps", min=1)] = 60,
    overrides: Annotated[list[str] | None, typer.Argument(help="config overrides, key=value")] = None,
) -> None:
    """Load the builtin SmolLM2, train it with DPO on the synthetic tasks, and show before/after."""
    from alignkit.quickstart import run_quickstart

    run_quickstart(output_dir=output_dir, steps=steps, console=console, overrides=overrides)


from alignkit.eval.command import eval_command, report_command  # noqa: E402 - kept next to its registration

app.command("eval")(guarded(eval_command))
app.command("report")(guarded(report_command))

from alignkit.decoding.command import generate_command  # noqa: E402 - kept next to its registration

app.command("generate")(guarded(generate_command))

from alignkit.decoding.analyze_command import analyze_app, steer_command, token_shift_command  # noqa: E402

analyze_app.command("token-shift")(guarded(token_shift_command))
analyze_app.command("steer")(guarded(steer_command))
app.add_typer(analyze_app, name="analyze")

from alignkit.probes.command import probe_command  # noqa: E402 - kept next to its registration

app.command("probe")(guarded(probe_command))

from alignkit.label.command import (  # noqa: E402 - kept next to its registration
    label_command,
    moral_aggregate_command,
    moral_serve_command,
)

app.command("label")(guarded(label_command))
moral_graph_app = typer.Typer(help="Moral Graph elicitation: serve the page, aggregate the votes.",
                              no_args_is_help=True)
moral_graph_app.command("serve")(guarded(moral_serve_command))
moral_graph_app.command("aggregate")(guarded(moral_aggregate_command))
app.add_typer(moral_graph_app, name="moral-graph")

from alignkit.train.sweep_command import SWEEP_CONTEXT, sweep_command  # noqa: E402 - kept next to its registration

app.command("sweep", context_settings=SWEEP_CONTEXT)(guarded(sweep_command))

from alignkit.scenarios.command import register as register_scenarios  # noqa: E402 - kept next to its registration

app.add_typer(register_scenarios(guarded), name="scenario")

from alignkit.rewards.command import REWARD_COMMANDS  # noqa: E402 - kept next to its registration

reward_app = typer.Typer(help="Pluralistic (PAL), game-theoretic (GTAlign) and LSC-combined rewards.",
                         no_args_is_help=True)
for _name, _command in REWARD_COMMANDS.items():
    reward_app.command(_name)(guarded(_command))
app.add_typer(reward_app, name="reward")


def main() -> None:  # pragma: no cover
    app()
