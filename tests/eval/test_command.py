"""``alignkit eval`` and ``alignkit report`` through the typer app, on tiny models saved to disk."""

import json
import re

import pytest
import torch
import yaml
from transformers import LlamaConfig, LlamaForSequenceClassification
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.data import make_synthetic, write_jsonl
from alignkit.eval.pipeline import default_out as _default_out
from alignkit.models import tiny_llama

runner = CliRunner()


def flat(text: str) -> str:
    """Rich wraps long lines at the terminal width; compare messages with whitespace collapsed."""
    return re.sub(r"\s+", " ", text)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for name, seed in (("policy", 0), ("ref", 1)):
        path = root / name
        tiny_llama(tokenizer, seed=seed).save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[name] = str(path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(root / "rm")
    tokenizer.save_pretrained(root / "rm")
    dirs["rm"] = str(root / "rm")
    return dirs


def invoke(*args: str):
    result = runner.invoke(app, ["eval", *args, "--no-progress"])
    return result


def test_eval_on_pairs_writes_table_summary_and_report(model_dirs, tmp_path):
    _, pairs = make_synthetic(0, 6, seed=1)
    pairs = [p.model_copy(update={"metadata": {**p.metadata, "agree": 0.9}}) for p in pairs]
    data = write_jsonl(pairs, tmp_path / "pairs.jsonl")
    # rename a column to exercise --column-map
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    data.write_text("".join(json.dumps({**{k: v for k, v in r.items() if k != "chosen"}, "good": r["chosen"]}) + "\n"
                            for r in rows))
    out = tmp_path / "out"
    result = invoke(model_dirs["policy"], "--data", str(data), "--column-map", '{"chosen": "good"}',
                    "--reference", model_dirs["ref"], "--before", model_dirs["ref"], "--alpha-key", "agree",
                    "--out", str(out), "--format", "jsonl", "--report", "--beta", "0.2")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "eval" / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "eval" / "per_example.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and summary["data"]["n_read"] == 6
    pref = summary["preferences"]
    assert pref["beta"] == 0.2 and pref["idealized"]["alpha_from_metadata"] == 6
    assert all(row["alpha"] == 0.9 for row in rows)
    assert pref["ranking"]["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / 6)
    assert "flips" in pref and summary["seconds"]["total"] > 0
    html = (out / "report.html").read_text()
    assert "Per-example evaluation" in html and "data:image/png;base64," in html
    assert "ranking accuracy R" in flat(result.output)


def test_eval_synthetic_with_generation_scorers(model_dirs, tmp_path):
    out = tmp_path / "gen"
    result = invoke(model_dirs["policy"], "--data", "synthetic", "--max-examples", "4", "--reference",
                    model_dirs["ref"], "--generate", "--max-prompts", "3", "--max-new-tokens", "4", "--baseline",
                    model_dirs["ref"], "--reward-model", model_dirs["rm"], "--judge", model_dirs["ref"], "--out",
                    str(out))
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "eval" / "summary.json").read_text())
    gen = summary["generation"]
    assert gen["n_prompts"] == 3
    assert set(gen["win_rate"]) == {"verifier", "reward_model", "judge"}
    assert {"k1", "k3"} <= set(gen["kl"])
    assert (out / "eval" / "generations.parquet").is_file() and (out / "eval" / "per_example.parquet").is_file()
    samples = [json.loads(line) for line in (out / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and {"prompt", "before", "after", "verified_after"} <= set(samples[0])
    assert not (out / "samples.jsonl").exists()  # that name belongs to training runs

    # a later eval without a baseline must not leave the earlier eval's samples for the report to show
    result = invoke(model_dirs["policy"], "--data", "synthetic", "--max-examples", "4", "--generate",
                    "--max-prompts", "2", "--max-new-tokens", "3", "--no-kl", "--out", str(out), "--report")
    assert result.exit_code == 0, result.output
    assert not (out / "eval" / "samples.jsonl").exists()


def test_eval_prompt_file_only(model_dirs, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Say hello.\n\nWhat is 2 + 2? Answer with just the number.\n")
    result = invoke(model_dirs["policy"], "--generate", "--prompts", str(prompts), "--max-new-tokens", "3",
                    "--sample", "--out", str(tmp_path / "p"), "--format", "jsonl")
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "p" / "eval" / "generations.jsonl").read_text().splitlines()
    assert len(rows) == 2
    summary = json.loads((tmp_path / "p" / "eval" / "summary.json").read_text())
    assert "preferences" not in summary and summary["generation"]["sampling"]["do_sample"] is True


@pytest.mark.parametrize("args, message", [
    ([], "nothing to evaluate"),
    (["--data", "synthetic", "--generate", "--judge", "x"], "--baseline"),
    (["--data", "synthetic", "--baseline", "x"], "need --generate"),
    (["--data", "/no/such/file.jsonl"], "file not found"),
    (["--data", "synthetic", "--alpha", "1.0"], "--alpha"),
    (["--data", "synthetic", "--column-map", "{oops"], "--column-map"),
    (["--generate", "--prompts", "p.txt", "--before", "x"], "--before"),
    (["--data", "synthetic", "--generate", "--tie-margin", "0.5"], "--tie-margin"),
])
def test_eval_errors_are_clear(model_dirs, args, message):
    result = invoke(model_dirs["policy"], *args)
    assert result.exit_code == 2
    assert message in flat(result.output)


def test_eval_missing_model_and_invalid_rows(tmp_path, model_dirs):
    result = invoke(str(tmp_path / "missing-model"), "--data", "synthetic")
    assert result.exit_code == 2 and "cannot load model" in flat(result.output)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "", "rejected": "no"}\n'
                   '{"prompt": "q", "chosen": "yes", "rejected": "no"}\n')
    result = invoke(model_dirs["policy"], "--data", str(bad), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "--on-invalid skip" in flat(result.output)
    result = invoke(model_dirs["policy"], "--data", str(bad), "--on-invalid", "skip", "--out", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "o" / "eval" / "summary.json").read_text())
    assert summary["data"]["n_skipped"] == 1 and summary["preferences"]["n_examples"] == 1


def test_report_command(tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 0.7}\n'
                                       '{"step": 2, "split": "train", "loss": 0.6}\n')
    (run / "eval" / "per_example.jsonl").write_text('{"logp_chosen": -1.0, "logp_rejected": -2.0, "correct": true}\n')
    (run / "eval" / "summary.json").write_text('{"ranking": {"accuracy": 1.0}}')
    out = tmp_path / "r.html"
    result = runner.invoke(app, ["report", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and "ranking/accuracy" in html
    result = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "not found" in flat(result.output)


def test_default_output_directory(tmp_path):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("")
    assert _default_out(str(run / "final")) == run
    assert str(_default_out("smollm2-135m-instruct")).endswith("eval/smollm2-135m-instruct")


def test_eval_on_a_lora_adapter_directory(model_dirs, tmp_path, tokenizer):
    """A training run's final/ holding only a LoRA adapter: loaded on its base, evaluated into the run dir."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dirs["policy"])
    lora = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    run = tmp_path / "run"
    lora.save_pretrained(run / "final")
    tokenizer.save_pretrained(run / "final")
    (run / "config.yaml").write_text("objectives: [dpo]\n")
    result = invoke(str(run / "final"), "--data", "synthetic", "--max-examples", "3", "--reference",
                    model_dirs["policy"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "eval" / "summary.json").read_text())
    # the adapter changes the model, so the implicit rewards against its own base are not all zero
    assert summary["preferences"]["rewards"]["margins"] != 0


def test_eval_from_a_config_file_with_flags_and_overrides(model_dirs, tmp_path):
    """`-c FILE`, then flags, then key=value overrides; the resolved config is written beside the summary."""
    config = tmp_path / "eval.yaml"
    config.write_text(f"data: {{path: synthetic, max_examples: 3}}\nreference: {model_dirs['ref']}\n"
                      "preferences: {beta: 0.3, alpha: 0.6}\nformat: jsonl\n")
    out = tmp_path / "cfg"
    result = invoke(model_dirs["policy"], "-c", str(config), "--beta", "0.2", "preferences.alpha=0.7",
                    "--out", str(out))
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["preferences"]["n_examples"] == 3 and summary["reference"] == model_dirs["ref"]
    assert summary["settings"]["beta"] == 0.2 and summary["settings"]["alpha"] == 0.7
    resolved = yaml.safe_load((out / "eval" / "config.yaml").read_text())
    assert resolved["preferences"]["beta"] == 0.2 and resolved["format"] == "jsonl"
    assert (out / "eval" / "per_example.jsonl").is_file()
    result = invoke(model_dirs["policy"], "-c", str(config), "preferences.beta=-1")
    assert result.exit_code == 2 and "preferences.beta (--beta) must be > 0" in flat(result.output)
