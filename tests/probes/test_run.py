"""The harness: items checked with file:line errors before a model loads, outputs written whole, the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.probes.base import SAMPLES, get_suite
from alignkit.probes.run import parse_option_values, read_items, run_probe

SMALL = {"modes": "likelihood,generate", "orders": "reversed", "labels": "letter", "instructions": "forced",
         "paraphrases": 1, "limit": 2}


def test_sample_files_load_for_every_multiple_choice_suite():
    for name in ("mcq", "pct", "wahlomat", "pacifaist", "kornat"):
        suite = get_suite(name)
        items = read_items(SAMPLES / suite.sample, suite.required)
        assert 10 <= len(items) <= 20
        assert all(str(item.get("id", "")).startswith("sample-") for item in items)


def test_missing_field_names_file_and_line(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text('{"id": 1, "question": "q", "options": ["a", "b"]}\n\n{"id": 2, "question": "q"}\n')
    with pytest.raises(ValueError, match=r"items.jsonl:3: item is missing required field 'options'"):
        read_items(path, ("id", "question", "options"))


def test_option_values_are_typed():
    assert parse_option_values(["a=1", "b=0.5", "c=true", "d=x=y", "e="]) == {"a": 1, "b": 0.5, "c": True,
                                                                             "d": "x=y", "e": ""}
    with pytest.raises(ValueError, match="key=value"):
        parse_option_values(["nokey"])


def test_run_probe_writes_outputs_and_refuses_to_overwrite(tiny_model, tokenizer, tmp_path):
    out = tmp_path / "probe"
    summary = run_probe(tiny_model, "mcq", out_dir=out, tokenizer=tokenizer, options=SMALL, max_new_tokens=4,
                        log=lambda m: None)
    assert {p.name for p in out.iterdir()} >= {"summary.json", "items.jsonl", "report.html", "section.html",
                                               "robustness.png"}
    written = json.loads((out / "summary.json").read_text())
    assert written["n_items"] == 2 and written["n_variants"] == 2 == summary["n_variants"]
    assert set(written["modes"]) == {"likelihood", "generate"}
    for metrics in written["modes"].values():
        assert {"consistency", "position_bias", "unparseable_rate"} <= set(metrics)
    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 2  # items x variants x modes
    assert (out / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    assert "Content-Security-Policy" in (out / "report.html").read_text()
    with pytest.raises(ValueError, match="already exists and is not empty; pass --overwrite"):
        run_probe(tiny_model, "mcq", out_dir=out, tokenizer=tokenizer, options=SMALL, log=lambda m: None)
    run_probe(tiny_model, "mcq", out_dir=out, tokenizer=tokenizer, options={**SMALL, "limit": 1}, overwrite=True,
              max_new_tokens=4, log=lambda m: None)
    assert json.loads((out / "summary.json").read_text())["n_items"] == 1


def test_cli_item_missing_options_is_one_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "q1", "question": "Which?", "options": ["x", "y"]}\n{"id": "q2", "question": "Which?"}\n')
    result = CliRunner().invoke(app, ["probe", "no-such-model", "--suite", "mcq", "--items", str(path),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "bad.jsonl:2: item is missing required field 'options'" in lines[0]
    assert not (tmp_path / "out").exists()


def test_cli_bad_option_and_list(tmp_path):
    result = CliRunner().invoke(app, ["probe", "no-such-model", "--suite", "mcq", "--option", "oders=cyclic",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "mcq --option oders: unknown key" in result.output
    listed = CliRunner().invoke(app, ["probe", "--list"])
    assert listed.exit_code == 0
    for name in ("mcq", "pct", "wahlomat", "pacifaist", "kornat"):
        assert name in listed.output
