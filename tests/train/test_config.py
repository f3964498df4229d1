from pathlib import Path

import pytest

from alignkit.configs import ConfigError
from alignkit.objectives import OBJECTIVES
from alignkit.train.config import dump_config, load_config
from alignkit.train.methods import METHODS

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_config_is_valid(path):
    config = load_config(path)
    for objective in config.objectives:
        assert objective.name in OBJECTIVES or objective.name in METHODS, objective.name


def test_overrides_reach_nested_fields_and_lists(tmp_path):
    (tmp_path / "c.yaml").write_text("objectives: [{name: dpo, beta: 0.1}]\nmax_steps: 10\n")
    config = load_config(tmp_path / "c.yaml", ["max_steps=3", "objectives.0.beta=0.25",
                                               "objectives.1={name: sft, weight: 0.5}", "optim.learning_rate=1e-4"])
    assert config.max_steps == 3 and config.optim.learning_rate == 1e-4
    assert [(o.name, o.weight, o.raw_params) for o in config.objectives] == [("dpo", 1.0, {"beta": 0.25}),
                                                                              ("sft", 0.5, {})]
    assert config.objectives[0].params == {"beta": 0.25, "label_smoothing": 0.0}  # defaults filled in
    assert load_config(None, []).model_dump() == load_config(None, None).model_dump()
    reloaded = tmp_path / "resolved.yaml"
    reloaded.write_text(dump_config(config))
    assert load_config(reloaded).model_dump() == config.model_dump()


def test_unknown_keys_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="learning_rat"):
        load_config(None, ["optim.learning_rat=1e-4"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["max_steps"])
