"""Likelihood answers through the engine on a tiny model, checked against scoring each option alone."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.data.tokenize import PromptEncoder
from alignkit.engine.layouts import collate
from alignkit.engine.logprobs import sequence_logps
from alignkit.probes.base import ProbeContext
from alignkit.probes.battery import BatteryOptions, Question, ask_generate, ask_likelihood
from alignkit.probes.likelihood import continuation_ids, group_logps, option_probabilities
from alignkit.probes.variants import Variant


def test_option_probabilities_hand_worked():
    probs = option_probabilities([(-2.0, 2), (-3.0, 1)], "mean")  # means -1 and -3
    assert probs[0] == pytest.approx(1 / (1 + math.exp(-2)))
    assert sum(probs) == pytest.approx(1.0)
    assert option_probabilities([(-2.0, 2), (-3.0, 1)], "sum")[0] == pytest.approx(1 / (1 + math.exp(-1)))


def test_group_logps_match_one_padded_row_per_option(tiny_model, tokenizer):
    prompts = [tokenizer("Pick one: red or blue?").input_ids, tokenizer("Yes or no?").input_ids]
    choices = [[tokenizer(" red").input_ids, tokenizer(" blue sky").input_ids, tokenizer(" green").input_ids],
               [tokenizer(" yes").input_ids, tokenizer(" no").input_ids]]
    grouped = group_logps(tiny_model, tokenizer.pad_token_id, list(zip(prompts, choices, strict=True)), batch_size=1)
    for prompt, options, got in zip(prompts, choices, grouped, strict=True):
        with torch.no_grad():
            alone = sequence_logps(tiny_model.eval(), collate([(prompt, o) for o in options], tokenizer.pad_token_id))
        assert [n for _, n in got] == [len(o) for o in options]
        assert [lp for lp, _ in got] == pytest.approx(alone.logps.tolist(), abs=1e-4)


def test_ask_likelihood_maps_positions_back_to_original_options(tiny_model, tokenizer):
    ctx = ProbeContext(tiny_model, tokenizer, batch_size=2)
    options = ["cats", "dogs", "birds"]
    variants = [Variant((0, 1, 2), "letter"), Variant((2, 0, 1), "letter"), Variant((1, 2, 0), "none")]
    questions = [Question(0, v, *v.render("Which pet?", options)) for v in variants]
    answers = ask_likelihood(ctx, questions, None, BatteryOptions(), lambda n: None)
    encoder = PromptEncoder(tokenizer)
    for q, a in zip(questions, answers, strict=True):
        targets = q.variant.label_list() or q.shown
        prompt = encoder.encode_prompt(q.text)
        rows = [(prompt, continuation_ids(tokenizer, t, bool(encoder.use_chat_template))) for t in targets]
        with torch.no_grad():
            scored = sequence_logps(tiny_model, collate(rows, tokenizer.pad_token_id))
        shown = option_probabilities(list(zip(scored.logps.tolist(), scored.tokens.int().tolist(), strict=True)))
        best = max(range(3), key=shown.__getitem__)
        assert a.position == best and a.original == q.variant.order[best]
        assert a.probs[q.variant.order[best]] == pytest.approx(shown[best], abs=1e-5)
        assert sum(a.probs) == pytest.approx(1.0)


def test_ask_generate_counts_gibberish_as_unparseable(tiny_model, tokenizer):
    ctx = ProbeContext(tiny_model, tokenizer, max_new_tokens=4)
    v = Variant((0, 1), "letter")
    answers = ask_generate(ctx, [Question(0, v, *v.render("Yes or no?", ["yes", "no"]))], None, BatteryOptions(),
                           lambda n: None)
    assert isinstance(answers[0].response, str)
    # a random tiny model writes gibberish: whatever it wrote, the recorded answer is what the parser reads
    from alignkit.probes.answers import parse_answer

    parsed = parse_answer(answers[0].response, ["yes", "no"], ["A", "B"]).index
    assert answers[0].position == parsed
