"""``alignkit sweep`` on tiny models: grid parsing, validation before any training, one run directory per
point, resume of an interrupted point, no rerun of finished ones, and a table whose best point is the one
the runs' own metrics.jsonl files say is best."""

from __future__ import annotations

import csv
import json

import pytest

from alignkit.configs import ConfigError
from alignkit.io import read_jsonl
from alignkit.models import tiny_llama
from alignkit.train.loop import train
from alignkit.train.sweep import SweepTable, parse_grid, plot_table, point_name, run_sweep
from alignkit.train.sweep_command import split_arguments

BASE = ["model.device=cpu", "progress=false", "lora.enabled=false", "batch_size=2", "max_steps=4", "eval_every=0",
        "save_every=2", "optim.scheduler=constant", "data.synthetic.n_train=16", "data.synthetic.n_test=4",
        "data.max_eval_examples=4"]
GRID = ["optim.learning_rate=[3e-3,1e-6]", "objectives.0.beta=[0.1]"]
METRIC = "eval/rewards/margins"


class Killed(Exception):
    pass


def tiny_trainer(tokenizer, calls: list, kill_point: str | None = None):
    """Trains each point on a fresh tiny model, recording (point directory name, resume); the point named
    ``kill_point`` stops right after its step-2 checkpoint as if the process were killed."""

    def train_point(config):
        calls.append((config.output_dir.name, config.resume))
        stop = 2 if config.output_dir.name == kill_point else None
        train(config, model=tiny_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None, stop_after_steps=stop)
        if stop is not None:
            raise Killed

    return train_point


def final_eval(run_dir):
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == "eval" and r["step"] == 4][-1]


def test_grid_values_are_yaml_lists_and_errors_are_one_line():
    axes = parse_grid(["optim.learning_rate=[1e-5, 5e-5]", "objectives.0.beta=[0.1,0.3]", "lora.enabled=[true]"])
    assert [a.values for a in axes] == [[1e-5, 5e-5], [0.1, 0.3], [True]]  # 1e-5 is a string to YAML 1.1
    bad = {"optim.learning_rate=[1e-5,": "not valid YAML", "optim.learning_rate=1e-5": "must be a YAML list",
           "optim.learning_rate=[]": "empty", "optim.learning_rate": r"key=\[value", "seed=[1,1]": "repeated",
           "output_dir=[a,b]": "set by the sweep"}
    for item, message in bad.items():
        with pytest.raises(ConfigError, match=message) as error:
            parse_grid([item])
        assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="given twice"):
        parse_grid(["seed=[1]", "seed=[2]"])
    long_a, long_b = point_name({"data.train": "a" * 300}), point_name({"data.train": "a" * 299 + "b"})
    assert len(long_a) < 255 and long_a != long_b and long_a.startswith("data.train=aaa")
    assert point_name({"x": "a/b c"}) == "x=a_b_c"
    assert split_arguments(["a=[1]"], ["b=[2, 3]", "max_steps=5", "c=[[x,y]]"]) == (
        ["a=[1]", "b=[2, 3]", "c=[[x,y]]"], ["max_steps=5"])


@pytest.mark.parametrize("grid, message", [
    (["optim.learnin_rate=[1e-3,1e-4]"], "optim.learnin_rate: unknown key"),
    (["objectives.0.bta=[0.1]"], "bta"),
    (["objectives.0.beta=[0.1,-1]"], "grid point 2/2 .*beta"),  # only the second point is bad
])
def test_bad_points_fail_before_any_training(tmp_path, tokenizer, grid, message):
    calls: list = []
    with pytest.raises(ConfigError, match=message):
        run_sweep(None, grid, METRIC, out_dir=tmp_path / "sweep", overrides=BASE,
                  train_point=tiny_trainer(tokenizer, calls))
    assert calls == [] and not (tmp_path / "sweep").exists()


def test_sweep_resumes_an_interrupted_point_and_never_reruns_a_finished_one(tmp_path, tokenizer):
    out = tmp_path / "sweep"
    first = "optim.learning_rate=0.003,objectives.0.beta=0.1"
    second = "optim.learning_rate=1.0e-06,objectives.0.beta=0.1"
    calls: list = []
    with pytest.raises(Killed):  # the second point is killed after its step-2 checkpoint
        run_sweep(None, GRID, METRIC, out_dir=out, overrides=BASE, train_point=tiny_trainer(tokenizer, calls, second))
    assert calls == [(first, False), (second, False)]
    assert (out / first / "final").is_dir() and not (out / second / "final").exists()
    partial = json.loads((out / "sweep.json").read_text())
    assert [p["status"] for p in partial["points"]] == ["finished", "pending"]

    calls = []
    table = run_sweep(None, GRID, METRIC, out_dir=out, overrides=BASE, train_point=tiny_trainer(tokenizer, calls))
    assert calls == [(second, True)]  # the finished point is not rerun; the killed one resumes
    steps = [r["step"] for r in read_jsonl(out / second / "metrics.jsonl") if r["split"] == "train"]
    assert steps == [1, 2, 3, 4]  # resumed at step 3, not restarted

    # the table holds each run's own final metric, and the best point is the one with the larger margin
    margins = {name: final_eval(out / name)["rewards/margins"] for name in (first, second)}
    assert [row[METRIC] for row in table.rows] == [margins[first], margins[second]]
    best = max(margins, key=margins.get)
    assert table.best["name"] == best and [row["best"] for row in table.rows] == [n == best for n in (first, second)]
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["best"] for r in rows] == [str(n == best) for n in (first, second)]
    assert [float(r[METRIC]) for r in rows] == pytest.approx([margins[first], margins[second]])
    assert rows[0]["optim.learning_rate"] == "0.003" and rows[1]["objectives.0.beta"] == "0.1"
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    calls = []  # a third invocation trains nothing; with --mode min the other point is best
    again = run_sweep(None, GRID, METRIC, mode="min", out_dir=out, overrides=BASE,
                      train_point=tiny_trainer(tokenizer, calls))
    assert calls == [] and again.best["name"] == min(margins, key=margins.get)


def test_a_directory_holding_another_config_is_refused(tmp_path, tokenizer):
    out, calls = tmp_path / "sweep", []
    grid = ["optim.learning_rate=[3e-3]"]
    run_sweep(None, grid, METRIC, out_dir=out, overrides=[*BASE, "max_steps=2"],
              train_point=tiny_trainer(tokenizer, calls))
    with pytest.raises(ConfigError, match="another config .*max_steps"):
        run_sweep(None, grid, METRIC, out_dir=out, overrides=BASE, train_point=tiny_trainer(tokenizer, calls))
    with pytest.raises(ConfigError, match="not in .*metrics.jsonl"):
        run_sweep(None, grid, "eval/no_such_metric", out_dir=out, overrides=[*BASE, "max_steps=2"],
                  train_point=tiny_trainer(tokenizer, calls))
    assert len(calls) == 1


def test_a_two_dimensional_grid_plots_a_heat_map_with_the_best_cell_marked(tmp_path):
    axes = parse_grid(["a=[1,2]", "b=[x,y,z]"])
    rows = [{"point": i, "name": f"p{i}", "a": a, "b": b, "m": float(i), "status": "finished", "best": i == 5,
             "run_dir": ""} for i, (a, b) in enumerate((a, b) for a in (1, 2) for b in "xyz")]
    figure = plot_table(SweepTable("m", "max", axes, rows, rows[5], tmp_path))
    ax = figure.axes[0]
    image = ax.images[0].get_array()
    assert image.shape == (2, 3) and image[1, 2] == 5.0 and image[0, 1] == 1.0
    labels = {text.get_text() for text in ax.texts}
    assert "5 *" in labels and "0" in labels


@pytest.mark.parametrize("args, message", [
    (["--grid", "optim.learning_rate=[1e-5,5e-5]", "objectives.0.bta=[0.1]"], "objectives.0.bta"),
    (["--grid", "optim.learning_rate=[1e-5,"], "not valid YAML"),
    (["--grid", "seed=[1,2]", "--metric", "rewards/accuracies"], "give split/key"),
    (["--grid", "seed=[1,2]", "--mode", "best"], "choose max or min"),
    (["--grid", "seed=[1,2]", "resume=true"], "the sweep decides per point"),
])
def test_the_command_reports_bad_input_in_one_line_before_training(tmp_path, args, message):
    from typer.testing import CliRunner

    from alignkit.cli import app

    result = CliRunner().invoke(app, ["sweep", *args, "--out", str(tmp_path / "sweep"), "max_steps=2"])
    flat = " ".join(result.output.split())
    assert result.exit_code == 2 and flat.startswith("error:") and message in flat, result.output
    assert not (tmp_path / "sweep").exists()


def test_a_diverged_point_is_recorded_and_the_sweep_goes_on(tmp_path, tokenizer):
    from alignkit.train.loop import TrainingDiverged

    calls: list = []
    tiny = tiny_trainer(tokenizer, calls)

    def train_point(config):
        if config.optim.learning_rate > 1:
            calls.append((config.output_dir.name, config.resume))
            raise TrainingDiverged("non-finite loss (nan) at step 1")
        tiny(config)

    table = run_sweep(None, ["optim.learning_rate=[10,3e-3]"], METRIC, out_dir=tmp_path / "sweep", overrides=BASE,
                      train_point=train_point)
    assert [row["status"] for row in table.rows] == ["diverged", "finished"] and len(calls) == 2
    assert table.rows[0][METRIC] is None and "nan" in table.rows[0]["error"]
    assert table.best["point"] == 1 and table.best[METRIC] == final_eval(tmp_path / "sweep" / table.best["name"])[
        "rewards/margins"]
