"""Personality steering: the contrast-pair direction, its effect on held-out answers, hook removal, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.data.tokenize import PromptEncoder
from alignkit.decoding import decode
from alignkit.decoding.steer import (
    answer_scores,
    decoder_layers,
    fit_steering,
    last_token_forward,
    letter_ids,
    steer_report,
    steering,
)
from alignkit.decoding.steer_data import TraitItem, load_traits, trait_items
from alignkit.engine.generation import SamplingParams, sample_ids

STATEMENTS = ["enjoy long walks", "like loud music", "cook for friends", "read before bed", "sing in the shower",
              "plan trips early", "collect old maps", "fix your own bike", "write letters by hand"]


def write_traits(path, keyed: str = "+", trait: str = "t"):
    path.write_text("".join(json.dumps({"trait": trait, "statement": s, "keyed": keyed}) + "\n" for s in STATEMENTS))
    return path


def test_builtin_questionnaire_and_its_split():
    items = load_traits()
    traits = {it.trait for it in items}
    assert traits == {"openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism"}
    for trait in traits:
        mine = [it for it in items if it.trait == trait]
        assert [it.held_out for it in mine] == [(i + 1) % 3 == 0 for i in range(len(mine))]
        assert {it.keyed for it in mine} == {1, -1}  # reversed items cancel the letter's own direction
    assert items[0].consistent == "A" and TraitItem("x", "s", -1, False).consistent == "E"


def test_bad_traits_files_fail_with_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"trait": "t", "statement": "s", "keyed": "yes"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'keyed'"):
        load_traits(bad)
    items = load_traits(write_traits(tmp_path / "ok.jsonl"))
    with pytest.raises(ValueError, match="unknown trait 'x'; the questionnaire has: t"):
        trait_items(items, "x", held_out=False)


def test_answer_scores_by_hand(tokenizer):
    letters = letter_ids(tokenizer)
    logps = torch.full((2, len(tokenizer)), -50.0)
    for row in range(2):  # p(A) = p(B) = 0.5 (renormalised over A..E)
        logps[row, letters["A"]] = logps[row, letters["B"]] = math.log(0.5)
    scores = answer_scores(logps, [TraitItem("t", "s", 1, True), TraitItem("t", "s", -1, True)], letters)
    assert scores[0]["margin"] == pytest.approx(math.log(0.5) + 50.0)  # log p(A) − log p(E)
    assert scores[0]["score"] == pytest.approx(4.5)  # (5 + 4) / 2
    assert scores[1]["margin"] == pytest.approx(-50.0 - math.log(0.5))  # reversed: log p(E) − log p(A)
    assert scores[1]["score"] == pytest.approx(1.5)


def _answer_activations(model, tokenizer, items, letter_of) -> torch.Tensor:
    """Layer 0's output at the answer token, one row at a time from output_hidden_states (no padding, no hooks)."""
    encoder, ids = PromptEncoder(tokenizer), letter_ids(tokenizer)
    with torch.no_grad():
        return torch.stack([model(torch.tensor([encoder.encode_prompt(it.prompt) + [ids[letter_of(it)]]]),
                                  output_hidden_states=True).hidden_states[1][0, -1] for it in items])


@pytest.mark.parametrize("balanced", [True, False])
def test_direction_is_the_mean_activation_difference_at_the_answer_token(tmp_path, tiny_model, tokenizer, balanced):
    path = tmp_path / "t.jsonl"  # 5 "+" and 1 "-" training items (every third of the nine is held out)
    keys = ["+", "+", "+", "+", "+", "+", "-", "+", "+"]
    path.write_text("".join(json.dumps({"trait": "t", "statement": s, "keyed": k}) + "\n"
                            for s, k in zip(STATEMENTS, keys, strict=True)))
    items = load_traits(path)
    fit = fit_steering(tiny_model, tokenizer, items, "t", layers=[0], balanced=balanced)
    train = trait_items(items, "t", held_out=False)
    pole = _answer_activations(tiny_model, tokenizer, train, lambda it: it.consistent)
    other = _answer_activations(tiny_model, tokenizer, train, lambda it: it.opposite)
    plus = torch.tensor([it.keyed > 0 for it in train])
    if balanced:  # the "+" items' mean difference and the "-" item's, weighted equally
        diff = ((pole[plus] - other[plus]).mean(0) + (pole[~plus] - other[~plus]).mean(0)) / 2
    else:
        diff = pole.mean(0) - other.mean(0)
    assert torch.allclose(fit.directions[0], diff / diff.norm(), atol=1e-4)
    projections = torch.cat([pole, other]) @ fit.directions[0]
    assert fit.scales[0] == pytest.approx(float(projections.std()), rel=1e-3)


@pytest.mark.parametrize("keyed", ["+", "-"])
def test_positive_alpha_raises_the_held_out_margin_and_negative_lowers_it(tmp_path, tiny_model, tokenizer, keyed):
    items = load_traits(write_traits(tmp_path / "t.jsonl", keyed))
    fit = fit_steering(tiny_model, tokenizer, items, "t")  # default: the middle layer (1 of 2)
    assert fit.layers == (1,) and fit.train_items == 6
    rows = {r["alpha"]: r for r in steer_report(tiny_model, tokenizer, fit, items, alphas=(-4.0, 0.0, 4.0))}
    assert rows[4.0]["margin"] > rows[0.0]["margin"] + 0.1
    assert rows[-4.0]["margin"] < rows[0.0]["margin"] - 0.1
    assert rows[4.0]["score"] > rows[0.0]["score"] > rows[-4.0]["score"]
    assert rows[0.0]["items"] == 3


def test_hooks_are_removed_after_generation_and_after_an_error(tmp_path, tiny_model, tokenizer):
    traits = write_traits(tmp_path / "t.jsonl")
    prompts = ["Say something.", "Name a colour."]
    plain = decode(tiny_model, tokenizer, prompts, "greedy", max_new_tokens=6, log=lambda m: None)
    steered = decode(tiny_model, tokenizer, prompts, "steer", steer_traits=traits, steer_trait="t",
                     steer_alpha=8.0, max_new_tokens=6, log=lambda m: None)
    assert steered[0]["settings"]["steer_alpha"] == 8.0 and steered[0]["settings"]["steer_trait"] == "t"
    layers = decoder_layers(tiny_model)
    assert all(not layer._forward_hooks for layer in layers)
    after = decode(tiny_model, tokenizer, prompts, "greedy", max_new_tokens=6, log=lambda m: None)
    assert [r["text"] for r in after] == [r["text"] for r in plain]
    fit = fit_steering(tiny_model, tokenizer, load_traits(traits), "t")
    ids = [PromptEncoder(tokenizer).encode_prompt(p) for p in prompts]
    before, _ = last_token_forward(tiny_model, ids, tokenizer.pad_token_id)
    with pytest.raises(RuntimeError, match="boom"), steering(tiny_model, fit, 8.0):
        inside, _ = last_token_forward(tiny_model, ids, tokenizer.pad_token_id)
        assert not torch.allclose(inside, before, atol=1e-3)  # the hook was active
        raise RuntimeError("boom")
    assert all(not layer._forward_hooks for layer in layers)
    assert torch.equal(last_token_forward(tiny_model, ids, tokenizer.pad_token_id)[0], before)


def test_steer_strategy_is_greedy_decoding_inside_the_hooks(tmp_path, tiny_model, tokenizer):
    traits = write_traits(tmp_path / "t.jsonl")
    rows = decode(tiny_model, tokenizer, ["Hello"], "steer", steer_traits=traits, steer_trait="t", steer_alpha=-3.0,
                  max_new_tokens=5, log=lambda m: None)
    fit = fit_steering(tiny_model, tokenizer, load_traits(traits), "t")
    with steering(tiny_model, fit, -3.0):
        out = sample_ids(tiny_model, [PromptEncoder(tokenizer).encode_prompt("Hello")], SamplingParams(5),
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    assert rows[0]["candidates"][0]["tokens"] == len(out.responses[0][0])
    assert rows[0]["text"] == tokenizer.decode(out.responses[0][0], skip_special_tokens=True).strip()
    with pytest.raises(ValueError, match="needs --steer-trait"):
        decode(tiny_model, tokenizer, ["Hello"], "steer", max_new_tokens=2, log=lambda m: None)


def test_cli_analyze_steer_writes_the_alpha_table(tmp_path, tiny_model, tokenizer):
    tiny_model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    traits = write_traits(tmp_path / "t.jsonl")
    out = tmp_path / "steer.json"
    result = CliRunner().invoke(app, ["analyze", "steer", str(tmp_path / "tiny"), "--traits", str(traits),
                                      "--alphas", "-2,0,2", "--layers", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    rows = report["traits"]["t"]["rows"]
    assert [r["alpha"] for r in rows] == [-2.0, 0.0, 2.0] and report["layers"] == [0]
    assert rows[0]["margin"] < rows[1]["margin"] < rows[2]["margin"]
    bad = CliRunner().invoke(app, ["analyze", "steer", str(tmp_path / "tiny"), "--traits", str(traits),
                                   "--trait", "nope", "--out", str(out)])
    assert bad.exit_code != 0 and "unknown trait 'nope'" in bad.output
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello\nName a fruit.\n")
    generated = tmp_path / "gen.jsonl"
    result = CliRunner().invoke(app, ["generate", str(tmp_path / "tiny"), "--prompts", str(prompts), "--strategy",
                                      "steer", "--steer-traits", str(traits), "--steer-trait", "t", "--steer-alpha",
                                      "2", "--steer-layers", "0", "--max-new-tokens", "3", "--no-progress",
                                      "--out", str(generated)])
    assert result.exit_code == 0, result.output
    settings = json.loads(generated.read_text().splitlines()[0])["settings"]
    assert settings["steer_layers"] == [0] and settings["steer_alpha"] == 2.0 and settings["steer_trait"] == "t"
    bad = CliRunner().invoke(app, ["generate", str(tmp_path / "tiny"), "--prompts", str(prompts), "--strategy",
                                   "steer", "--steer-trait", "t", "--steer-layers", "x", "--out", str(generated)])
    assert bad.exit_code == 2 and "--steer-layers expects comma-separated numbers" in bad.output


def test_alpha_search_balances_keying_so_a_letter_bias_does_not_win(tmp_path, tiny_model, tokenizer, monkeypatch):
    import alignkit.decoding.steer as steer_module

    mixed = tmp_path / "mixed.jsonl"  # 5 "+" and 4 "-" items: a push towards one letter helps the "+" side more
    mixed.write_text("".join(json.dumps({"trait": "t", "statement": s, "keyed": "+" if i < 5 else "-"}) + "\n"
                             for i, s in enumerate(STATEMENTS)))
    items = load_traits(mixed)
    fit = fit_steering(tiny_model, tokenizer, items, "t")
    row = steer_report(tiny_model, tokenizer, fit, items, alphas=(2.0,), held_out=False)[0]
    train = trait_items(items, "t", held_out=False)
    plus = [m for m, item in zip(row["per_item"], train, strict=True) if item.keyed > 0]
    minus = [m for m, item in zip(row["per_item"], train, strict=True) if item.keyed < 0]
    assert plus and minus
    assert row["keying_balanced_margin"] == pytest.approx((sum(plus) / len(plus) + sum(minus) / len(minus)) / 2,
                                                          abs=1e-3)  # per_item is rounded to 4 places

    def fake_report(model, tok, steer, its, alphas, system=None, held_out=True):
        # alpha 16: every answer pushed to "A" (+3 on "+" items, -3 on "-" items), plain mean > 0 with 4:3 keying;
        # alpha 2: a small move towards the pole on both sides
        table = {0.0: (0.0, 0.0), 2.0: (0.4, 0.2), 16.0: (1.4, 0.0)}
        return [{"alpha": a, "margin": table[a][0], "keying_balanced_margin": table[a][1]} for a in alphas]

    monkeypatch.setattr(steer_module, "steer_report", fake_report)
    found = steer_module.searched_alpha(tiny_model, tokenizer, fit, items, grid=(0.0, 2.0, 16.0))
    assert found["alpha"] == 2.0 and found["train_margin"] == pytest.approx(0.2)
