"""``alignkit reward ...``: PAL (pluralistic rewards from user-tagged preferences), GTAlign and LSC commands.

The functions are registered in :mod:`alignkit.cli` (each wrapped in ``guarded``) from :data:`REWARD_COMMANDS`.
Heavy imports (torch, transformers) happen inside the commands so ``alignkit --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()

Encoder = Annotated[str, typer.Option("--encoder", help="all-minilm-l6-v2 (builtin sentence encoder), an encoder "
                                                        "directory / hub id, or policy:MODEL (a causal LM's hidden "
                                                        "state at the response's last token)")]
UserKey = Annotated[str | None, typer.Option("--user-key", help="column holding the user id (default: user_id, "
                                                                "else user)")]
Device = Annotated[str, typer.Option(help="cpu, cuda, ...")]


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise ValueError(f"{path} exists and is not empty; pass --overwrite to replace it")


def _ci(entry: dict[str, float]) -> str:
    return f"{entry['mean']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def _print_report(report: dict[str, Any]) -> None:
    table = Table("users", "model", "labels per user", "per-user accuracy [95% CI]", "n users",
                  title="[bold]per-user accuracy[/]", title_justify="left")
    for section in ("train", "seen_users"):
        if section in report:
            part = report[section]
            for name in ("pal", "bradley_terry"):
                if name in part:
                    table.add_row(section.replace("_", " "), name, "all", _ci(part[name]), str(part[name]["users"]))
    if "new_users" in report:
        part = report["new_users"]
        if "bradley_terry" in part:
            table.add_row("new users", "bradley_terry", "0", _ci(part["bradley_terry"]),
                          str(part["bradley_terry"]["users"]))
        table.add_row("new users", "pal (mean mixture)", "0", _ci(part["pal_n0"]), str(part["pal_n0"]["users"]))
        for n, entry in part["pal"].items():
            table.add_row("new users", "pal (adapted)", n, _ci(entry), str(entry["users"]))
    if "held_out" in report:
        table.add_row("adapted users", "pal", str(report["shots"]), _ci(report["held_out"]),
                      str(report["held_out"]["users"]))
    console.print(table)


def _finish(report: dict[str, Any], note: str, path: Path | None = None) -> None:
    """Print the report table and ``note``; also write the report as JSON to ``path`` when given."""
    from alignkit.io import atomic_write_json

    _print_report(report)
    console.print(note)
    if path is not None:
        atomic_write_json(path, report)
        console.print(f"report: {path}")


def make_users_command(
    out: Annotated[Path, typer.Argument(help="directory for train.jsonl, test.jsonl and new_users.jsonl")],
    users: Annotated[int, typer.Option(help="users seen in training", min=1)] = 40,
    new_users: Annotated[int, typer.Option(help="users held out of training", min=0)] = 20,
    train_pairs: Annotated[int, typer.Option(help="training pairs per seen user", min=1)] = 40,
    test_pairs: Annotated[int, typer.Option(help="held-out pairs per seen user", min=0)] = 20,
    new_user_pairs: Annotated[int, typer.Option(help="pairs per new user", min=1)] = 40,
    noise: Annotated[float, typer.Option(help="probability of flipping a label", min=0, max=0.5)] = 0.0,
    seed: Annotated[int, typer.Option(help="generator seed")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace files in a non-empty OUT")] = False,
) -> None:
    """Synthetic preferences of heterogeneous users (short/detailed × formal/casual groups), with user ids."""
    from alignkit.data.synthetic import write_jsonl
    from alignkit.data.synthetic.heterogeneous import make_heterogeneous

    _refuse_existing(out, overwrite)
    splits = make_heterogeneous(users, new_users, train_pairs, test_pairs, new_user_pairs, seed, noise=noise)
    for name, pairs in splits.items():
        if pairs:
            write_jsonl(pairs, out / f"{name}.jsonl")
            console.print(f"{out / f'{name}.jsonl'}: {len(pairs)} pairs")


def pal_train_command(
    data: Annotated[Path, typer.Argument(help="preference pairs with a user id per row (user_id or user column)")],
    out: Annotated[Path, typer.Option("--out", help="model directory to write")],
    encoder: Encoder = "all-minilm-l6-v2",
    prototypes: Annotated[int, typer.Option("--prototypes", help="K prototypes", min=1)] = 4,
    dim: Annotated[int, typer.Option(help="preference-space dimension", min=1)] = 64,
    hidden: Annotated[int, typer.Option(help="projector hidden width", min=1)] = 256,
    epochs: Annotated[int, typer.Option(help="passes over the pairs", min=1)] = 20,
    batch_size: Annotated[int, typer.Option(help="pairs per step", min=1)] = 32,
    loss: Annotated[str, typer.Option(help="hinge (margin 1, the reference default) or logistic")] = "hinge",
    balance_users: Annotated[bool, typer.Option("--balance-users", help="weigh each pair 1/(its user's pairs)")]
    = False,
    baseline: Annotated[bool, typer.Option("--baseline/--no-baseline", help="also train one Bradley-Terry model "
                                                                            "on the same embeddings")] = True,
    seed: Annotated[int, typer.Option(help="initialisation and shuffling seed")] = 0,
    user_key: UserKey = None,
    device: Device = "cpu",
    report: Annotated[Path | None, typer.Option("--report", help="also write the summary as JSON")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing model directory")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="progress bar")] = True,
) -> None:
    """Train PAL (ideal-point mixture, Chen et al. 2024) on user-tagged preference pairs."""
    from alignkit.rewards.pal_eval import train_from_file

    if loss not in ("hinge", "logistic"):
        raise ValueError(f"--loss must be hinge or logistic, got {loss!r}")
    _refuse_existing(out, overwrite)
    summary = train_from_file(data, out, encoder, baseline, device, user_key, progress, log=console.print,
                              prototypes=prototypes, dim=dim, hidden=hidden, epochs=epochs, batch_size=batch_size,
                              loss=loss, balance_users=balance_users, seed=seed)
    _finish(summary, f"model: {out} ({summary['seconds']}s)", report)


def pal_adapt_command(
    model: Annotated[Path, typer.Argument(help="PAL model directory")],
    data: Annotated[Path, typer.Option("--data", help="pairs of new users (user id per row)")],
    shots: Annotated[int, typer.Option("--shots", help="labels per user used to fit its weights (the first n "
                                                       "pairs of each user)", min=1)],
    out: Annotated[Path | None, typer.Option("--out", help="write the extended model here (default: MODEL)")] = None,
    steps: Annotated[int, typer.Option(help="optimisation steps", min=1)] = 300,
    lr: Annotated[float, typer.Option(help="Adam learning rate of the user logits", min=0)] = 0.05,
    seed: Annotated[int, typer.Option(help="initialisation seed")] = 0,
    user_key: UserKey = None,
    device: Device = "cpu",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="refit users the model already has")] = False,
) -> None:
    """Fit new users' mixture weights from a few labels each, the shared parts frozen, and add them to the model."""
    from alignkit.rewards.pal import read_config
    from alignkit.rewards.pal_eval import adapt_from_file

    loss = read_config(model)["train"].get("loss", "hinge")
    summary = adapt_from_file(model, data, shots, out, overwrite, device, user_key, seed, log=console.print,
                              steps=steps, lr=lr, loss=loss)
    _finish(summary, f"{summary['users']} users added to {out or model}")


def pal_eval_command(
    model: Annotated[Path, typer.Argument(help="PAL model directory")],
    data: Annotated[Path, typer.Option("--data", help="user-tagged pairs: the model's users and/or new users")],
    shots: Annotated[str, typer.Option("--shots", help="few-shot sizes for new users, comma-separated")] =
    "1,2,4,8,16",
    repeats: Annotated[int, typer.Option(help="draws of the shots per size", min=1)] = 5,
    test_pairs: Annotated[int, typer.Option(help="last pairs of each new user kept for testing", min=1)] = 16,
    steps: Annotated[int, typer.Option(help="adaptation steps", min=1)] = 300,
    lr: Annotated[float, typer.Option(help="adaptation learning rate", min=0)] = 0.05,
    seed: Annotated[int, typer.Option(help="seed of the shot draws")] = 0,
    user_key: UserKey = None,
    device: Device = "cpu",
    report: Annotated[Path | None, typer.Option("--report", help="also write the report as JSON")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="progress bar while embedding")] = True,
) -> None:
    """Per-user accuracy of PAL against one Bradley-Terry model, with few-shot adaptation for new users."""
    from alignkit.rewards.pal import read_config
    from alignkit.rewards.pal_eval import eval_from_file

    try:
        sizes = [int(s) for s in shots.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--shots must be comma-separated integers, got {shots!r}") from None
    if any(n < 1 for n in sizes):
        raise ValueError(f"--shots must be positive, got {shots!r}")
    loss = read_config(model)["train"].get("loss", "hinge")
    summary = eval_from_file(model, data, sizes, repeats, test_pairs, device, user_key, seed, log=console.print,
                             progress=progress, steps=steps, lr=lr, loss=loss)
    _finish(summary, f"({summary['seconds']}s)", report)


def gtalign_score_command(
    file: Annotated[Path, typer.Argument(help="JSON Lines with 'prompt' and 'response' (or 'text') columns")],
    quality: Annotated[str, typer.Option("--quality", help="answer quality of the <response> text: verifier "
                                                           "(synthetic tasks), a reward-model directory, or "
                                                           "package.module:attr")]
    = "verifier:synthetic",
    limit: Annotated[int | None, typer.Option(help="the first N rows only", min=1)] = None,
) -> None:
    """Score outputs with the GTAlign mutual-welfare reward and print the reward and its parts per line."""
    from alignkit.io import read_jsonl
    from alignkit.rewards.gtalign import build_gtalign

    rows = read_jsonl(file)[:limit]
    missing = [i + 1 for i, r in enumerate(rows) if "prompt" not in r or not ({"response", "text"} & set(r))]
    if missing:
        raise ValueError(f"{file}, line {missing[0]}: needs 'prompt' and 'response' (or 'text') columns")
    reward = build_gtalign({"quality": _quality_spec(quality)}, log=console.print)
    welfare = reward.welfare([r["prompt"] for r in rows], [r.get("response", r.get("text")) for r in rows])
    for i, w in enumerate(welfare):
        typer.echo(json.dumps({"line": i + 1, "reward": round(w.reward, 4), "user": round(w.user, 4),
                               "llm": round(w.llm, 4), **w.parts}))


def _quality_spec(spec: str) -> Any:
    """A :func:`~alignkit.rewards.build_source` value: ``verifier``, a reward-model directory, or module:attr."""
    if spec in ("verifier", "verifier:synthetic"):
        return "verifier"
    path = spec.split(":", 1)[1] if spec.startswith(("rm:", "reward_model:")) else spec
    return {"type": "reward_model", "model": path} if Path(path).expanduser().is_dir() else spec


def gtalign_instruction_command() -> None:
    """Print the GTAlign format instruction (use it as the system prompt of the policy being scored)."""
    from alignkit.rewards.gtalign import GTALIGN_INSTRUCTION

    typer.echo(GTALIGN_INSTRUCTION)


def gtalign_data_command(
    out: Annotated[Path, typer.Argument(help="directory for train.jsonl and test.jsonl")],
    n_train: Annotated[int, typer.Option(help="training pairs", min=1)] = 512,
    n_test: Annotated[int, typer.Option(help="held-out pairs", min=0)] = 32,
    families: Annotated[str | None, typer.Option(help="comma-separated synthetic families (default: all)")] = None,
    seed: Annotated[int, typer.Option(help="generator seed")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace files in a non-empty OUT")] = False,
) -> None:
    """Synthetic tasks for GTAlign training: the format instruction as system prompt, both responses written in
    the payoff-matrix format (the chosen one is GRAO's formatted reference answer)."""
    from alignkit.data.synthetic import make_synthetic, write_jsonl
    from alignkit.rewards.gtalign import gtalign_pairs

    _refuse_existing(out, overwrite)
    train, test = make_synthetic(n_train, n_test, seed=seed, families=families.split(",") if families else None)
    for name, pairs in (("train", train), ("test", test)):
        if pairs:
            write_jsonl(gtalign_pairs(pairs), out / f"{name}.jsonl")
            console.print(f"{out / f'{name}.jsonl'}: {len(pairs)} pairs")


def lsc_prompts_command(
    out: Annotated[Path, typer.Argument(help="JSON Lines file of prompts (a 'prompt' column) to write")],
    n: Annotated[int, typer.Option("--n", help="number of distinct prompts", min=1)] = 96,
    seed: Annotated[int, typer.Option(help="generator seed")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing file")] = False,
) -> None:
    """Held-out synthetic prompts asking for a fact under a word limit (two checks: correct and brief)."""
    from alignkit.io import write_jsonl
    from alignkit.rewards.lsc_select import length_prompts

    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")
    write_jsonl(out, [{"prompt": p} for p in length_prompts(n, seed)])
    console.print(f"{out}: {n} prompts")


def lsc_compare_command(
    file: Annotated[Path, typer.Argument(help="alignkit generate output (JSON Lines with 'candidates')")],
    select: Annotated[list[str], typer.Option("--select", help="NAME=SPEC[+SPEC...], SPEC [W*]correct|brief|"
                                                               "brevity|lsc:SPEC|lsc@Q:SPEC|RM_DIR|module:attr; "
                                                               "repeat; the first is the one others are "
                                                               "compared with")],
    passes: Annotated[list[str], typer.Option("--passes", help="a 0/1 check every pick should pass (repeat: all "
                                                               "must pass), e.g. correct, brief, verifier")],
    report: Annotated[Path | None, typer.Option("--report", help="also write the comparison as JSON")] = None,
    device: Device = "cpu",
) -> None:
    """Reselect the same best-of-N candidates with several reward combinations (raw sum vs LSC sum) and compare
    the share of picks passing every check, with 95% bootstrap CIs over prompts."""
    from alignkit.io import atomic_write_json, read_jsonl
    from alignkit.rewards.lsc_select import compare_selection

    result = compare_selection(read_jsonl(file), select, passes, device, console.print, source=str(file))
    table = Table("selection", "pass all checks [95% CI]", *passes, "words", "minus first selector [95% CI]",
                  title=f"[bold]{result['prompts']} prompts, {result['candidates']} candidates[/]",
                  title_justify="left")
    first = result["baselines"]["first_candidate"]
    table.add_row("first candidate (no selection)", _ci(first["pass_all"]),
                  *(f"{first['per_check'][c]:.3f}" for c in passes), f"{first['words']:.1f}", "")
    for name, entry in result["selectors"].items():
        diff = next((v for k, v in entry.items() if k.startswith("minus_")), None)
        table.add_row(f"{name}: {entry['spec']}", _ci(entry["pass_all"]),
                      *(f"{entry['per_check'][c]:.3f}" for c in passes), f"{entry['words']:.1f}",
                      _ci(diff) if diff else "")
    table.add_row("any candidate (upper bound)", _ci(result["baselines"]["any_candidate"]["pass_all"]),
                  *([""] * len(passes)), "", "")
    console.print(table)
    if report is not None:
        atomic_write_json(report, result)
        console.print(f"report: {report}")


REWARD_COMMANDS = {
    "make-users": make_users_command,
    "pal-train": pal_train_command,
    "pal-adapt": pal_adapt_command,
    "pal-eval": pal_eval_command,
    "gtalign-score": gtalign_score_command,
    "gtalign-instruction": gtalign_instruction_command,
    "gtalign-data": gtalign_data_command,
    "lsc-prompts": lsc_prompts_command,
    "lsc-compare": lsc_compare_command,
}
