"""Head-level steering (PAS): the o_proj pre-hook adds exactly α·σ_h·d_h to the chosen heads' slices, probes
pick the head carrying a planted signal, the α search returns the grid's best point, and the CLI runs it."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.data.tokenize import PromptEncoder
from alignkit.decoding import decode
from alignkit.decoding.steer import decoder_layers, fit_head_steering, head_shape, steering
from alignkit.decoding.steer_data import load_traits, trait_items
from alignkit.decoding.steer_heads import HeadSteering, contrast_directions, search_alpha, select_heads
from tests.decoding.test_steer import write_traits


def o_proj_inputs(model, ids) -> list[torch.Tensor]:
    """Every layer's o_proj input, from pre-hooks registered last (so they see what steering added)."""
    seen: list[torch.Tensor] = []
    handles = [layer.self_attn.o_proj.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
               for layer in decoder_layers(model)]
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.mark.parametrize("layer", [0, 1])
def test_pre_hook_adds_alpha_sigma_d_to_the_chosen_head_slices_only(tiny_model, tokenizer, layer):
    heads, head_dim = head_shape(tiny_model)
    assert (heads, head_dim) == (4, 16)
    generator = torch.Generator().manual_seed(0)
    d1, d3 = (torch.nn.functional.normalize(torch.randn(head_dim, generator=generator), dim=0) for _ in range(2))
    steer = HeadSteering("t", {(layer, 1): d1, (layer, 3): d3}, {(layer, 1): 0.5, (layer, 3): 2.0},
                         {(layer, 1): 1.0, (layer, 3): 1.0}, 6, heads, head_dim)
    ids = torch.tensor([PromptEncoder(tokenizer).encode_prompt("Name a colour.")])
    before = o_proj_inputs(tiny_model, ids)
    with steering(tiny_model, steer, 3.0):
        after = o_proj_inputs(tiny_model, ids)
    assert all(not layer.self_attn.o_proj._forward_pre_hooks for layer in decoder_layers(tiny_model))
    for earlier in range(layer):  # layers before the steered one see nothing
        assert torch.equal(after[earlier], before[earlier])
    delta = (after[layer] - before[layer]).reshape(*ids.shape, heads, head_dim)  # [1, T, heads, head_dim]
    expected = torch.zeros(heads, head_dim)
    expected[1], expected[3] = 3.0 * 0.5 * d1, 3.0 * 2.0 * d3
    assert torch.allclose(delta, expected.expand_as(delta), atol=1e-5)  # at every position
    assert torch.equal(delta[..., [0, 2], :], torch.zeros_like(delta[..., [0, 2], :]))  # other heads untouched


def test_hooks_are_removed_after_an_error(tiny_model, tokenizer, tmp_path):
    fit = fit_head_steering(tiny_model, tokenizer, load_traits(write_traits(tmp_path / "t.jsonl")), "t", heads=3)
    with pytest.raises(RuntimeError, match="boom"), steering(tiny_model, fit, 4.0):
        assert any(layer.self_attn.o_proj._forward_pre_hooks for layer in decoder_layers(tiny_model))
        raise RuntimeError("boom")
    assert all(not layer.self_attn.o_proj._forward_pre_hooks for layer in decoder_layers(tiny_model))


def test_probes_pick_the_head_with_a_planted_signal():
    """12 items × 2 answers, 6 heads of dimension 5, all noise but head 4, where the pole answers are shifted
    along one axis: the top head must be 4, with a perfect held-out accuracy, and noise heads near chance."""
    generator = torch.Generator().manual_seed(1)
    n, heads, dim = 12, 6, 5
    acts = torch.randn(2 * n, heads, dim, generator=generator)
    acts[:n, 4, 2] += 4.0  # the pole answers of every item
    labels = [1] * n + [0] * n
    picked, accuracy = select_heads(acts, list(range(n)) * 2, labels, k=2)
    assert picked[0] == 4 and accuracy[4] == 1.0
    assert float(accuracy[[0, 1, 2, 3, 5]].mean()) < 0.8
    assert select_heads(acts, list(range(n)) * 2, labels, k=1, usable=torch.arange(heads) != 4)[0] != [4]


def test_contrast_directions_by_hand():
    acts = torch.zeros(4, 1, 2)  # items: one "+" and one "-"; rows: pole answers, then opposite answers
    acts[0, 0] = torch.tensor([3.0, 0.0])  # "+" item: pole − opposite = (3, 0)
    acts[1, 0] = torch.tensor([0.0, 1.0])  # "-" item: pole − opposite = (0, 1)
    directions, scales, norms = contrast_directions(acts, [1, -1], balanced=True)
    assert torch.allclose(directions[0], torch.tensor([1.5, 0.5]) / torch.tensor([1.5, 0.5]).norm())
    assert norms[0] == pytest.approx(float(torch.tensor([1.5, 0.5]).norm()))
    assert scales[0] == pytest.approx(float((acts[:, 0] @ directions[0]).std()))


def test_alpha_search_returns_the_grid_point_with_the_highest_margin():
    alpha, rows = search_alpha(lambda a: -(a - 2.5) ** 2 + 1.0, [-4, -2, 0, 2, 4, 8])
    assert alpha == 2.0 and [r["margin"] for r in rows] == [-(a - 2.5) ** 2 + 1.0 for a in (-4, -2, 0, 2, 4, 8)]
    assert search_alpha(lambda a: abs(a) // 4, [-8, -4, 4, 8])[0] == -8.0  # ties: the smaller |α|, then earlier
    assert search_alpha(lambda a: 0.0, [-1, 0, 1])[0] == 0.0
    with pytest.raises(ValueError, match="non-empty grid"):
        search_alpha(lambda a: 0.0, [])


def test_head_fit_keeps_the_best_probed_heads_with_their_mean_difference(tiny_model, tokenizer, tmp_path):
    items = load_traits(write_traits(tmp_path / "t.jsonl"))
    fit = fit_head_steering(tiny_model, tokenizer, items, "t", heads=100)  # capped by the model's 2 × 4 heads
    assert len(fit.heads) == 8 and fit.train_items == 6
    accuracies = list(fit.accuracy.values())
    assert accuracies == sorted(accuracies, reverse=True)
    few = fit_head_steering(tiny_model, tokenizer, items, "t", heads=3, layers=[1])
    assert len(few.heads) == 3 and {layer for layer, _ in few.heads} == {1}
    train = trait_items(items, "t", held_out=False)
    encoder, letters = PromptEncoder(tokenizer), {"A": None, "E": None}
    letters = {x: tokenizer(x, add_special_tokens=False).input_ids[0] for x in letters}
    rows = [torch.tensor([encoder.encode_prompt(it.prompt) + [letters[letter_of(it)]]]) for letter_of in
            (lambda it: it.consistent, lambda it: it.opposite) for it in train]
    acts = torch.stack([o_proj_inputs(tiny_model, r)[1][0, -1] for r in rows]).reshape(len(rows), 4, 16)
    layer, head = few.heads[0]
    diff = (acts[:len(train), head] - acts[len(train):, head]).mean(0)  # all "+" items: balanced = plain mean
    assert torch.allclose(few.directions[layer, head], diff / diff.norm(), atol=1e-4)


def test_cli_head_level_search_and_generate(tmp_path, tiny_model, tokenizer):
    tiny_model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    traits = write_traits(tmp_path / "t.jsonl")
    out = tmp_path / "steer.json"
    result = CliRunner().invoke(app, ["analyze", "steer", str(tmp_path / "tiny"), "--traits", str(traits), "--level",
                                      "head", "--heads", "3", "--search", "--alphas", "-4,0,4,8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    fit = report["traits"]["t"]
    assert report["level"] == "head" and len(fit["heads"]) == 3 and len(fit["probe_accuracy"]) == 3
    found = fit["search"]
    best = max(found["grid"], key=lambda r: r["margin"])
    assert found["alpha"] == best["alpha"] and found["train_margin"] == best["margin"]
    assert found["held_out"] == next(r for r in fit["rows"] if r["alpha"] == found["alpha"])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello\n")
    generated = tmp_path / "gen.jsonl"
    result = CliRunner().invoke(app, ["generate", str(tmp_path / "tiny"), "--prompts", str(prompts), "--strategy",
                                      "steer", "--steer-traits", str(traits), "--steer-trait", "t", "--steer-level",
                                      "head", "--steer-heads", "2", "--steer-alpha", "8", "--max-new-tokens", "3",
                                      "--no-progress", "--out", str(generated)])
    assert result.exit_code == 0, result.output
    settings = json.loads(generated.read_text())["settings"]
    assert settings["steer_level"] == "head" and settings["steer_heads"] == 2


def test_head_steering_changes_generation_and_leaves_no_hooks(tmp_path, tiny_model, tokenizer):
    traits = write_traits(tmp_path / "t.jsonl")
    plain = decode(tiny_model, tokenizer, ["Say something."], "greedy", max_new_tokens=6, log=lambda m: None)
    steered = decode(tiny_model, tokenizer, ["Say something."], "steer", steer_traits=traits, steer_trait="t",
                     steer_level="head", steer_heads=8, steer_alpha=50.0, max_new_tokens=6, log=lambda m: None)
    assert steered[0]["text"] != plain[0]["text"]
    assert all(not layer.self_attn.o_proj._forward_pre_hooks for layer in decoder_layers(tiny_model))
    with pytest.raises(ValueError, match="steer_level must be 'layer' or 'head'"):
        decode(tiny_model, tokenizer, ["x"], "steer", steer_trait="t", steer_level="neuron", log=lambda m: None)
