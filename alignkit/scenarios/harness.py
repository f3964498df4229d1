"""One scenario run end to end: plan, generate what is not cached, score, summarise, write.

An output directory holds ``transcripts.jsonl`` (one line per conversation, with the exact prompts: the
cache), ``cache/judge.jsonl`` (judge answers by content hash), ``scores.jsonl`` (measures per
conversation), ``summary.json`` (rates with 95% intervals per condition and group, differences) and
``run.json`` (models, samples, the scenario as run).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignkit.io import atomic_write_json, write_jsonl
from alignkit.scenarios.run import Speaker, generate_conversations
from alignkit.scenarios.score import CachedJudge, JudgeFn, score_transcripts, summary
from alignkit.scenarios.spec import Scenario, plan


def run_scenario(scenario: Scenario, items: list[dict[str, Any]], target: Speaker, out_dir: str | Path,
                 samples: int = 1, judge: JudgeFn | None = None, judge_name: str | None = None,
                 simulator: Speaker | None = None, progress: bool = True,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume, or re-score) ``scenario`` on ``target``; returns the summary written to disk."""
    if samples < 1:
        raise ValueError(f"--samples must be >= 1, got {samples}")
    out = Path(out_dir)
    start = time.perf_counter()
    planned = plan(scenario, items, samples, target.name, simulator.name if simulator else None)
    transcripts = generate_conversations(planned, scenario, out, target, simulator, progress, log)
    generated_at = time.perf_counter()
    cached = CachedJudge(judge, judge_name or "judge", out) if judge is not None else None
    rows = score_transcripts(scenario, planned, transcripts, cached)
    result = summary(scenario, rows)
    result.update(model=target.name, judge=judge_name, samples=samples,
                  judge_calls=cached.calls if cached else 0,
                  seconds={"generate": round(generated_at - start, 1),
                           "score": round(time.perf_counter() - generated_at, 1)})
    write_jsonl(out / "scores.jsonl", rows)
    atomic_write_json(out / "summary.json", result)
    atomic_write_json(out / "run.json", {"model": target.name, "judge": judge_name, "samples": samples,
                                         "simulator": simulator.name if simulator else None,
                                         "items": len(items), "scenario": scenario.model_dump()})
    return result


def load_speaker(spec: str, device: str = "auto", dtype: str = "float32", log=print) -> Speaker:
    from alignkit.models import load_model

    model, tokenizer = load_model(spec, dtype=dtype, device=device, log=log)
    return Speaker(spec, model, tokenizer)


def load_judge(spec: str, target: Speaker | None = None, device: str = "auto", log=print) -> JudgeFn:
    """A :class:`~alignkit.scenarios.score.YesNoJudge` on ``spec`` (the target's weights when the same)."""
    from alignkit.scenarios.score import YesNoJudge

    speaker = target if target is not None and target.name == spec else load_speaker(spec, device, log=log)
    return YesNoJudge(speaker.model, speaker.tokenizer, spec).ask
