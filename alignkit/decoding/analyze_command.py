"""``alignkit analyze``: ``token-shift`` (what alignment changes, token by token) and ``steer`` (how a trait
direction moves a model's held-out questionnaire answers). Registered in :mod:`alignkit.cli`.

Heavy imports happen inside the commands so ``alignkit --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()
analyze_app = typer.Typer(help="Analyse what alignment changes: token shift, steering.", no_args_is_help=True)


def parse_numbers(text: str, kind: type, option: str) -> list:
    """Comma-separated numbers of an option ("-4,0,4"), with a one-line error naming the option."""
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{option} expects comma-separated numbers, got {text!r}") from None


def _save(report: dict, out: Path | None) -> None:
    if out is not None:
        from alignkit.io import atomic_write_json

        atomic_write_json(out, report)
        console.print(f"wrote {out}")


def token_shift_command(
    aligned: Annotated[str, typer.Argument(help="the aligned model: builtin name, model/adapter directory, hub id")],
    base: Annotated[str, typer.Option("--base", help="the base model (same tokenizer); may equal ALIGNED when "
                                                     "the formats differ")],
    prompts: Annotated[str, typer.Option("--prompts", help=".txt (one prompt a line), a file with a 'prompt' "
                                                           "column or preference data")],
    out: Annotated[Path | None, typer.Option("--out", help="JSON report (summary and every position)")] = None,
    aligned_format: Annotated[str, typer.Option(help="chat, urial (URIAL's in-context prefix) or plain")] = "chat",
    base_format: Annotated[str, typer.Option(help="chat, urial or plain (the query turn alone)")] = "chat",
    max_new_tokens: Annotated[int, typer.Option(help="tokens of each greedy answer", min=1)] = 64,
    limit: Annotated[int | None, typer.Option(help="the first N prompts only", min=1)] = None,
    batch_size: Annotated[int, typer.Option(help="prompts per batch", min=1)] = 8,
    bucket: Annotated[int, typer.Option(help="positions per row of the by-position table", min=1)] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = "auto",
    dtype: Annotated[str, typer.Option(help="weights dtype")] = "float32",
) -> None:
    """URIAL's token-distribution shift: rank of each aligned greedy token under the base model."""
    from alignkit.decoding.token_shift import bucketed, run_token_shift

    report = run_token_shift(aligned, base, prompts, aligned_format=aligned_format, base_format=base_format,
                             max_new_tokens=max_new_tokens, limit=limit, batch_size=batch_size, device=device,
                             dtype=dtype, log=lambda m: console.print(m, highlight=False))
    shares = Table("class", "rank under base", "positions", "share",
                   title=f"token shift: {aligned} ({aligned_format}) against {base} ({base_format})")
    for name, ranks in (("unshifted", "0"), ("marginal", "1-2"), ("shifted", ">= 3")):
        shares.add_row(name, ranks, str(report["counts"][name]), f"{report['shares'][name]:.3f}")
    shares.add_row("mean P_base(token)", "", "", f"{report['mean_p_base']:.3f}")
    shares.add_row("mean KL(aligned || base)", "", "", f"{report['mean_kl']:.3f}")
    console.print(shares)
    positions = Table("positions", "count", "shifted", "marginal", title="shift by position")
    for row in bucketed(report["by_position"], bucket):
        positions.add_row(f"{row['from']}-{row['to']}", str(row["count"]), f"{row['shifted']:.3f}",
                          f"{row['marginal']:.3f}")
    console.print(positions)
    top = Table("token", "shifted", "occurrences", title="most shifted tokens")
    for row in report["most_shifted"][:15]:
        top.add_row(repr(row["token"]), str(row["shifted"]), str(row["occurrences"]))
    console.print(top)
    _save(report, out)


def steer_command(
    model: Annotated[str, typer.Argument(help="builtin name, model/adapter directory or hub id")],
    traits: Annotated[Path | None, typer.Option("--traits", help="questionnaire JSONL ('trait', 'statement', "
                                                "'keyed' + or -); default: the builtin sample")] = None,
    trait: Annotated[str | None, typer.Option("--trait", help="one trait (default: every trait of the file)")] = None,
    alphas: Annotated[str, typer.Option("--alphas", help="steering strengths, comma-separated")
                      ] = "-4,-3,-2,-1,0,1,2,3,4",
    layers: Annotated[str | None, typer.Option("--layers", help="decoder layers, comma-separated (default: the "
                                                                "middle one)")] = None,
    system: Annotated[str | None, typer.Option(help="system prompt")] = None,
    balanced: Annotated[bool, typer.Option("--balanced/--unbalanced", help="weigh + and - keyed items equally so "
                                           "the answer letter's direction cancels (--unbalanced: PAS's plain "
                                           "mean difference)")] = True,
    level: Annotated[str, typer.Option("--level", help="'layer' (decoder layers' outputs) or 'head' (attention "
                                       "heads chosen by probe accuracy, PAS)")] = "layer",
    heads: Annotated[int, typer.Option("--heads", help="head level: heads kept (capped by the model's)", min=1)] = 24,
    search: Annotated[bool, typer.Option("--search", help="also choose alpha from --alphas on the training items "
                                         "(highest keyed margin) and report the held-out answers there")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="JSON report")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = "auto",
    dtype: Annotated[str, typer.Option(help="weights dtype")] = "float32",
) -> None:
    """Fit each trait's steering direction on its training items, then report how the answers to its held-out
    items move with alpha (margin of the trait's pole letter, keyed 1..5 score)."""
    from alignkit.decoding.steer import run_steer_report

    report = run_steer_report(model, traits, trait, parse_numbers(layers or "", int, "--layers"),
                              parse_numbers(alphas, float, "--alphas"), system, balanced, device=device, dtype=dtype,
                              log=lambda m: console.print(m, highlight=False), level=level, heads=heads, search=search)
    names = list(report["traits"])
    table = Table("alpha", *[f"{n} margin" for n in names], "pooled margin", "pooled score", "toward pole",
                  title=f"steer ({level} level): held-out answers against alpha (layers {report['layers']})")
    for i, pooled in enumerate(report["pooled"]):
        table.add_row(f"{pooled['alpha']:g}", *[f"{report['traits'][n]['rows'][i]['margin']:+.3f}" for n in names],
                      f"{pooled['margin']:+.3f}", f"{pooled['score']:.3f}", f"{pooled['toward_pole']:.2f}")
    console.print(table)
    if search:
        found = Table("trait", "alpha (train)", "train margin", "held-out margin", "held-out score", "toward pole",
                      title="alpha searched on the training items, held-out answers at it")
        for name, fit in report["traits"].items():
            row = fit["search"]
            found.add_row(name, f"{row['alpha']:g}", f"{row['train_margin']:+.3f}", f"{row['held_out']['margin']:+.3f}",
                          f"{row['held_out']['score']:.3f}", f"{row['held_out']['toward_pole']:.2f}")
        console.print(found)
    _save(report, out)
