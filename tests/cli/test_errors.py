"""Every user error on every command is one line (``error: ...``), exit code 2, no traceback; ``--debug``
shows the traceback."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from alignkit.cli import app

runner = CliRunner()


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.fixture
def pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    return path


@pytest.mark.parametrize("yaml_text, expected", [
    ("max_steps: [1\n", "invalid YAML"),
    ("x: !!python/object/apply:os.system [echo hi]\n", "invalid YAML"),
    ("- just\n- a list\n", "must be a YAML mapping"),
    ("objectives: [{name: dpo, bta: 0.1}]\n", "unknown parameter 'bta'"),
    ("objectives: [{name: dpx}]\n", "did you mean 'dpo'"),
    ("objectives: [{name: dpo, beta: -1}]\n", "beta must be > 0"),
    ("log_every: 0\n", "log_every must be >= 1"),
    ("batch_size: -4\n", "batch_size must be >= 1"),
    ("data: {max_length: 64, max_prompt_length: 64}\n", "max_prompt_length (64) must be < max_length"),
])
def test_train_config_errors(tmp_path, yaml_text, expected):
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    assert expected in one_line_error(runner.invoke(app, ["train", "-c", str(config)]))


@pytest.mark.parametrize("override, expected", [
    ("objectives.5.name=dpo", "index 5 is past the end"),
    ("max_steps.x=1", "is a value, not a section"),
    ("no_equals_sign", "not of the form key=value"),
    ("model.name=smollm2-135m-instruc", "did you mean 'smollm2-135m-instruct'"),
])
def test_train_override_errors(tmp_path, override, expected):
    assert expected in one_line_error(runner.invoke(app, ["train", f"output_dir={tmp_path / 'run'}", override]))


def test_resume_and_overwrite_exclude_each_other(tmp_path):
    result = runner.invoke(app, ["train", "--resume", "--overwrite", f"output_dir={tmp_path}"])
    assert "exclude each other" in one_line_error(result)


def test_data_inspect_errors(pairs):
    assert "--column-map is not valid JSON" in one_line_error(
        runner.invoke(app, ["data", "inspect", str(pairs), "--column-map", "{bad"]))
    assert "kind" in one_line_error(runner.invoke(app, ["data", "inspect", str(pairs), "--kind", "nonsense"]))


def test_debug_shows_the_traceback(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("log_every: 0\n")
    result = runner.invoke(app, ["--debug", "train", "-c", str(config)])
    assert result.exit_code != 0 and result.exception is not None
    assert one_line_error(runner.invoke(app, ["train", "-c", str(config)]))  # the next call is quiet again


def test_quickstart_config_is_valid_and_rerunnable(tmp_path):
    from alignkit.quickstart import quickstart_config

    config = quickstart_config(tmp_path / "qs", 60, None)
    assert config.overwrite and config.data.max_prompt_length < config.data.max_length
    rejected = runner.invoke(app, ["quickstart", "--steps", "-1", "--output-dir", str(tmp_path / "qs")])
    assert rejected.exit_code == 2 and "--steps" in rejected.output and not (tmp_path / "qs").exists()
