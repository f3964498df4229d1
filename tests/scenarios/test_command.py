"""`alignkit scenario ...`: one-line errors before any model loads, compare, list."""

from __future__ import annotations

import copy
import json

from typer.testing import CliRunner

from alignkit.cli import app
from tests.scenarios.conftest import MINI

runner = CliRunner()


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_bad_scenario_file_fails_in_one_line_naming_file_and_field(write_scenario, tmp_path):
    tree = copy.deepcopy(MINI)
    tree["generation"]["max_new_tokens"] = 0
    path = write_scenario(tree)
    line = one_line_error(runner.invoke(app, ["scenario", "run", str(path), "--model", "no-such-model-needed",
                                              "--out", str(tmp_path / "o")]))
    assert "mini.yaml" in line and "generation.max_new_tokens must be >= 1" in line
    line = one_line_error(runner.invoke(app, ["scenario", "run", "nonexistent_pack", "--model", "x"]))
    assert "no such scenario file or builtin pack" in line


def _summary(model: str, rate: float, gap: float) -> dict:
    stats = {"n": 10, "k": int(rate * 10), "rate": rate, "lo": rate - 0.1, "hi": rate + 0.1, "ci": "wilson"}
    return {"scenario": "s", "model": model, "measures": {"refused": {"training": stats}},
            "differences": {"gap": {"measure": "refused", "minuend": "a", "subtrahend": "b", "value": gap,
                                    "lo": gap - 0.2, "hi": gap + 0.2}}}


def test_compare_puts_runs_side_by_side(tmp_path):
    for name, rate, gap in (("one", 0.5, 0.1), ("two", 0.8, -0.3)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(_summary(f"model-{name}", rate, gap)))
    md = tmp_path / "cmp.md"
    result = runner.invoke(app, ["scenario", "compare", str(tmp_path / "one"), str(tmp_path / "two"),
                                 "--markdown", str(md)])
    assert result.exit_code == 0, result.output
    table = md.read_text()
    assert "| refused | training | 50.0% [40.0, 60.0] (n=10) | 80.0% [70.0, 90.0] (n=10) |" in table
    assert "| gap | difference | +10.0 pts [-10.0, +30.0] | -30.0 pts [-50.0, -10.0] |" in table
    assert "model-one (one)" in table
    assert "no summary.json" in one_line_error(runner.invoke(app, ["scenario", "compare", str(tmp_path)]))


def test_list_shows_every_pack():
    result = runner.invoke(app, ["scenario", "list"])
    assert result.exit_code == 0, result.output
    for pack in ("alignment_faking", "elicited_misalignment", "psychoanalytic", "principal_agent",
                 "poisoned_context"):
        assert pack in result.output
