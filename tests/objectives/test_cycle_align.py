"""CycleAlign's ranking pieces against hand-worked values (Hong et al., ACL Findings 2024, arXiv 2310.16271)."""

from __future__ import annotations

import pytest
import torch

from alignkit.objectives.cycle_align import (
    agreement_ranking,
    cycle_label,
    kendall_tau,
    longest_common_subsequence,
    ranking_loss,
)


def test_longest_common_subsequence():
    assert longest_common_subsequence([2, 0, 3, 1], [0, 2, 3, 1]) in ([2, 3, 1], [0, 3, 1])
    assert len(longest_common_subsequence([2, 0, 3, 1], [0, 2, 3, 1])) == 3
    assert longest_common_subsequence([0, 1, 2, 3], [3, 2, 1, 0]) in ([0], [1], [2], [3])
    assert longest_common_subsequence([1, 2, 3], [1, 2, 3]) == [1, 2, 3]


def test_agreement_falls_back_to_the_black_box_when_too_short():
    assert agreement_ranking([0, 1, 2], [0, 2, 1]) in (([0, 1], True), ([0, 2], True))
    assert agreement_ranking([0, 1, 2], [2, 1, 0]) == ([0, 1, 2], False)  # reversed: LCS of length 1


def test_kendall_tau():
    assert kendall_tau([0, 1, 2], [0, 1, 2]) == 1.0
    assert kendall_tau([0, 1, 2], [2, 1, 0]) == -1.0
    assert kendall_tau([0, 1, 2], [1, 0, 2]) == pytest.approx(1 / 3)  # one discordant pair of three


def test_ranking_loss_by_hand():
    # scores = logps / tokens = (-2, -1, -3), ranked best first: pair (0, 1) is out of order by 1 nat/token
    out = ranking_loss(torch.tensor([-4.0, -2.0, -3.0]), torch.tensor([2.0, 2.0, 1.0]), sft_weight=1.0)
    assert out.loss.tolist() == pytest.approx([1.0 + 2.0])  # hinge 1 + NLL of the best response 2
    assert float(out.metrics["rank_loss"]) == pytest.approx(1.0)
    assert float(out.metrics["ranked_correctly"]) == pytest.approx(2 / 3)
    ordered = ranking_loss(torch.tensor([-2.0, -6.0, -3.0]), torch.tensor([2.0, 3.0, 1.0]), sft_weight=0.5)
    assert ordered.loss.tolist() == pytest.approx([0.5])  # scores (-1, -2, -3): no hinge, 0.5 · NLL 1


def test_ranking_loss_gradient_pushes_the_better_response_up():
    logps = torch.tensor([-4.0, -2.0, -3.0], requires_grad=True)
    ranking_loss(logps, torch.tensor([2.0, 2.0, 1.0]), sft_weight=0.0).loss.sum().backward()
    assert logps.grad.tolist() == pytest.approx([-0.5, 0.5, 0.0])  # d/ds of max(0, s1 - s0), over 2 tokens


def label_loss(black_scores, white_scores, label):
    """The step's loss for one prompt, with token counts 1 so the white scores are the log-probs."""
    out = cycle_label(black_scores, white_scores, label=label)
    logps = torch.tensor(white_scores)[out.ranking]
    return out, ranking_loss(logps, torch.ones(len(logps)), sft_weight=0.0, tiers=torch.tensor(out.tiers))


def test_rank_loss_fires_where_the_black_box_disagrees():
    # black box: 0 > 1 > 2 > 3; white box (scores -2, -1, -3, -4): 1 > 0 > 2 > 3, one swapped pair
    black, white = [4.0, 3.0, 2.0, 1.0], [-2.0, -1.0, -3.0, -4.0]
    out, loss = label_loss(black, white, "black_box")
    assert out.black == [0, 1, 2, 3] and out.white == [1, 0, 2, 3] and out.ranking == [0, 1, 2, 3]
    assert out.agreed and len(out.agreement) == 3
    assert float(loss.metrics["rank_loss"]) == pytest.approx(1.0)  # s_1 - s_0 on the one disagreeing pair
    assert float(loss.metrics["ranked_correctly"]) == pytest.approx(5 / 6)
    # the literal reading trains on the agreement, a subsequence of the white box's own order: hinge zero
    literal, literal_loss = label_loss(black, white, "agreement")
    assert literal.ranking == literal.agreement and float(literal_loss.metrics["rank_loss"]) == 0.0


def test_rank_loss_on_reversed_rankings_by_hand():
    out, loss = label_loss([3.0, 2.0, 1.0], [-3.0, -2.0, -1.0], "black_box")
    assert not out.agreed and out.agreement == []  # LCS of reversed rankings has length 1
    assert float(loss.metrics["rank_loss"]) == pytest.approx(1.0 + 2.0 + 1.0)


def test_equal_black_box_scores_order_no_pair():
    # verifier-like rewards 1, 0, 1, 0: black ranking 0, 2 | 1, 3; white scores in that order -3, -1, -2, -4
    out, loss = label_loss([1.0, 0.0, 1.0, 0.0], [-3.0, -2.0, -1.0, -4.0], "black_box")
    assert out.ranking == [0, 2, 1, 3] and out.tiers == [1.0, 1.0, 0.0, 0.0]
    assert float(loss.metrics["ordered_pairs"]) == 4.0
    assert float(loss.metrics["rank_loss"]) == pytest.approx(1.0)  # only (0, 1): -2 - (-3); the tie 0~2 is free
    untiered = ranking_loss(torch.tensor([-3.0, -1.0, -2.0, -4.0]), torch.ones(4), sft_weight=0.0)
    assert float(untiered.metrics["rank_loss"]) == pytest.approx(3.0)  # with the tie ordered: + (-1 - -3)
