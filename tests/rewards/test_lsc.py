"""LSC (Wang et al., ICML 2024, arXiv:2402.00742): u = log σ(r − r_ref(x)), r_ref a quantile of π_0's sample
rewards per prompt, cached; the LSC sum as a logical AND; the spec syntax of build_source and decoding."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.data.synthetic import make_synthetic
from alignkit.decoding.rewards import build_reward, source_spec
from alignkit.io import read_jsonl
from alignkit.rewards import (
    LSCReward,
    SumReward,
    VerifierReward,
    build_source,
    lsc_sum,
    lsc_transform,
    reference_point,
    weighted_sum,
)
from alignkit.rewards.lsc import policy_sampler, split_lsc_prefix


class TableReward:
    """r(x, y) looked up by response text (prompt ignored); counts the texts it scored."""

    def __init__(self, table: dict[str, float]):
        self.table, self.scored = table, 0

    def rewards(self, prompts, responses):
        self.scored += len(responses)
        return torch.tensor([self.table[r] for r in responses])

    def preferences(self, prompts, first, second):
        raise NotImplementedError

    @staticmethod
    def preference_from_rewards(first, second):
        return torch.sigmoid(first - second)


class CountingSampler:
    """Reference-policy samples "ref0".."ref4" per prompt ("hi0".."hi4" for "p2"); records each call's prompts."""

    def __init__(self, n: int = 5):
        self.calls: list[list] = []
        self.n = n

    def __call__(self, prompts):
        self.calls.append(list(prompts))
        return [[f"{'hi' if p == 'p2' else 'ref'}{j}" for j in range(self.n)] for p in prompts]


def log_sigmoid(x: float) -> float:
    return -math.log(1 + math.exp(-x))


def test_transform_by_hand():
    assert lsc_transform(2.0, 1.0).item() == pytest.approx(math.log(1 / (1 + math.exp(-1))))  # -0.31326
    assert lsc_transform(0.0, 0.0).item() == pytest.approx(math.log(0.5))
    u = lsc_transform(torch.tensor([3.0, -1.0, 0.5]), torch.tensor([1.0, 1.0, 0.5]))
    assert u.tolist() == pytest.approx([log_sigmoid(2.0), log_sigmoid(-2.0), math.log(0.5)])
    # stable far below the reference (≈ r − r_ref) and saturating at 0 far above it
    assert lsc_transform(-200.0, 0.0).item() == pytest.approx(-200.0)
    assert lsc_transform(200.0, 0.0).item() == 0.0
    assert weighted_sum([[1.0, 2.0], [10.0, 20.0]], [0.5, 2.0]).tolist() == [20.5, 41.0]


def test_reference_point_is_a_quantile_of_sample_rewards():
    assert reference_point([3.0, 0.0, 10.0, 1.0, 2.0]).item() == 2.0  # the median by default
    # linear interpolation: position q·(n − 1) = 0.85·4 = 3.4 between 4 and 5
    assert reference_point([1.0, 2.0, 3.0, 4.0, 5.0], 0.85).item() == pytest.approx(4.4)
    assert reference_point([[0.0, 1.0], [4.0, 8.0]]).tolist() == [0.5, 6.0]  # per prompt, [P, n] -> [P]
    with pytest.raises(ValueError, match="quantile must lie in"):
        reference_point([1.0], 1.5)
    with pytest.raises(ValueError, match="no reference-policy sample rewards"):
        reference_point([])


def test_lsc_sum_is_a_logical_and():
    # two objectives with reference point 0: A passes both a little, B maxes one and fails the other
    a, b = [1.0, 1.0], [10.0, -3.0]
    rewards = torch.tensor([a, b]).T  # [K=2 objectives, N=2 responses]
    raw = weighted_sum(rewards)
    assert raw.tolist() == [2.0, 7.0]  # the raw sum prefers B
    lsc = lsc_sum(rewards, torch.zeros(2, 2))
    assert lsc.tolist() == pytest.approx([2 * log_sigmoid(1.0), log_sigmoid(10.0) + log_sigmoid(-3.0)])
    assert lsc[0].item() == pytest.approx(-0.6265, abs=1e-4) and lsc[1].item() == pytest.approx(-3.0486, abs=1e-4)
    assert lsc[0] > lsc[1]  # the LSC sum prefers A, which passes both

    # the same through sources: per-prompt reference points from π_0 samples with median 0 for both objectives
    first = TableReward({"A": 1.0, "B": 10.0, "ref0": -2.0, "ref1": -1.0, "ref2": 0.0, "ref3": 1.0, "ref4": 2.0})
    second = TableReward({"A": 1.0, "B": -3.0, "ref0": -5.0, "ref1": -0.5, "ref2": 0.0, "ref3": 0.5, "ref4": 5.0})
    plain = SumReward([(1.0, first), (1.0, second)])
    anded = SumReward([(1.0, LSCReward(first, CountingSampler())), (1.0, LSCReward(second, CountingSampler()))])
    assert plain.rewards(["q", "q"], ["A", "B"]).tolist() == [2.0, 7.0]
    assert anded.rewards(["q", "q"], ["A", "B"]).tolist() == pytest.approx(lsc.tolist())
    assert plain.preferences(["q"], ["A"], ["B"]).item() < 0.5 < anded.preferences(["q"], ["A"], ["B"]).item()


def test_reference_policy_is_sampled_once_per_prompt_and_cached_on_disk(tmp_path):
    source = TableReward({"good": 3.0, "bad": -3.0, **{f"ref{j}": float(j) for j in range(5)},
                          **{f"hi{j}": 10.0 + j for j in range(5)}})  # π_0 does better on p2: r_ref 12
    sampler = CountingSampler()
    cache = tmp_path / "lsc" / "refs.jsonl"
    reward = LSCReward(source, sampler, quantile=0.5, cache=cache)
    chat = [{"role": "user", "content": "hi"}]
    u = reward.rewards(["p1", "p2", "p1", chat], ["good", "bad", "bad", "good"])
    assert sampler.calls == [["p1", "p2", chat]]  # the new prompts, once each, in one call
    assert u.tolist() == pytest.approx([log_sigmoid(1.0), log_sigmoid(-15.0), log_sigmoid(-5.0), log_sigmoid(1.0)])
    reward.rewards(["p2", "p1"], ["good", "good"])
    reward.rewards(["p3"], ["good"])
    assert sampler.calls == [["p1", "p2", chat], ["p3"]]
    u, raw, ref = reward.transformed(["p1"], ["good"])
    assert (raw.item(), ref.item()) == (3.0, 2.0)
    rows = read_jsonl(cache)
    assert [r["prompt"] for r in rows] == ["p1", "p2", chat, "p3"]
    assert rows[0] == {"prompt": "p1", "rewards": [0.0, 1.0, 2.0, 3.0, 4.0], "reference": 2.0, "quantile": 0.5}

    # a new run reads the cache (at its own quantile) and samples nothing
    def no_sampling(prompts):
        raise AssertionError("sampled although cached")

    again = LSCReward(source, no_sampling, quantile=0.75, cache=cache)
    assert again.reference(["p1", chat]).tolist() == [3.0, 3.0]
    with pytest.raises(ValueError, match="no reference policy to sample for prompt 'new'"):
        LSCReward(source, cache=cache).rewards(["new"], ["good"])
    (tmp_path / "bad.jsonl").write_text('{"prompt": "p"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: an lsc cache line needs"):
        LSCReward(source, cache=tmp_path / "bad.jsonl")


def test_build_source_specs():
    lsc = build_source("lsc:verifier")
    assert isinstance(lsc, LSCReward) and isinstance(lsc.source, VerifierReward) and lsc.quantile == 0.5
    assert build_source("lsc@0.85:verifier").quantile == 0.85
    spec = {"type": "verifier", "unknown_reward": 0.0, "transform": "lsc", "lsc": {"quantile": 0.9, "samples": 4}}
    lsc = build_source(spec)
    assert lsc.quantile == 0.9 and lsc.sampling["samples"] == 4 and lsc.source.unknown_reward == 0.0
    both = build_source([{"type": "verifier", "transform": "lsc"}, {"type": "verifier", "weight": 0.5}])
    assert isinstance(both, SumReward) and [w for w, _ in both.terms] == [1.0, 0.5]
    assert isinstance(both.terms[0][1], LSCReward) and isinstance(both.terms[1][1], VerifierReward)
    bad = {
        "unknown transform 'log'; known: lsc": {"type": "verifier", "transform": "log"},
        "unknown lsc option 'quantil'": {"type": "verifier", "transform": "lsc", "lsc": {"quantil": 0.5}},
        "quantile must lie in": {"type": "verifier", "transform": "lsc", "lsc": {"quantile": 1.5}},
        "samples must be >= 1": {"type": "verifier", "transform": "lsc", "lsc": {"samples": 0}},
        "'lsc' options need 'transform: lsc'": {"type": "verifier", "lsc": {}},
        "empty list of rewards": [],
        "weight must be a number": [{"type": "verifier", "weight": "x"}],
        "lsc@Q needs a quantile": "lsc@high:verifier",
        "give the reward to transform": "lsc:",
    }
    for message, spec in bad.items():
        with pytest.raises(ValueError, match=message):
            build_source(spec)
    with pytest.raises(ValueError, match="lsc needs a scalar reward"):
        LSCReward(object())
    assert split_lsc_prefix("verifier") == (None, "verifier")


def test_decoding_specs_and_verifier_rewards():
    assert source_spec("lsc:verifier:synthetic") == {"type": "verifier", "transform": "lsc", "lsc": {}}
    assert source_spec("lsc@0.85:rm:runs/rm") == {"type": "reward_model", "model": "runs/rm", "transform": "lsc",
                                                  "lsc": {"quantile": 0.85}}
    with pytest.raises(ValueError, match="lsc needs a scalar reward; a judge only compares"):
        source_spec("lsc:judge:smollm2-135m-instruct")
    with pytest.raises(ValueError, match="unknown verifier set"):
        source_spec("lsc:verifier:nope")
    pairs = make_synthetic(4, 0)[0]
    reward = build_reward(["lsc:verifier:synthetic", "0.5*verifier:synthetic"])
    assert not reward.is_verifier
    lsc = reward.sources[0][1]
    lsc.sampler = lambda prompts: [[p.rejected, p.rejected, p.chosen] for p in pairs[:len(prompts)]]
    prompts = [p.prompt for p in pairs]
    chosen = reward.score(prompts, [p.chosen for p in pairs])
    rejected = reward.score(prompts, [p.rejected for p in pairs])
    # π_0 passes 1 of 3: median 0, so a pass is log σ(1) (+ 0.5 raw), a fail log σ(0)
    assert chosen == pytest.approx([log_sigmoid(1.0) + 0.5] * 4)
    assert rejected == pytest.approx([math.log(0.5)] * 4)


def test_policy_sampler_binds_the_decoded_model(tiny_model, tokenizer, monkeypatch):
    reward = build_reward("lsc:verifier:synthetic", policy=None)
    lsc = reward.sources[0][1]
    lsc.sampling.update(samples=2, max_new_tokens=3)
    assert lsc.sampler is None
    reward.bind_policy(tiny_model, tokenizer)
    pair = make_synthetic(1, 0)[0][0]
    assert reward.score([pair.prompt], [pair.chosen]) == [pytest.approx(log_sigmoid(1.0))]  # tiny model fails
    samples = policy_sampler(tiny_model, tokenizer, samples=3, max_new_tokens=2)(["a", "b"])
    assert [len(s) for s in samples] == [3, 3] and all(isinstance(t, str) for s in samples for t in s)

    import alignkit.models

    loaded = []
    monkeypatch.setattr(alignkit.models, "load_model",
                        lambda spec, device=None, log=print: loaded.append((spec, device)) or (tiny_model, tokenizer))
    lsc = build_source({"type": "verifier", "transform": "lsc",
                        "lsc": {"reference": "tiny", "samples": 2, "max_new_tokens": 2}}, device="cpu")
    assert loaded == [("tiny", "cpu")] and lsc.sampler is not None
    assert lsc.reference([pair.prompt]).tolist() == [0.0]


def test_decode_binds_the_decoded_model_as_the_lsc_reference(tiny_model, tokenizer):
    from alignkit.data.synthetic import make_synthetic
    from alignkit.decoding import decode

    _, pairs = make_synthetic(n_train=0, n_test=2, seed=0)
    rows = decode(tiny_model, tokenizer, [p.prompt for p in pairs], "best_of_n", reward="lsc:verifier:synthetic",
                  n=2, max_new_tokens=4, log=lambda m: None)
    assert len(rows) == 2 and all(len(r["candidates"]) == 2 for r in rows)
