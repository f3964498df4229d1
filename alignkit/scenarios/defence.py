"""The poisoned-context defence data (Dialectical Alignment, 2024; a *reconstruction*, see
:mod:`alignkit.scenarios.poison`): run every reasoning strategy on every training case, keep the better and
worse path per case, and write files ``alignkit train`` reads.

Output directory: ``paths/`` (the strategy run: transcripts, scores, summary; cached and resumable like any
scenario run), ``pairs.jsonl`` (``prompt``, ``chosen``, ``rejected``, ``system``: preference pairs, also SFT
data since the ``sft`` objective trains on ``chosen``), ``sft.jsonl`` (``prompt``, ``response``,
``system``), and ready configs ``train_sft.yaml`` and ``train_dpo.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from alignkit.io import atomic_write_text, read_jsonl, write_jsonl
from alignkit.scenarios.harness import run_scenario
from alignkit.scenarios.poison import STRATEGIES, defence_rows
from alignkit.scenarios.run import Speaker, load_transcripts
from alignkit.scenarios.spec import Condition, Scenario, plan


def strategy_scenario(scenario: Scenario) -> Scenario:
    """The scenario with every condition split by strategy (condition ``c|strategy``), the strategy's
    instruction appended to each user turn."""
    if "{strategy}" in "".join(scenario.turns):
        raise ValueError(f"scenario {scenario.name}: turns already use {{strategy}}")
    if not {"correct", "adopted"} <= {m.name for m in scenario.measures}:
        raise ValueError(f"scenario {scenario.name}: the defence builder needs measures 'correct' and 'adopted'")
    conditions = [Condition(name=f"{c.name}|{s}", vars={**c.vars, "strategy": text})
                  for c in scenario.conditions for s, text in STRATEGIES.items()]
    return scenario.model_copy(update={"conditions": conditions, "differences": [], "group_by": [],
                                       "turns": [t + "\n\n{strategy}" for t in scenario.turns]})


def _train_config(kind: str, data: Path, model: str) -> str:
    objectives = [{"name": "sft"}] if kind == "sft" else [{"name": "dpo", "beta": 0.1}, {"name": "sft", "weight": 0.2}]
    config = {"output_dir": f"runs/poison_defence_{kind}", "model": {"name": model},
              "lora": {"enabled": True, "r": 16, "alpha": 32},
              "data": {"train": str(data), "max_length": 384, "max_prompt_length": 320, "eval_fraction": 0.1},
              "objectives": objectives, "optim": {"learning_rate": 5.0e-4, "warmup_steps": 2},
              "max_steps": 20, "batch_size": 4, "eval_every": 10, "save_every": 20}
    return (f"# Poisoned-context defence ({kind}); written by `alignkit scenario defence-data`.\n"
            f"# Run: alignkit train -c THIS_FILE   (override anything: max_steps=40)\n"
            + yaml.safe_dump(config, sort_keys=False))


def build_defence_data(scenario: Scenario, items: list[dict[str, Any]], target: Speaker, out_dir: str | Path,
                       samples: int = 1, progress: bool = True,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the strategies on ``items`` (use the training split), write the pairs and configs; returns counts."""
    if any(c.vars.get("strategy") for c in scenario.conditions):
        raise ValueError(f"scenario {scenario.name}: a condition already sets 'strategy'")
    out = Path(out_dir)
    paths = strategy_scenario(scenario)
    run_scenario(paths, items, target, out / "paths", samples=samples, progress=progress, log=log)
    planned = plan(paths, items, samples, target.name)
    transcripts = load_transcripts(out / "paths")
    scores = {row["key"]: row["scores"] for row in read_jsonl(out / "paths" / "scores.jsonl")}
    cases: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for p in planned:
        base, strategy = p.condition.rsplit("|", 1)
        cases.setdefault((p.item_id, f"{base}#{p.sample}"), []).append(
            {"strategy": strategy, "scores": scores[p.key], "reply": transcripts[p.key]["replies"][-1],
             "variables": p.variables})
    plain = {(p.item_id, f"{p.condition}#{p.sample}"): (p.system, p.turns[0])
             for p in plan(scenario, items, samples, target.name)}
    rows = defence_rows(cases, lambda item_id, condition: plain[(item_id, condition)])
    write_jsonl(out / "pairs.jsonl", rows)
    write_jsonl(out / "sft.jsonl", [{"prompt": r["prompt"], "response": r["chosen"], "system": r["system"]}
                                    for r in rows])
    for kind in ("sft", "dpo"):
        atomic_write_text(out / f"train_{kind}.yaml", _train_config(kind, (out / "pairs.jsonl").resolve(),
                                                                    target.name))
    sources: dict[str, int] = {}
    for r in rows:
        sources[r["chosen_source"]] = sources.get(r["chosen_source"], 0) + 1
    result = {"cases": len(cases), "pairs": len(rows), "chosen_from": sources, "out": str(out)}
    log(f"defence data: {len(rows)} pairs from {len(cases)} cases (chosen from {sources}) in {out}")
    return result
