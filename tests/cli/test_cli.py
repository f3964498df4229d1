import json

from typer.testing import CliRunner

from alignkit.cli import app

runner = CliRunner()


def flat(output: str) -> str:
    """Rich wraps long lines at the terminal width; compare text regardless of wrapping."""
    return " ".join(output.split())


def test_data_synth_and_inspect(tmp_path):
    result = runner.invoke(app, ["data", "synth", "--out", str(tmp_path), "--n-train", "40", "--n-test", "8"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and {"prompt", "chosen", "rejected", "family"} <= rows[0].keys()
    result = runner.invoke(app, ["data", "inspect", str(tmp_path / "train.jsonl")])
    assert result.exit_code == 0, result.output
    assert "40 rows read, 40 valid, 0 skipped" in flat(result.output) and "chosen tokens" in result.output


def test_data_inspect_reports_invalid_rows(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n"
                    + json.dumps({"prompt": "p", "chosen": "", "rejected": "b"}) + "\n")
    result = runner.invoke(app, ["data", "inspect", str(path)])
    assert result.exit_code == 2 and "line 2" in flat(result.output) and "chosen" in result.output
    result = runner.invoke(app, ["data", "inspect", str(path), "--skip-invalid"])
    assert result.exit_code == 0 and "1 skipped" in flat(result.output)


def test_train_from_yaml_with_overrides_then_resume(tmp_path, tiny_model, tokenizer):
    model_dir = tmp_path / "tiny"
    tiny_model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {tmp_path / 'run'}\nmodel: {{name: {model_dir}, device: cpu}}\n"
                      "lora: {enabled: false}\ndata: {synthetic: {n_train: 64, n_test: 8}}\nprogress: false\n")
    args = ["train", "-c", str(config), "max_steps=2", "save_every=2", "eval_every=0", "batch_size=4"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "final" / "config.json").is_file()
    result = runner.invoke(app, [*args[:3], "max_steps=3", "save_every=2", "eval_every=0", "batch_size=4", "--resume"])
    assert result.exit_code == 0, result.output
    assert "resumed from" in flat(result.output)


def test_models_list_shows_builtin():
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0 and "smollm2-135m-instruct" in result.output


def test_bad_config_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["train", "optim.learning_rat=3"])
    assert result.exit_code == 2 and "learning_rat" in flat(result.output)


def test_data_split_holds_out_what_train_holds_out_and_never_overwrites(tmp_path):
    from alignkit.data import load_records
    from alignkit.train.config import load_config
    from alignkit.train.data import read_splits

    runner.invoke(app, ["data", "synth", "--out", str(tmp_path), "--n-train", "40", "--n-test", "8"])
    source = str(tmp_path / "train.jsonl")
    result = runner.invoke(app, ["data", "split", source, "--out", str(tmp_path / "split"), "--eval-fraction", "0.25",
                                 "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "30 train and 10 held-out" in flat(result.output)
    config = load_config(None, [f"data.train={source}", "data.eval_fraction=0.25", "seed=3",
                                "data.max_eval_examples=null"])
    train, heldout = read_splits(config, lambda pairs: pairs, lambda path: load_records(path, log=None).records)
    written = load_records(str(tmp_path / "split" / "heldout.jsonl"), log=None).records
    assert [r.prompt for r in written] == [r.prompt for r in heldout]  # the pairs a run with that seed never saw
    assert [r.chosen for r in written] == [r.chosen for r in heldout]
    assert len(load_records(str(tmp_path / "split" / "train.jsonl"), log=None).records) == len(train) == 30
    again = runner.invoke(app, ["data", "split", source, "--out", str(tmp_path / "split")])
    assert again.exit_code != 0 and "--overwrite" in flat(again.output)
