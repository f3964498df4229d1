"""Typed configuration of ``alignkit eval``: a YAML file, the command-line flags and ``key=value`` overrides,
validated as one :class:`EvalConfig` before any data or model loads.

``alignkit eval MODEL -c eval.yaml --data pairs.jsonl preferences.beta=0.2``: defaults, then the file, then
the flags (:data:`FLAGS` says which key each one sets), then the overrides; the last one wins. Every
numeric field is range-checked; an error is one line naming the key (and its flag).

```yaml
data: {path: synthetic, max_examples: 200}
reference: smollm2-135m-instruct
preferences: {beta: 0.1, alpha: 0.75}
generation: {enabled: true, max_prompts: 64, baseline: smollm2-135m-instruct, kl_samples: 2}
```
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from alignkit.configs import ConfigError, StrictModel, apply_overrides, deep_merge, one_line, read_yaml_mapping


class DataSection(StrictModel):
    path: str | None = None  # preference pairs: a file, a saved dataset, a hub id, or "synthetic"
    column_map: dict[str, str] | None = None  # our field -> your column, e.g. {chosen: pos}
    on_invalid: Literal["error", "skip"] = "error"
    max_examples: int | None = Field(None, ge=1)  # the first N pairs only (synthetic: N held-out pairs)


class PreferenceSection(StrictModel):
    beta: float = Field(0.1, gt=0)  # β of the implicit reward β·log(π/π_ref) and of R*
    alpha: float = Field(0.75, gt=0, lt=1)  # P(chosen ≻ rejected) for R* where a pair has no alpha_key metadata
    alpha_key: str = "agreement"  # metadata field holding a per-pair α
    alpha_max: float = Field(0.99, ge=0.5, lt=1)  # α clipped into [1 − alpha_max, alpha_max]
    max_length: int = Field(512, ge=2)  # prompt + response tokens
    max_prompt_length: int = Field(256, ge=1)  # prompt tokens kept when truncating
    batch_size: int = Field(8, ge=1)  # pairs per forward pass
    n_bootstrap: int = Field(1000, ge=0)  # resamples of the accuracy CI (0: no CI)

    @model_validator(mode="after")
    def _prompt_fits(self) -> PreferenceSection:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(f"max_prompt_length ({self.max_prompt_length}) must be < max_length "
                             f"({self.max_length})")
        return self


class GenerationSection(StrictModel):
    enabled: bool = False  # also generate and score responses
    prompts: str | None = None  # .txt (one per line) or JSONL with 'prompt'; default: the prompts of data.path
    max_prompts: int = Field(64, ge=1)
    max_new_tokens: int = Field(128, ge=1)
    batch_size: int = Field(16, ge=1)  # prompts per generation batch
    do_sample: bool = False  # greedy when false
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    system: str | None = None  # system prompt
    baseline: str | None = None  # model whose answers MODEL is compared with (win rates)
    reward_model: str | None = None  # sequence-classification model directory or hub id
    judge: str | None = None  # causal LM asked which answer is better, in both orders; needs baseline
    tie_margin: float = Field(0.05, ge=0, lt=0.5)  # judge ties: |P − 0.5| ≤ margin
    kl: bool = True  # KL(policy ‖ reference) on policy samples when a reference is given
    kl_samples: int = Field(1, ge=1)  # samples per prompt for the KL estimate
    n_bootstrap: int = Field(1000, ge=0)  # resamples of the win-rate CIs


class RewardModelSection(StrictModel):
    """Settings used when MODEL is a reward model (a sequence classifier; ``alignkit.eval.reward_models``)."""

    calibration_bins: int = Field(10, ge=2)  # equal-width bins of σ(margin) in the calibration table
    length_buckets: int = Field(4, ge=1)  # quantile buckets of mean response length
    subset_key: str = "subset"  # metadata field naming a pair's RewardBench subset


class EvalConfig(StrictModel):
    model: str = Field(min_length=1)  # policy: builtin name, model/adapter directory, .gguf file or hub id
    reference: str | None = None  # π_ref (same spec kinds)
    before: str | None = None  # earlier checkpoint: share of its mis-ranked pairs that MODEL flipped
    out: Path | None = None  # default: the run directory of RUN/final, else runs/eval/<name>
    format: Literal["parquet", "jsonl"] = "parquet"  # per-example tables
    report: bool = False  # also write OUT/report.html
    device: str = "auto"
    dtype: Literal["float32", "fp32", "bfloat16", "bf16", "float16", "fp16"] = "float32"
    seed: int = 0  # synthetic data and generation
    progress: bool = True
    data: DataSection = Field(default_factory=DataSection)
    preferences: PreferenceSection = Field(default_factory=PreferenceSection)
    generation: GenerationSection = Field(default_factory=GenerationSection)
    reward_model: RewardModelSection = Field(default_factory=RewardModelSection)

    @model_validator(mode="after")
    def _consistent(self) -> EvalConfig:
        gen = self.generation
        if self.data.path is None and not (gen.enabled and gen.prompts):
            raise ValueError("nothing to evaluate: give --data PATH|synthetic (data.path) and/or --generate "
                             "--prompts FILE (generation.enabled, generation.prompts)")
        if gen.judge and not gen.baseline:
            raise ValueError("--judge (generation.judge) compares against baseline answers: give --baseline "
                             "SPEC (generation.baseline)")
        if (gen.reward_model or gen.judge or gen.baseline or gen.prompts) and not gen.enabled:
            raise ValueError("--baseline, --reward-model, --judge and --prompts need --generate "
                             "(generation.enabled)")
        if self.before and self.data.path is None:
            raise ValueError("--before compares rankings of preference pairs: give --data (data.path)")
        if self.data.column_map and self.data.path == "synthetic":
            raise ValueError("--column-map (data.column_map) does not apply to --data synthetic")
        return self


# command-line flag -> config key
FLAGS: dict[str, str] = {
    "--data": "data.path", "--column-map": "data.column_map", "--on-invalid": "data.on_invalid",
    "--max-examples": "data.max_examples",
    "--reference": "reference", "--before": "before", "--out": "out", "--format": "format", "--report": "report",
    "--device": "device", "--dtype": "dtype", "--seed": "seed", "--progress": "progress",
    "--beta": "preferences.beta", "--alpha": "preferences.alpha", "--alpha-key": "preferences.alpha_key",
    "--max-length": "preferences.max_length", "--max-prompt-length": "preferences.max_prompt_length",
    "--batch-size": "preferences.batch_size",
    "--generate": "generation.enabled", "--prompts": "generation.prompts",
    "--max-prompts": "generation.max_prompts", "--max-new-tokens": "generation.max_new_tokens",
    "--gen-batch-size": "generation.batch_size", "--sample": "generation.do_sample",
    "--temperature": "generation.temperature", "--top-p": "generation.top_p", "--system": "generation.system",
    "--baseline": "generation.baseline", "--reward-model": "generation.reward_model",
    "--judge": "generation.judge", "--tie-margin": "generation.tie_margin", "--kl": "generation.kl",
    "--kl-samples": "generation.kl_samples",
}
_FLAG_OF = {key: flag for flag, key in FLAGS.items()}


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *sections, last = key.split(".")
        node = tree
        for section in sections:
            node = node.setdefault(section, {})
        node[last] = value
    return tree


def _accepted(key: str) -> str:
    """The keys accepted beside an unknown ``key`` (``preferences.bta``: beta, alpha, ...)."""
    section: Any = EvalConfig
    for name in key.split(".")[:-1]:
        field = section.model_fields.get(name)
        section = field.annotation if field is not None else None
        if not isinstance(section, type) or not issubclass(section, StrictModel):
            return ""
    return f" (accepted: {', '.join(section.model_fields)})"


def _explain(error: ValidationError) -> str:
    """:func:`alignkit.configs.one_line`, with each key's command-line flag beside it and, for an unknown key,
    the accepted ones."""
    parts = []
    for part in one_line(error).removeprefix("config: ").split("; "):
        key = re.match(r"[\w.]*", part).group(0)
        if key in _FLAG_OF:
            part = part.replace(key, f"{key} ({_FLAG_OF[key]})", 1)
        elif part.endswith(": unknown key"):
            part += _accepted(key)
        parts.append(part)
    return "; ".join(parts)


def load_eval_config(path: str | Path | None = None, overrides: list[str] | None = None,
                     flags: dict[str, Any] | None = None) -> EvalConfig:
    """Defaults, then the YAML file, then ``flags`` (config key -> value, e.g. from the command line), then
    ``key=value`` overrides, validated as one EvalConfig. Errors are one-line :class:`ConfigError`."""
    tree: dict[str, Any] = read_yaml_mapping(path) if path is not None else {}
    deep_merge(tree, _nested({k: v for k, v in (flags or {}).items() if v is not None}))
    if overrides:
        tree = apply_overrides(tree, overrides)
    try:
        return EvalConfig.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(_explain(error)) from None
