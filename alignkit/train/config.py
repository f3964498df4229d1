"""Typed run configuration, loadable from YAML and overridable with ``dotted.key=value`` arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alignkit.configs import ConfigError, StrictModel, apply_overrides, deep_merge, one_line, read_yaml_mapping
from alignkit.models.builtin import DEFAULT_MODEL


class ModelConfig(StrictModel):
    name: str = DEFAULT_MODEL  # builtin name, local directory, .gguf file or hub id
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # master weights; keep fp32 for training
    device: str = "auto"
    trust_remote_code: bool = False


class LoraConfig(StrictModel):
    enabled: bool = True
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"])
    merge_on_save: bool = False  # save a merged full model instead of the adapter


class SyntheticConfig(StrictModel):
    n_train: int = Field(2000, ge=1)
    n_test: int = Field(200, ge=0)
    seed: int = 0
    families: list[str] | None = None


class DataConfig(StrictModel):
    train: str = "synthetic"  # "synthetic" or a path / hub id readable by alignkit.data.load_records
    eval: str | None = None  # None: the synthetic test split, or `eval_fraction` of train
    kind: Literal["pair", "binary"] = "pair"
    column_map: dict[str, str] | None = None
    on_invalid: Literal["error", "skip"] = "error"
    eval_fraction: float = Field(0.05, ge=0, lt=1)  # 0: no held-out split (when data.eval is unset)
    max_eval_examples: int | None = Field(200, ge=0)
    max_train_examples: int | None = Field(None, ge=1)
    max_length: int = Field(512, ge=2)
    max_prompt_length: int | None = Field(None, ge=1)  # None: half of max_length
    use_chat_template: bool | None = None
    # "eos": a response ends at the end-of-sequence token; "template": keep what the chat template writes after
    # it (ChatML's newline), as TRL does, to reproduce TRL's numbers token for token
    response_end: Literal["eos", "template"] = "eos"
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)

    @model_validator(mode="after")
    def _prompt_fits(self) -> DataConfig:
        if self.max_prompt_length is None:
            self.max_prompt_length = self.max_length // 2
        if self.max_prompt_length >= self.max_length:
            raise ValueError(f"max_prompt_length ({self.max_prompt_length}) must be < max_length "
                             f"({self.max_length}): the response needs room")
        return self


class ObjectiveConfig(BaseModel):
    """``name`` and ``weight``; every other key is a parameter of the objective (or method), declared by its
    typed :class:`~alignkit.objectives.params.Params` model and checked when the config loads."""

    model_config = ConfigDict(extra="allow")
    name: str
    weight: float = 1.0

    @property
    def raw_params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def params(self) -> dict[str, Any]:
        """Validated keyword arguments, defaults filled in (a fresh dict each call)."""
        from alignkit.objectives.params import params_dict

        return params_dict(self.name, self.raw_params)


class OptimConfig(StrictModel):
    learning_rate: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    scheduler: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)

    @field_validator("adam_betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in value):
            raise ValueError(f"each Adam beta must be in [0, 1), got {list(value)}")
        return value


class TrainConfig(StrictModel):
    output_dir: Path = Path("runs/latest")
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    objectives: list[ObjectiveConfig] = Field(default_factory=lambda: [ObjectiveConfig(name="dpo", beta=0.1)])
    reference: Literal["auto", "copy", "adapter", "precomputed", "none"] = "auto"
    optim: OptimConfig = Field(default_factory=OptimConfig)
    max_steps: int = Field(100, ge=1)
    batch_size: int = Field(4, ge=1)  # pairs per micro-batch
    gradient_accumulation_steps: int = Field(1, ge=1)
    bf16: bool = False  # bf16 autocast for compute; master weights stay fp32
    # Recompute each layer's activations in the backward pass instead of keeping them: less memory (exact,
    # same results), at the cost of a second forward through the layers.
    activation_checkpointing: bool = False
    # with it on, checkpoint every n-th decoder layer only (1: all); the others keep their activations, which
    # trades memory back for speed (2: about half the saving for half the recompute)
    activation_checkpointing_every: int = Field(1, ge=1)
    # layers not fully checkpointed (all of them when activation_checkpointing is off) keep only their matmul and
    # attention outputs and recompute norms, rotary embeddings, activation functions and residual adds: about 40%
    # of a layer's activations kept, for 6-12% of the speed on SmolLM2 (exact; alignkit.train.recompute)
    selective_checkpointing: bool = False
    seed: int = 0
    eval_every: int = Field(50, ge=0)  # 0 disables periodic eval (final eval still runs)
    save_every: int = Field(50, ge=0)  # 0: only the final model
    log_every: int = Field(1, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    logprob_chunk_size: int = Field(1024, ge=1)
    # Preference batches: "shared_prefix" writes each prompt once with all its responses in one row (4-D mask,
    # positions restarting per response) when that is exact for the model, else falls back to "padded" rows
    # of [prompt | response] with the reason logged; "padded" forces the plain layout (debugging).
    layout: Literal["shared_prefix", "padded"] = "shared_prefix"
    # With shared_prefix, also pack several prompts' rows into one row (block-diagonal mask, rows no longer than
    # the longest group): no padding. Exact like shared_prefix; ignored by the padded layout.
    packing: bool = True
    # packed row capacity in tokens, "longest" (the batch's longest group) or "all" (one row per batch);
    # None: "all" where attention runs per segment, else "longest" (alignkit.engine.logprobs.packing_capacity)
    pack_row_tokens: Annotated[int, Field(ge=1)] | Literal["all", "longest"] | None = None
    max_tokens_per_batch: int | None = Field(None, ge=1)  # token-budget micro-batches instead of batch_size
    resume: bool = False
    # accelerate trackers written by the main process besides metrics.jsonl, e.g. [tensorboard] or [wandb]
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive"]] = Field(
        default_factory=list)
    # Start in a directory holding an earlier run: the old run is moved aside and deleted once this run has
    # saved its first checkpoint (or finished). Without it (and without resume) such a directory is refused.
    overwrite: bool = False
    progress: bool = True

    @field_validator("objectives")
    @classmethod
    def _at_least_one(cls, value: list[ObjectiveConfig]) -> list[ObjectiveConfig]:
        if not value:
            raise ValueError("objectives: give at least one, e.g. [{name: dpo, beta: 0.1}]")
        return value

    def check_objectives(self) -> None:
        """Every objective known and its parameters valid (:class:`ParamsError`, one line), before any data or
        model loads. Imports the registries (and so torch), hence not a pydantic validator."""
        import alignkit.train.methods  # noqa: F401 - registers every objective and method
        from alignkit.objectives.params import validate_params

        for i, objective in enumerate(self.objectives):
            validate_params(objective.name, objective.raw_params, where=f"objectives.{i}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then the YAML file, then ``key=value`` overrides, validated as one TrainConfig."""
    tree: dict[str, Any] = TrainConfig().model_dump(mode="json")
    tree["data"]["max_prompt_length"] = None  # derived from max_length unless the file or an override sets it
    if path is not None:
        deep_merge(tree, read_yaml_mapping(path))
    if overrides:
        tree = apply_overrides(tree, overrides)
    try:
        config = TrainConfig.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(one_line(error)) from None
    if config.resume and config.overwrite:
        raise ConfigError("resume and overwrite exclude each other: resume continues the run in output_dir, "
                          "overwrite replaces it")
    config.check_objectives()
    return config


def dump_config(config: TrainConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
