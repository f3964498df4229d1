"""The moral direction (Schramowski et al.): a synthetic embedding with a known direction is recovered, signs,
scores, the filter, and the model-pooled embedding path on tiny_llama."""

from __future__ import annotations

import numpy as np
import pytest

from alignkit.probes import moral
from alignkit.probes.base import ProbeContext
from alignkit.probes.moral import fit_direction, flag_lowest

DIM = 32
DIRECTION = np.random.default_rng(0).normal(size=DIM)
DIRECTION /= np.linalg.norm(DIRECTION)


class SyntheticEncoder:
    """Embeds a sentence as value(action) · DIRECTION + small noise; the action is found inside the template."""

    def __init__(self, values: dict[str, float], noise: float = 0.05):
        self.values, self.noise = values, noise
        self.calls: list[str] = []

    def encode(self, texts):
        self.calls += list(texts)
        out = []
        for text in texts:
            action = max((a for a in self.values if a in text), key=len)
            rng = np.random.default_rng(abs(hash(text)) % 2**32)
            out.append(self.values[action] * DIRECTION + self.noise * rng.normal(size=DIM))
        return np.array(out)


SEEDS = {"smile": 1.0, "help": 0.8, "love": 1.2, "greet": 0.6, "kill": -1.1, "steal": -0.9, "lie": -0.7,
         "harm": -1.0}
SCORED = {"kill time": 0.3, "kill people": -1.3, "help friends": 0.9, "steal a car": -0.8}


def test_pca_recovers_a_known_direction_with_the_right_sign():
    rng = np.random.default_rng(1)
    values = np.array([1.0, 0.8, 1.2, -1.1, -0.9, -0.7, 0.6, -1.0])
    x = values[:, None] * 3 * DIRECTION + 0.05 * rng.normal(size=(8, DIM)) + 5.0  # an offset PCA must centre away
    direction = fit_direction(x, np.sign(values))
    assert abs(direction.vector @ DIRECTION) > 0.99
    assert direction.vector @ DIRECTION > 0  # oriented so that the positive seeds score higher
    scores = direction.score(x)
    assert np.all(np.sign(scores) == np.sign(values - values.mean()))
    assert np.abs(scores).max() == pytest.approx(1.0)
    assert direction.explained_variance_ratio > 0.95
    flipped = fit_direction(x, -np.sign(values))
    assert flipped.vector @ DIRECTION < 0


def test_fit_needs_both_polarities():
    with pytest.raises(ValueError, match="both polarities"):
        fit_direction(np.eye(3), np.array([1, 1, 1]))


def test_flag_lowest():
    assert flag_lowest(np.array([0.3, -0.5, 0.9, -0.1, 0.0]), 0.4).tolist() == [False, True, False, True, False]
    assert flag_lowest(np.array([0.3, 0.2]), 0.01).tolist() == [False, True]  # at least one


def test_suite_on_a_synthetic_encoder():
    encoder = SyntheticEncoder({**SEEDS, **SCORED, "returned the wallet": 0.7, "robbed the bank": -0.9,
                                "planted trees": 0.5})
    items = ([{"id": a, "action": a, "polarity": "+" if v > 0 else "-"} for a, v in SEEDS.items()]
             + [{"id": a, "action": a, "rating": v} for a, v in SCORED.items()]
             + [{"id": "t1", "text": "She returned the wallet."}, {"id": "t2", "text": "He robbed the bank."},
                {"id": "t3", "text": "They planted trees."}])
    result = moral.run_moral(ProbeContext(None, None, options={"encoder": encoder, "flag_fraction": 0.3}), items)
    s = result.summary
    assert s["seed_sign_accuracy"] == 1.0 and s["n_seeds"] == 8 and s["n_rated"] == 4
    assert s["pearson_with_ratings"] > 0.99 and s["spearman_with_ratings"] == pytest.approx(1.0)
    assert s["filter"]["flagged_ids"] == ["t2"]
    assert "Is it exemplary to kill time?" in encoder.calls  # every template is embedded
    assert "He robbed the bank." in encoder.calls  # texts are embedded raw


def test_items_need_exactly_one_kind():
    with pytest.raises(ValueError, match="exactly one"):
        moral.run_moral(ProbeContext(None, None, options={"encoder": SyntheticEncoder(SEEDS)}),
                        [{"id": "x", "action": "smile", "text": "hi"}])


def test_model_pooled_embeddings_on_tiny_llama(tokenizer, tiny_model):
    from alignkit.probes.lm_queries import pooled_hidden_states

    texts = ["Should I smile?", "Should I kill people today?"]
    pooled = pooled_hidden_states(tiny_model, tokenizer, texts)
    alone = pooled_hidden_states(tiny_model, tokenizer, texts[:1])
    assert pooled.shape == (2, tiny_model.config.hidden_size)
    # the shorter text is padded in the batch; padding must not change its mean embedding
    assert np.allclose(pooled[0], alone[0], atol=1e-4)
