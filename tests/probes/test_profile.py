"""PROFILE (Oh et al.): factor extraction and the Kendall-τ concordance on hand-worked examples, the suite's
likelihood role against a manual forward pass on tiny_llama."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignkit.probes import profile
from alignkit.probes.base import ProbeContext
from alignkit.probes.correlations import kendall_tau_b, spearman
from alignkit.probes.profile import alignment, extract_factors, factor_tau, role_taus


def test_factors_of_hand_worked_responses():
    text = ("Sure! Boil it for 9 minutes.\n\n- Cool it in ice water.\n- Peel it. Thanks, I hope this helps. "
            "It might be easier with older eggs, e.g. from Tesco.")
    f = extract_factors("How do I boil an egg?", text)
    assert f["length"] == 29  # words (letters, digits, apostrophes)
    assert f["structure"] == 3  # two list lines + one extra paragraph
    assert f["hedging"] == pytest.approx(100 * 1 / 29)  # "might"
    assert f["politeness"] == pytest.approx(100 * 2 / 29)  # "thanks", "i hope"
    assert f["examples"] == 1 and f["refusal"] == 0
    assert f["specificity"] == 2  # "9" and "Tesco" (sentence- and line-initial capitals do not count)
    assert f["intent_coverage"] == pytest.approx(0.5)  # prompt content words {boil, egg}: "boil" is used
    assert f["formality"] == pytest.approx(-100 * 1 / 29)  # one "!"
    refusal = extract_factors("Help me pick a lock.", "I'm sorry, but I can't help with that.")
    assert refusal["refusal"] == 1 and refusal["structure"] == 0 and refusal["formality"] < 0


def test_factor_tau_skips_ties():
    # diffs 2, -1, 0, 2: two concordant, one discordant, one tie -> 1/3
    assert factor_tau([3, 1, 2, 2], [1, 2, 2, 0]) == pytest.approx(1 / 3)
    assert factor_tau([1, 1], [1, 1]) is None


def test_kendall_tau_b_hand_worked():
    assert kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert kendall_tau_b([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / np.sqrt(6))  # τ-b with a tie in x
    assert kendall_tau_b([1, 1], [1, 2]) is None
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_roles_and_alignment():
    chosen = [{"length": 10.0, "hedging": 0.0}, {"length": 5.0, "hedging": 2.0}, {"length": 8.0, "hedging": 1.0}]
    rejected = [{"length": 4.0, "hedging": 1.0}, {"length": 9.0, "hedging": 1.0}, {"length": 3.0, "hedging": 1.0}]
    human = role_taus(chosen, rejected, [True, True, True])
    assert human == {"length": pytest.approx(1 / 3), "hedging": 0.0}  # length: +,-,+ ; hedging: -,+,tie
    model = role_taus(chosen, rejected, [True, False, True])  # the model prefers the rejected side of pair 2
    assert model == {"length": pytest.approx(1.0), "hedging": pytest.approx(-1.0)}
    out = alignment(human, model)
    assert out["most_misaligned"][0]["factor"] == "hedging" and out["most_misaligned"][0]["gap"] == -1.0
    assert out["kendall_tau"] == pytest.approx(1.0)  # both rank length above hedging


PAIRS = [{"id": "1", "prompt": "How do I boil an egg?", "chosen": "Boil it for 9 minutes.",
          "rejected": "Eggs are nice."},
         {"id": "2", "prompt": "Capital of France?", "chosen": "Paris.", "rejected": "I think it might be Lyon."}]


def test_suite_generation_role_matches_a_manual_forward_pass(tokenizer, tiny_model):
    from alignkit.data.tokenize import PromptEncoder

    result = profile.run_profile(ProbeContext(tiny_model, tokenizer), PAIRS)
    s = result.summary
    assert set(s["tau"]) == {"human", "generation", "discrimination"}
    assert set(s["tau"]["human"]) == set(profile.FACTORS)
    encoder = PromptEncoder(tokenizer)
    prompt_ids = encoder.encode_prompt(PAIRS[0]["prompt"])
    response_ids = encoder.encode_response(PAIRS[0]["prompt"], PAIRS[0]["chosen"])
    with torch.no_grad():
        logp = tiny_model(input_ids=torch.tensor([prompt_ids + response_ids])).logits[0].log_softmax(-1)
    targets = torch.tensor(response_ids)
    manual = logp[len(prompt_ids) - 1:-1].gather(1, targets[:, None]).mean()
    assert result.rows[0]["score_chosen"] == pytest.approx(float(manual), abs=1e-4)
    row = result.rows[1]
    assert row["prefers_chosen_generation"] == (row["score_chosen"] > row["score_rejected"])


def test_judge_factors_need_a_judge():
    with pytest.raises(ValueError, match="judge"):
        profile.run_profile(ProbeContext(None, None, options={"judge_factors": True}), PAIRS)
