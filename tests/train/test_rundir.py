"""Run-directory safety: an earlier run is never lost by surprise, final/ is swapped whole, resume reads a
torn metrics line and never logs the final eval twice."""

from __future__ import annotations

import json

import pytest

from alignkit.models import tiny_llama
from alignkit.train.config import load_config
from alignkit.train.loop import train
from alignkit.train.rundir import RunDirError
from tests.train.test_loop import make_config, read_metrics


def run(config, tokenizer, **kwargs):
    return train(config, model=tiny_llama(tokenizer), tokenizer=tokenizer, log=kwargs.pop("log", lambda m: None),
                 **kwargs)


def snapshot(run_dir):
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def test_a_used_directory_is_refused_and_left_untouched(tmp_path, tokenizer):
    run(make_config(tmp_path, "max_steps=2", "save_every=1", "batch_size=2"), tokenizer)
    before = snapshot(tmp_path / "run")
    with pytest.raises(RunDirError, match="holds an earlier run .*--resume.*--overwrite"):
        run(make_config(tmp_path, "max_steps=1", "batch_size=2"), tokenizer)
    assert snapshot(tmp_path / "run") == before


def test_overwrite_replaces_the_run_once_it_has_a_checkpoint(tmp_path, tokenizer):
    run(make_config(tmp_path, "max_steps=2", "save_every=1", "eval_every=2", "batch_size=2"), tokenizer)
    messages: list[str] = []
    result = run(make_config(tmp_path, "max_steps=1", "save_every=1", "eval_every=1", "batch_size=2",
                             "overwrite=true"), tokenizer, log=messages.append)
    lines = read_metrics(result.output_dir)
    assert [(m["step"], m["split"]) for m in lines] == [(0, "eval"), (1, "train"), (1, "eval")]
    assert [p.name for p in (result.output_dir / "checkpoints").glob("step-*")] == ["step-000001"]
    assert not list(result.output_dir.glob(".replaced-*"))
    assert any("moved the earlier run" in m for m in messages) and any("deleted the replaced run" in m
                                                                       for m in messages)


def test_overwrite_restores_the_earlier_run_when_the_new_one_fails_early(tmp_path, tokenizer):
    run(make_config(tmp_path, "max_steps=2", "save_every=1", "batch_size=2"), tokenizer)
    before = snapshot(tmp_path / "run")
    config = make_config(tmp_path, "max_steps=2", "save_every=2", "batch_size=2", "overwrite=true")

    class Boom(RuntimeError):
        pass

    def broken_log(message: str) -> None:
        if message.startswith("eval before training"):
            raise Boom("killed before the first checkpoint")

    with pytest.raises(Boom):
        run(config.model_copy(update={"eval_every": 1}), tokenizer, log=broken_log)
    assert snapshot(tmp_path / "run") == before
    assert not list((tmp_path / "run").glob(".replaced-*"))


def test_final_dir_is_replaced_whole(tmp_path, tokenizer):
    lora = run(make_config(tmp_path, "max_steps=1", "batch_size=2", "lora.enabled=true"), tokenizer)
    assert (lora.final_dir / "adapter_config.json").is_file()
    full = run(make_config(tmp_path, "max_steps=1", "batch_size=2", "overwrite=true"), tokenizer)
    assert (full.final_dir / "model.safetensors").is_file()
    assert not (full.final_dir / "adapter_config.json").exists()  # no stale adapter shadowing the new weights
    assert not list(tmp_path.joinpath("run").glob(".tmp-final-*")) and not list(
        tmp_path.joinpath("run").glob(".old-final-*"))


def test_resume_drops_a_torn_metrics_line_and_never_repeats_the_final_eval(tmp_path, tokenizer):
    config = make_config(tmp_path, "max_steps=2", "save_every=2", "batch_size=2")
    run(config, tokenizer)  # complete run: checkpoint at step 2, then the final eval at step 2
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 2, "split": "tra')  # a kill mid-append
    # resuming a finished run (as after a kill while saving final/) redoes only the final eval and save
    run(load_config(None, [f"output_dir={tmp_path / 'run'}", *_overrides(config), "resume=true"]), tokenizer)
    keys = [(m["step"], m["split"]) for m in read_metrics(tmp_path / "run")]
    assert keys == [(1, "train"), (2, "train"), (2, "eval")]


def test_a_bad_metrics_line_in_the_middle_names_file_and_line(tmp_path, tokenizer):
    config = make_config(tmp_path, "max_steps=2", "save_every=1", "batch_size=2")
    run(config, tokenizer, stop_after_steps=1)
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.write_text("not json\n" + metrics.read_text())
    with pytest.raises(RunDirError, match=r"metrics.jsonl:1: not valid JSON"):
        run(load_config(None, [f"output_dir={tmp_path / 'run'}", *_overrides(config), "resume=true"]), tokenizer)


def test_stale_half_written_directories_are_cleared(tmp_path, tokenizer):
    config = make_config(tmp_path, "max_steps=2", "save_every=1", "batch_size=2")
    run(config, tokenizer, stop_after_steps=1)
    stale = [tmp_path / "run" / "checkpoints" / ".tmp-abc", tmp_path / "run" / ".tmp-final-xyz"]
    for path in stale:
        path.mkdir()
        (path / "weights.safetensors").write_bytes(b"partial")
    run(load_config(None, [f"output_dir={tmp_path / 'run'}", *_overrides(config), "resume=true"]), tokenizer)
    assert not any(p.exists() for p in stale)


def _overrides(config) -> list[str]:
    dumped = config.model_dump(mode="json")
    return [f"{key}={json.dumps(dumped[key])}" for key in ("max_steps", "save_every", "batch_size", "eval_every",
                                                             "progress", "lora", "optim", "data", "model")]


def test_rejected_rows_are_kept_per_split(tmp_path, tokenizer):
    good = {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}
    bad = {"prompt": "What is 2 + 2?", "chosen": "", "rejected": "5"}
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in [good] * 8 + [bad]) + "\n")
    (tmp_path / "eval.jsonl").write_text("\n".join(json.dumps(r) for r in [good, bad, bad]) + "\n")
    config = make_config(tmp_path, "max_steps=1", "batch_size=2", f"data.train={tmp_path / 'train.jsonl'}",
                         f"data.eval={tmp_path / 'eval.jsonl'}", "data.on_invalid=skip")
    run(config, tokenizer)
    from alignkit.io import read_jsonl

    assert len(read_jsonl(tmp_path / "run" / "rejected_rows_train.jsonl")) == 1
    assert len(read_jsonl(tmp_path / "run" / "rejected_rows_eval.jsonl")) == 2
    (tmp_path / "eval.jsonl").write_text(json.dumps(good) + "\n")
    run(config.model_copy(update={"overwrite": True}), tokenizer)
    assert not (tmp_path / "run" / "rejected_rows_eval.jsonl").exists()  # no rejections, no file


def test_eval_fraction_zero_means_no_held_out_split(tmp_path, tokenizer):
    pair = {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(pair) for _ in range(8)) + "\n")
    result = run(make_config(tmp_path, "max_steps=2", "batch_size=2", "eval_every=1",
                             f"data.train={tmp_path / 'train.jsonl'}", "data.eval_fraction=0"), tokenizer)
    assert [m["split"] for m in read_metrics(result.output_dir)] == ["train", "train"]
