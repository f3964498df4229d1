"""Token-distribution shift: ranks and classes by hand, a model against itself, a base with known ranks, the CLI."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.decoding.token_shift import (
    check_same_tokenizer,
    encode_for,
    shift_class,
    summarise,
    token_ranks,
    token_shift,
)
from alignkit.decoding.urial import build_prefix

PROMPTS = ["Name a colour.", "What is two plus two?", "Say hello to a friend."]


def test_ranks_and_classes_by_hand():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0]] * 4)
    assert token_ranks(logits, torch.tensor([0, 2, 1, 3])).tolist() == [0, 1, 2, 3]
    assert token_ranks(torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([1])).tolist() == [0]  # ties do not count
    assert [shift_class(r) for r in (0, 1, 2, 3, 40)] == ["unshifted", "marginal", "marginal", "shifted", "shifted"]


def test_summary_by_hand():
    rows = [{"position": 0, "text": "Sure", "class": "unshifted", "p_base": 0.8, "kl": 0.0},
            {"position": 1, "text": "!", "class": "marginal", "p_base": 0.2, "kl": 0.1},
            {"position": 2, "text": "Sure", "class": "shifted", "p_base": 0.0, "kl": 0.5},
            {"position": 0, "text": "Hi", "class": "unshifted", "p_base": 0.6, "kl": 0.2}]
    s = summarise(rows)
    assert s["shares"] == {"unshifted": 0.5, "marginal": 0.25, "shifted": 0.25}
    assert s["mean_p_base"] == pytest.approx(0.4) and s["mean_kl"] == pytest.approx(0.2)
    assert [(p["position"], p["count"], p["shifted"]) for p in s["by_position"]] == [(0, 2, 0.0), (1, 1, 0.0),
                                                                                      (2, 1, 1.0)]
    assert s["most_shifted"] == [{"token": "Sure", "shifted": 1, "occurrences": 2}]


def test_a_model_against_itself_is_all_unshifted(tiny_model, tokenizer):
    report = token_shift(tiny_model, tiny_model, tokenizer, PROMPTS, max_new_tokens=8)
    assert report["positions_total"] == len(report["rows"]) > 0
    assert report["shares"] == {"unshifted": 1.0, "marginal": 0.0, "shifted": 0.0}
    assert report["mean_kl"] == pytest.approx(0.0, abs=1e-5)


class Demoted(nn.Module):
    """The wrapped model with each position's top token moved to rank ``rank`` (between the rank-th and the
    next logit), so the aligned model's greedy tokens have a known rank under it."""

    def __init__(self, inner: nn.Module, rank: int):
        super().__init__()
        self.inner, self.rank = inner, rank

    def forward(self, **kwargs):
        logits = self.inner(**kwargs).logits.clone()
        if self.rank:
            ordered = logits.sort(-1, descending=True).values
            between = (ordered[..., self.rank] + ordered[..., self.rank + 1]) / 2
            logits.scatter_(-1, logits.argmax(-1, keepdim=True), between[..., None])
        return SimpleNamespace(logits=logits)


@pytest.mark.parametrize(("rank", "expected"), [(0, "unshifted"), (1, "marginal"), (2, "marginal"),
                                                (3, "shifted"), (9, "shifted")])
def test_a_base_with_known_ranks(tiny_model, tokenizer, rank, expected):
    report = token_shift(tiny_model, Demoted(tiny_model, rank), tokenizer, PROMPTS, max_new_tokens=6)
    assert {r["rank"] for r in report["rows"]} == {rank}
    assert report["shares"][expected] == 1.0
    assert all(p["shifted"] == (1.0 if expected == "shifted" else 0.0) for p in report["by_position"])
    if expected == "shifted":
        assert sum(t["shifted"] for t in report["most_shifted"]) <= len(report["rows"])
        assert report["most_shifted"][0]["shifted"] == max(t["shifted"] for t in report["most_shifted"])


def test_formats_and_the_same_tokenizer_check(tokenizer):
    assert encode_for(tokenizer, "Hi", None, "urial") == tokenizer(build_prefix() + "# Query:\n```\nHi\n```\n\n"
                                                                   "# Answer:\n```\n").input_ids
    assert encode_for(tokenizer, "Hi", None, "plain") == tokenizer("# Query:\n```\nHi\n```\n\n# Answer:\n```\n"
                                                                   ).input_ids
    with pytest.raises(ValueError, match="unknown prompt format 'xml'"):
        encode_for(tokenizer, "Hi", None, "xml")
    other = type("Tok", (), {"get_vocab": lambda self: {"a": 0}, "__len__": lambda self: 1})()
    with pytest.raises(ValueError, match="same tokenizer"):
        check_same_tokenizer(tokenizer, other)
    check_same_tokenizer(tokenizer, tokenizer)


def test_cli_token_shift(tmp_path, tiny_model, tokenizer):
    tiny_model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "shift.json"
    model = str(tmp_path / "tiny")
    result = CliRunner().invoke(app, ["analyze", "token-shift", model, "--base", model, "--prompts", str(prompts),
                                      "--aligned-format", "urial", "--base-format", "plain", "--max-new-tokens", "6",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["prompts"] == 3 and report["aligned_format"] == "urial"
    assert sum(report["shares"].values()) == pytest.approx(1.0)
    assert report["positions_total"] == len(report["rows"]) == sum(p["count"] for p in report["by_position"])
    bad = CliRunner().invoke(app, ["analyze", "token-shift", model, "--base", model, "--prompts", str(prompts),
                                   "--base-format", "xml"])
    assert bad.exit_code == 2 and "unknown prompt format 'xml'" in bad.output
