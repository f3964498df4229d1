"""One evaluation run from an :class:`~alignkit.eval.config.EvalConfig`: load the data and the models, score
pairs and/or generations, write the output set (and the report). What ``alignkit eval`` runs.

User errors (a missing file, a model that does not load, invalid rows) raise :class:`EvalError` with a
one-line message; the command prints it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.eval.config import EvalConfig
from alignkit.parallel import is_main, process_group

Log = Callable[[str], Any]


class EvalError(ValueError):
    """Something the user must fix (data, prompt file, model); the message is one line."""


@dataclass
class EvalRun:
    summary: dict[str, Any]
    paths: dict[str, Path]  # written files: per_example, generations, samples, config, summary, report


def default_out(spec: str) -> Path:
    """A training run's ``final/`` (or ``checkpoint-*``) evaluates into the run directory, so the report
    shows training curves and evaluation together; anything else goes to ``runs/eval/<name>``."""
    path = Path(spec).expanduser()
    if path.is_dir() and any((path.parent / f).is_file() for f in ("metrics.jsonl", "config.yaml")):
        return path.parent
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name if path.exists() else spec).strip("_") or "model"
    return Path("runs") / "eval" / name


def load_pairs(config: EvalConfig, log: Log) -> tuple[list[Any], dict[str, Any]]:
    """The preference pairs of ``config.data`` and where they came from."""
    from alignkit.data import DataError, PreferencePair, load_records, make_synthetic

    data = config.data
    if data.path == "synthetic":
        _, pairs = make_synthetic(n_train=0, n_test=data.max_examples or 200, seed=config.seed)
        return pairs, {"source": "synthetic (held-out split)", "n_read": len(pairs), "n_skipped": 0}
    try:
        loaded = load_records(data.path, kind="pair", column_map=data.column_map, on_invalid=data.on_invalid,
                              log=log)
    except DataError as err:
        row_error = getattr(err, "row", None) is not None  # a bad row can be skipped; a missing file cannot
        hint = " (use --on-invalid skip to skip invalid rows)" if row_error and data.on_invalid != "skip" else ""
        raise EvalError(f"{err}{hint}") from None
    except ValueError as err:
        raise EvalError(str(err)) from None
    pairs = [r for r in loaded.records if isinstance(r, PreferencePair)]
    if data.max_examples is not None:
        pairs = pairs[:data.max_examples]
    if not pairs:
        raise EvalError(f"{data.path}: no preference pairs to evaluate")
    return pairs, {"source": data.path, "n_read": loaded.n_read, "n_skipped": loaded.n_skipped}


def load_prompts(path: str) -> list[Any]:
    """The prompts of a prompt file (:func:`alignkit.data.prompts.load_prompts`: ``.txt``, a ``prompt``
    column, or preference pairs); problems are one-line :class:`EvalError`."""
    from alignkit.data import DataError
    from alignkit.data.prompts import load_prompts as read_prompt_file

    try:
        return [prompt for prompt, _ in read_prompt_file(path)]
    except (DataError, OSError, ValueError) as err:
        raise EvalError(str(err)) from None


class _Models:
    """The policy and every companion model, each spec loaded once (a companion equal to MODEL reuses it)."""

    def __init__(self, config: EvalConfig, seconds: dict[str, float], log: Log) -> None:
        self.config, self.seconds, self.log = config, seconds, log
        self.policy, self.tokenizer, seconds["load_model"] = self._load(config.model, "model")

    def _load(self, spec: str, role: str) -> tuple[Any, Any, float]:
        from alignkit.models import ModelNotAvailableError, load_model

        t0 = time.perf_counter()
        try:
            model, tokenizer = load_model(spec, dtype=self.config.dtype, device=self.config.device,
                                          log=lambda m: self.log(f"{role}: {m}"))
        except (ModelNotAvailableError, OSError, ValueError) as err:
            raise EvalError(f"cannot load {role} model {spec!r}: {err}") from None
        model.requires_grad_(False)
        return model, tokenizer, time.perf_counter() - t0

    def companion(self, spec: str | None, role: str) -> tuple[Any, Any]:
        if spec is None:
            return None, None
        if spec == self.config.model:  # same weights: reuse, and the recipe skips the duplicate forward pass
            return self.policy, self.tokenizer
        model, tokenizer, self.seconds[f"load_{role}"] = self._load(spec, role)
        return model, tokenizer


def _unique_prompts(pairs: list[Any], per_example: list[dict[str, Any]] | None, limit: int
                    ) -> tuple[list[Any], list[str] | None]:
    """Unique prompts in data order (several pairs often share one), with their ids from the pair table."""
    first_index: dict[str, int] = {}
    for i, pair in enumerate(pairs):
        key = json.dumps(pair.prompt if isinstance(pair.prompt, str) else [m.model_dump() for m in pair.prompt])
        first_index.setdefault(key, i)
    indices = list(first_index.values())[:limit]
    return [pairs[i].prompt for i in indices], [per_example[i]["prompt_id"] for i in indices] if per_example else None


def _generation(config: EvalConfig, models: _Models, prompts: list[Any], prompt_ids: list[str] | None,
                reference: tuple[Any, Any], log: Log) -> Any:
    from alignkit.eval.common import same_tokenizer
    from alignkit.eval.generations import evaluate_generations, synthetic_verifier
    from alignkit.rewards import LMJudge, load_reward_model

    gen, seconds = config.generation, models.seconds
    base_model, base_tok = models.companion(gen.baseline, "baseline")
    reward_model = None
    if gen.reward_model is not None:
        t0 = time.perf_counter()
        try:
            reward_model = load_reward_model(gen.reward_model, device=config.device, dtype=config.dtype)
        except (FileNotFoundError, ValueError) as err:
            raise EvalError(str(err)) from None
        seconds["load_reward_model"] = time.perf_counter() - t0
    judge = None
    if gen.judge is not None:
        judge_model, judge_tok = models.companion(gen.judge, "judge")
        try:
            judge = LMJudge(judge_model, judge_tok)
        except ValueError as err:
            raise EvalError(f"--judge {gen.judge}: {err}") from None
    text_prompts = [p for p in prompts if isinstance(p, str)]
    verifier = (synthetic_verifier if any(synthetic_verifier(p, "") is not None for p in text_prompts) else None)
    kl_reference, ref_tok = reference if gen.kl else (None, None)
    if kl_reference is not None and not same_tokenizer(ref_tok, models.tokenizer):
        log("skipping KL: the reference tokenizes differently from the policy")
        kl_reference = None
    return evaluate_generations(
        models.policy, models.tokenizer, prompts, baseline=base_model, baseline_tokenizer=base_tok,
        verifier=verifier, reward_model=reward_model, judge=judge, reference=kl_reference,
        kl_samples=gen.kl_samples, max_new_tokens=gen.max_new_tokens, batch_size=gen.batch_size,
        do_sample=gen.do_sample, temperature=gen.temperature, top_p=gen.top_p, system=gen.system, seed=config.seed,
        tie_margin=gen.tie_margin, n_bootstrap=gen.n_bootstrap, prompt_ids=prompt_ids, progress=config.progress)


def run_eval(config: EvalConfig, log: Log = print) -> EvalRun:
    """Evaluate as ``config`` says and write ``OUT/eval/`` (and ``OUT/report.html`` with ``config.report``)."""
    from alignkit.eval.preferences import evaluate_preferences
    from alignkit.eval.reward_models import is_reward_model, run_reward_eval
    from alignkit.eval.writers import write_result

    if is_reward_model(config.model):  # a sequence classifier: reward accuracy, calibration, length buckets
        return run_reward_eval(config, log)
    t_start = time.perf_counter()
    out_dir = config.out if config.out is not None else default_out(config.model)
    gen = config.generation
    file_prompts = load_prompts(gen.prompts)[:gen.max_prompts] if gen.prompts else None  # fail before slow work
    seconds: dict[str, float] = {}
    pairs, data_info = [], None
    if config.data.path is not None:
        t0 = time.perf_counter()
        pairs, data_info = load_pairs(config, log)
        seconds["load_data"] = time.perf_counter() - t0
        log(f"data: {len(pairs)} pairs from {data_info['source']}")

    models = _Models(config, seconds, log)
    reference = models.companion(config.reference, "reference")
    before = models.companion(config.before, "before")
    pref = config.preferences
    summary: dict[str, Any] = {
        "model": config.model, "reference": config.reference, "before": config.before, "data": data_info,
        "settings": {"beta": pref.beta, "alpha": pref.alpha, "alpha_key": pref.alpha_key,
                     "max_length": pref.max_length, "max_prompt_length": pref.max_prompt_length,
                     "batch_size": pref.batch_size, "device": str(next(models.policy.parameters()).device),
                     "dtype": config.dtype},
    }
    per_example = generations = None
    try:
        if pairs:
            result = evaluate_preferences(
                models.policy, models.tokenizer, pairs, reference=reference[0], before=before[0], beta=pref.beta,
                alpha=pref.alpha, batch_size=pref.batch_size, max_length=pref.max_length,
                max_prompt_length=pref.max_prompt_length, alpha_key=pref.alpha_key, alpha_max=pref.alpha_max,
                reference_tokenizer=reference[1], before_tokenizer=before[1], n_bootstrap=pref.n_bootstrap,
                progress=config.progress)
            summary["preferences"], per_example = result.summary, result.per_example
            seconds["preferences"] = result.summary["seconds"]["total"]
        if gen.enabled:
            prompts, prompt_ids = ((file_prompts, None) if file_prompts is not None
                                   else _unique_prompts(pairs, per_example, gen.max_prompts))
            result = _generation(config, models, prompts, prompt_ids, reference, log)
            summary["generation"], generations = result.summary, result.per_example
            seconds["generation"] = result.summary["seconds"]["total"]
    except EvalError:
        raise
    except ValueError as err:
        raise EvalError(str(err)) from None
    seconds["total"] = time.perf_counter() - t_start
    summary["seconds"] = seconds
    summary["processes"] = process_group()[1]
    if not is_main():  # several processes: every one holds the gathered results, the main one writes them
        return EvalRun(summary, {})
    paths = write_result(out_dir, summary, per_example, generations, fmt=config.format,
                         config=config.model_dump(mode="json"))
    if config.report:
        from alignkit.report import write_report

        paths["report"] = write_report(out_dir)
    return EvalRun(summary, paths)
