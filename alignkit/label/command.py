"""``alignkit label`` (preference labelling in the browser) and ``alignkit moral-graph serve|aggregate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

HOST_HELP = "address to bind; keep 127.0.0.1 unless annotators on other machines must reach it"


def label_command(
    input: Annotated[str, typer.Argument(help="pairs, or prompts with candidates (alignkit generate output)")],
    out: Annotated[Path, typer.Option("--out", help="labels file (.jsonl); resumed when it exists")],
    annotator: Annotated[str, typer.Option(help="annotator name (a page opened with ?annotator=NAME "
                                                "labels as NAME instead)")] = "annotator",
    port: Annotated[int, typer.Option(help="port on localhost", min=0, max=65535)] = 8765,
    host: Annotated[str, typer.Option(help=HOST_HELP)] = "127.0.0.1",
    agreement: Annotated[bool, typer.Option("--agreement/--no-agreement", help="show a per-pair agreement "
                                            "slider (P(chosen better), the eval's alpha)")] = False,
    max_pairs_per_prompt: Annotated[int | None, typer.Option(help="with candidates: label at most this many "
                                                             "pairs per prompt (drawn with --seed)", min=1)] = None,
    seed: Annotated[int, typer.Option(help="seed of the left/right order and of the pair draw")] = 0,
) -> None:
    """Label which of two responses is better in the browser; writes TRL preference JSONL."""
    from alignkit.label.pairs import load_pairs
    from alignkit.label.server import build_app, serve
    from alignkit.label.session import LabelSession

    pairs = load_pairs(input, max_pairs_per_prompt=max_pairs_per_prompt, seed=seed)
    session = LabelSession(pairs, out, default_annotator=annotator, agreement_slider=agreement, seed=seed)
    done = len(session.store.done(session.default_annotator) & session.by_id.keys())
    typer.echo(f"{len(pairs)} pairs from {input}; {done} already labelled by {annotator} in {out}")
    serve(build_app(label=session), host, port, "/", log=typer.echo)


def moral_serve_command(
    scenario: Annotated[Path, typer.Argument(help="scenario YAML: question, contexts, values, stories")],
    out: Annotated[Path, typer.Option("--out", help="directory for answers, cards and votes (JSONL)")],
    port: Annotated[int, typer.Option(help="port on localhost", min=0, max=65535)] = 8765,
    host: Annotated[str, typer.Option(help=HOST_HELP)] = "127.0.0.1",
) -> None:
    """Serve the Moral Graph elicitation page (context, values card, wiser-than votes, legitimacy)."""
    from alignkit.label.moral_api import MoralSession
    from alignkit.label.moral_graph import load_scenario
    from alignkit.label.server import build_app, serve

    session = MoralSession(load_scenario(scenario), out)
    typer.echo(f"{len(session.scenario.contexts)} contexts, {len(session.scenario.stories)} stories; "
               f"answers go to {out}")
    serve(build_app(moral=session), host, port, "/moral", log=typer.echo)


def moral_aggregate_command(
    scenario: Annotated[Path, typer.Argument(help="the scenario YAML the session used")],
    directory: Annotated[Path, typer.Argument(help="the --out directory of `alignkit moral-graph serve`")],
    out: Annotated[Path | None, typer.Option("--out", help="where to write (default: DIRECTORY)")] = None,
) -> None:
    """PageRank per context, top values and legitimacy summary: moral_graph.json, .png and report.html."""
    from alignkit.label.moral_graph import load_scenario
    from alignkit.label.moral_report import export

    if not directory.is_dir():
        raise FileNotFoundError(f"elicitation directory {directory} not found")
    paths = export(load_scenario(scenario), directory, out)
    summary = json.loads(paths["json"].read_text(encoding="utf-8"))
    for ctx in summary["contexts"]:
        titles = {n["id"]: n["title"] for n in ctx["nodes"]}
        top = ", ".join(titles[t] for t in ctx["top"]) or "(no kept edges yet)"
        typer.echo(f"{ctx['text']}: top values {top}")
    typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))
