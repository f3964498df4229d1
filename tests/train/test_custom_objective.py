"""Adding an objective touches no alignkit file: a module that registers itself (with its typed parameters) is
enough to train with it by name, and its parameters are checked when the config loads."""

from __future__ import annotations

import importlib
import json
import math
import sys

import pytest

from alignkit.models import tiny_llama
from alignkit.objectives import OBJECTIVES, PARAMETERS, ParamsError
from alignkit.train.config import load_config
from alignkit.train.loop import train

TOY_MODULE = '''
"""A reference-free margin loss: softplus(margin - (mean log p(chosen) - mean log p(rejected)))."""

import torch.nn.functional as F
from pydantic import Field

from alignkit.objectives.base import ObjectiveOutput, PairLogps, mean, register
from alignkit.objectives.params import Params


class ToyMarginParams(Params):
    margin: float = Field(1.0, gt=0, description="target gap of the per-token mean log-probs, in nats")


@register("toy_margin", needs_reference=False, params=ToyMarginParams)
def toy_margin(logps: PairLogps, *, margin: float = 1.0) -> ObjectiveOutput:
    gap = logps.chosen.float() / logps.chosen_tokens.clamp(min=1) - \\
        logps.rejected.float() / logps.rejected_tokens.clamp(min=1)
    return ObjectiveOutput(F.softplus(margin - gap), {"toy/gap": mean(gap.detach()), "toy/margin": margin})
'''


@pytest.fixture
def toy_objective(tmp_path, monkeypatch):
    """Write the toy module to a temporary directory, put it on ``sys.path`` and import it (which registers
    ``toy_margin``); unregister it afterwards."""
    (tmp_path / "toy_objective_module.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("toy_objective_module")
    yield module
    OBJECTIVES.pop("toy_margin", None)
    PARAMETERS.pop("toy_margin", None)
    sys.modules.pop("toy_objective_module", None)


def make_config(tmp_path, objective: str):
    return load_config(None, [
        f"output_dir={tmp_path / 'run'}", "model.device=cpu", "progress=false", "lora.enabled=false",
        "batch_size=4", "max_steps=2", "eval_every=0", "save_every=0", "optim.learning_rate=1e-3",
        "data.synthetic.n_train=16", "data.synthetic.n_test=8", "data.max_eval_examples=8",
        f"objectives=[{objective}]",
    ])


def test_a_toy_objective_from_a_temporary_module_trains_by_name(tmp_path, tokenizer, toy_objective):
    config = make_config(tmp_path, "{name: toy_margin, margin: 2.0}")
    assert config.objectives[0].params == {"margin": 2.0}
    result = train(config, model=tiny_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None)
    lines = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if m["split"] == "train"]
    assert [m["step"] for m in steps] == [1, 2]
    assert all(m["toy/margin"] == 2.0 and math.isfinite(m["loss"]) for m in steps)
    assert (result.final_dir / "model.safetensors").is_file()


def test_a_toy_objective_parameter_is_checked_when_the_config_loads(tmp_path, toy_objective):
    assert make_config(tmp_path, "{name: toy_margin}").objectives[0].params == {"margin": 1.0}  # the default
    with pytest.raises(ParamsError) as error:
        make_config(tmp_path, "{name: toy_margin, margn: 2.0}")
    message = str(error.value)
    assert "\n" not in message
    assert "toy_margin" in message and "'margn'" in message and "accepted: margin" in message
    with pytest.raises(ParamsError, match=r"margin must be > 0"):
        make_config(tmp_path, "{name: toy_margin, margin: -1}")
