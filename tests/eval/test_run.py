"""The evaluation recipe end to end on tiny random Llamas and small synthetic data."""

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from alignkit.data import load_records, make_synthetic
from alignkit.engine.layouts import collate
from alignkit.engine.logprobs import sequence_logps
from alignkit.eval import metrics
from alignkit.eval.generations import evaluate_generations, synthetic_verifier
from alignkit.eval.generations import exact_samples as sample_token_ids
from alignkit.eval.preferences import encode_pairs, evaluate_preferences
from alignkit.eval.preferences import score_encoded as score_pairs
from alignkit.eval.writers import write_result
from alignkit.models import tiny_llama
from alignkit.rewards import RewardModel, load_reward_model
from alignkit.rewards.judge import compare
from tests.conftest import require_hh_rlhf

BETA = 0.1


@pytest.fixture(scope="module")
def pairs():
    _, test = make_synthetic(n_train=0, n_test=8, seed=0)
    return test


@pytest.fixture(scope="module")
def models(tokenizer):
    return {name: tiny_llama(tokenizer, seed=seed).eval() for name, seed in (("policy", 0), ("ref", 1),
                                                                              ("before", 2))}


@pytest.fixture(scope="module")
def full_result(models, tokenizer, pairs):
    return evaluate_preferences(models["policy"], tokenizer, pairs, reference=models["ref"], before=models["before"],
                                beta=BETA, alpha=0.75, batch_size=3, n_bootstrap=200)


def column(rows, name):
    return np.array([row[name] for row in rows], dtype=float)


def test_table_matches_the_engine(full_result, models, tokenizer, pairs):
    """The per-example log-probs are exactly the log-prob engine's, on the training encoding."""
    encoded, _ = encode_pairs(tokenizer, pairs, 512, 256)
    item = encoded[5]
    batch = collate([(item.prompt, item.chosen), (item.prompt, item.rejected)], tokenizer.pad_token_id)
    with torch.no_grad():
        direct = sequence_logps(models["policy"], batch)
    row = full_result.per_example[5]
    assert row["logp_chosen"] == pytest.approx(float(direct.logps[0]), abs=1e-3)
    assert row["logp_rejected"] == pytest.approx(float(direct.logps[1]), abs=1e-3)
    assert row["tokens_chosen"] == len(item.chosen) and row["tokens_rejected"] == len(item.rejected)
    assert row["prompt_id"] == pairs[5].metadata["task_id"] and row["family"] == pairs[5].metadata["family"]


def test_shared_prefix_and_padded_layouts_agree(models, tokenizer, pairs):
    encoded, _ = encode_pairs(tokenizer, pairs, 512, 256)
    padded = score_pairs(models["policy"], encoded, tokenizer.pad_token_id, batch_size=3, layout="padded")
    auto = score_pairs(models["policy"], encoded, tokenizer.pad_token_id, batch_size=4, layout="auto")
    np.testing.assert_allclose(auto.chosen, padded.chosen, atol=1e-3)
    np.testing.assert_allclose(auto.rejected, padded.rejected, atol=1e-3)
    np.testing.assert_array_equal(auto.tokens_chosen, padded.tokens_chosen)


def test_summary_recomputed_from_the_table(full_result):
    rows, s = full_result.per_example, full_result.summary
    assert len(rows) == s["n_examples"] == 8
    pc, pr = column(rows, "logp_chosen"), column(rows, "logp_rejected")
    tc, tr = column(rows, "tokens_chosen"), column(rows, "tokens_rejected")
    rc, rr = column(rows, "ref_logp_chosen"), column(rows, "ref_logp_rejected")
    alpha = column(rows, "alpha")

    r = metrics.ranking_accuracy(pc, pr)
    assert s["ranking"]["accuracy"] == pytest.approx(r) == pytest.approx(column(rows, "correct").mean())
    assert s["ranking"]["accuracy_ci_low"] <= r <= s["ranking"]["accuracy_ci_high"]
    assert s["ranking"]["accuracy_normalized"] == pytest.approx(
        metrics.ranking_accuracy(pc, pr, tc, tr, length_normalized=True))
    assert s["ranking"]["accuracy_normalized"] == pytest.approx(column(rows, "correct_normalized").mean())
    assert s["ranking"]["reference_accuracy"] == pytest.approx(metrics.ranking_accuracy(rc, rr))

    margins = metrics.reward_margins(pc, pr, rc, rr, BETA)
    np.testing.assert_allclose(column(rows, "margin"), margins, rtol=1e-6, atol=1e-6)
    assert s["rewards"]["accuracies"] == pytest.approx(metrics.implicit_reward_accuracy(pc, pr, rc, rr, BETA))
    assert s["rewards"]["accuracies"] == pytest.approx(column(rows, "reward_correct").mean())
    assert s["rewards"]["margins"] == pytest.approx(margins.mean(), abs=1e-6)
    # percentile intervals of the same resamples: they bracket the estimate, lie within the data's range, and
    # the margin interval equals a bootstrap of the per-pair margins with the same seed
    assert s["rewards"]["accuracies_ci_low"] <= s["rewards"]["accuracies"] <= s["rewards"]["accuracies_ci_high"]
    assert margins.min() <= s["rewards"]["margins_ci_low"] <= margins.mean() <= s["rewards"]["margins_ci_high"]
    expected = metrics.bootstrap_ci(column(rows, "margin"), n_resamples=200)  # the fixture's n_bootstrap
    assert (s["rewards"]["margins_ci_low"], s["rewards"]["margins_ci_high"]) == pytest.approx(
        (expected.low, expected.high), abs=1e-5)
    assert s["rewards"]["chosen"] - s["rewards"]["rejected"] == pytest.approx(margins.mean(), abs=1e-6)

    r_star = metrics.idealized_ranking_accuracy(rc, rr, BETA, alpha)
    assert s["idealized"]["r_star"] == pytest.approx(r_star) == pytest.approx(column(rows, "ideal_correct").mean())
    assert s["idealized"]["alignment_gap"] == pytest.approx(r_star - r)
    np.testing.assert_allclose(column(rows, "difficulty"), rr - rc, atol=1e-9)
    np.testing.assert_allclose(column(rows, "difficulty_loss_threshold"),
                               metrics.difficulty_loss_threshold(rc, rr, BETA), rtol=1e-9)
    assert s["ranking"]["by_family"].keys() == {"arithmetic", "concise", "format", "refusal"}
    json.dumps(s, allow_nan=False)  # summary.json must be strict JSON


def test_flipped_share_with_a_before_model(full_result):
    rows, flips = full_result.per_example, full_result.summary["flips"]
    expected = metrics.flipped_share(column(rows, "before_logp_chosen"), column(rows, "before_logp_rejected"),
                                     column(rows, "logp_chosen"), column(rows, "logp_rejected"))
    assert (flips["share"], flips["n_flipped"], flips["n_misranked_before"]) == tuple(expected)
    misranked = [row for row in rows if not row["before_correct"]]
    assert all(row["flipped"] is None for row in rows if row["before_correct"])
    assert sum(row["flipped"] for row in misranked) == expected.n_flipped
    assert len(misranked) == expected.n_misranked


def test_flipped_share_by_construction(models, tokenizer, pairs):
    """before = the reference model: its mis-ranked pairs are exactly the reference's, share computed by hand."""
    res = evaluate_preferences(models["policy"], tokenizer, pairs[:5], reference=models["ref"],
                               before=models["ref"], n_bootstrap=0)
    rows = res.per_example
    mis = [row for row in rows if not row["ref_logp_chosen"] > row["ref_logp_rejected"]]
    flipped = [row for row in mis if row["logp_chosen"] > row["logp_rejected"]]
    assert res.summary["flips"]["n_misranked_before"] == len(mis)
    assert res.summary["flips"]["share"] == (len(flipped) / len(mis) if mis else None)


def test_r_star_with_per_example_alpha_from_metadata(full_result, models, tokenizer, pairs):
    ref_rows = full_result.per_example
    rc, rr = column(ref_rows, "ref_logp_chosen"), column(ref_rows, "ref_logp_rejected")
    c = rr - rc  # difficulty
    # Pick α per pair so the hand answer is known: α = σ(β·c ± 1) puts (1/β)·log(α/(1−α)) just above or below c.
    wanted = np.array([True, False] * 4)
    alphas = 1 / (1 + np.exp(-(BETA * c + np.where(wanted, 1.0, -1.0))))
    alphas = np.clip(alphas, 0.02, 0.98)
    expected = (rc - rr + np.log(alphas / (1 - alphas)) / BETA) > 0
    with_alpha = [p.model_copy(update={"metadata": {**p.metadata, "agreement": float(a)}})
                  for p, a in zip(pairs, alphas, strict=True)]
    with_alpha[7] = pairs[7]  # no metadata: falls back to the constant
    expected[7] = (rc[7] - rr[7] + math.log(0.6 / 0.4) / BETA) > 0
    res = evaluate_preferences(models["policy"], tokenizer, with_alpha, reference=models["ref"], beta=BETA,
                               alpha=0.6, n_bootstrap=0)
    got = column(res.per_example, "alpha")
    np.testing.assert_allclose(got[:7], alphas[:7])
    assert got[7] == 0.6
    assert res.summary["idealized"]["alpha_from_metadata"] == 7
    assert [row["ideal_correct"] for row in res.per_example] == expected.tolist()
    assert res.summary["idealized"]["r_star"] == pytest.approx(expected.mean())


def test_alpha_edge_cases(models, tokenizer, pairs):
    certain = [p.model_copy(update={"metadata": {"agreement": 1.0}}) for p in pairs[:1]]
    res = evaluate_preferences(models["policy"], tokenizer, certain, reference=models["ref"], n_bootstrap=0)
    assert res.summary["idealized"]["alpha_clipped"] == 1
    assert all(row["alpha"] == pytest.approx(0.99) for row in res.per_example)
    bad = [pairs[0].model_copy(update={"metadata": {"agreement": "high"}})]
    with pytest.raises(ValueError, match="agreement"):
        evaluate_preferences(models["policy"], tokenizer, bad)
    with pytest.raises(ValueError, match="no preference pairs"):
        evaluate_preferences(models["policy"], tokenizer, [])


def test_reference_is_the_policy(models, tokenizer, pairs):
    """The HH-RLHF setting (reference = policy): implicit rewards are trivially zero, and no second pass is made."""
    res = evaluate_preferences(models["policy"], tokenizer, pairs[:3], reference=models["policy"], n_bootstrap=0)
    assert all(row["margin"] == 0 for row in res.per_example)
    assert res.summary["rewards"]["accuracies"] == 0.0  # ties count as incorrect
    assert "reference" not in res.summary["seconds"]
    assert res.summary["ranking"]["accuracy"] == res.summary["ranking"]["reference_accuracy"]


def test_no_reference_uses_the_policy_for_r_star(models, tokenizer, pairs):
    res = evaluate_preferences(models["policy"], tokenizer, pairs[:3], n_bootstrap=0)
    assert "rewards" not in res.summary and "ref_logp_chosen" not in res.per_example[0]
    pc, pr = column(res.per_example, "logp_chosen"), column(res.per_example, "logp_rejected")
    assert res.summary["idealized"]["r_star"] == pytest.approx(metrics.idealized_ranking_accuracy(pc, pr, 0.1, 0.75))


def test_write_result_parquet_and_jsonl(tmp_path, full_result):
    paths = write_result(tmp_path, full_result.summary, full_result.per_example, fmt="jsonl")
    assert len(paths["per_example"].read_text().splitlines()) == 8
    paths = write_result(tmp_path, full_result.summary, full_result.per_example, fmt="parquet")
    assert not (tmp_path / "eval" / "per_example.jsonl").exists()  # no stale table for the report to pick up
    table = pq.read_table(paths["per_example"]).to_pydict()
    assert table["logp_chosen"] == [row["logp_chosen"] for row in full_result.per_example]
    assert table["flipped"] == [row["flipped"] for row in full_result.per_example]
    assert json.loads(paths["summary"].read_text())["n_examples"] == 8


def test_write_result_removes_tables_the_new_run_does_not_produce(tmp_path, full_result):
    """A generation-only run into the same directory must not leave the old per-example table for the report."""
    generations = [{"index": 0, "prompt": "q", "response": "a"}]
    write_result(tmp_path, full_result.summary, full_result.per_example, generations, fmt="jsonl")
    write_result(tmp_path, full_result.summary, full_result.per_example, fmt="parquet")
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["per_example.parquet", "summary.json"]
    paths = write_result(tmp_path, {"generation": {}}, None, generations, fmt="jsonl")
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["generations.jsonl", "summary.json"]
    assert "per_example" not in paths


# ------------------------------------------------------------------------------------------- generations


def test_verifier_scored_generation(models, tokenizer, pairs):
    prompts = [p.prompt for p in pairs[:4]]
    chosen = [p.chosen for p in pairs[:4]]  # the chosen answers pass their verifier
    res = evaluate_generations(models["policy"], tokenizer, prompts, baseline=chosen, verifier=synthetic_verifier,
                               max_new_tokens=6, n_bootstrap=100)
    rows, s = res.per_example, res.summary
    assert [row["baseline_verified"] for row in rows] == [True] * 4
    assert s["verifier"]["baseline_pass_rate"] == 1.0
    assert s["verifier"]["pass_rate"] == pytest.approx(np.mean([row["verified"] for row in rows]))
    # A win needs the policy to pass where the baseline fails: impossible here.
    expected = np.mean([0.5 if row["verified"] else 0.0 for row in rows])
    assert s["win_rate"]["verifier"]["win_rate"] == pytest.approx(expected)
    assert s["length"]["mean"] == pytest.approx(np.mean([row["response_tokens"] for row in rows]))
    assert all(row["response_tokens"] <= 6 for row in rows)
    assert synthetic_verifier("Tell me a joke.", "no") is None


class ScriptedJudge:
    """Prefers the policy on even prompts and the baseline on odd ones, plus a +0.2 bias for position one."""

    def __init__(self, baseline):
        self.baseline = set(baseline)
        self.calls = []

    def __call__(self, prompt, first, second):
        self.calls.append((prompt, first, second))
        policy_first = first not in self.baseline
        likes_policy = int(prompt.rsplit("#", 1)[1]) % 2 == 0
        p_first_better = 0.7 if policy_first == likes_policy else 0.3
        return min(1.0, p_first_better + 0.2)


def test_scripted_judge_win_rate(models, tokenizer):
    prompts = [f"Say something #{i}" for i in range(6)]
    baseline = [f"BASELINE ANSWER {i}" for i in range(6)]
    judge = ScriptedJudge(baseline)
    res = evaluate_generations(models["policy"], tokenizer, prompts, baseline=baseline, judge=judge, max_new_tokens=4,
                               n_bootstrap=200)
    assert len(judge.calls) == 12  # both orders for every prompt
    assert [c[2] for c in judge.calls[::2]] == baseline  # policy answer first, then swapped
    assert [c[1] for c in judge.calls[1::2]] == baseline
    # Position bias cancels: P = ½·[(0.7+0.2) + 1 − (0.3+0.2)] = 0.7 on even prompts, 0.3 on odd.
    assert [row["judge_p"] for row in res.per_example] == pytest.approx([0.7, 0.3] * 3)
    outcomes = [row["judge_outcome"] for row in res.per_example]
    policy_answers = [row["response"] for row in res.per_example]
    assert outcomes == compare(judge, prompts, policy_answers, baseline) == [1.0, 0.0] * 3
    w = res.summary["win_rate"]["judge"]
    assert w["win_rate"] == 0.5 and w["wins"] == 3 and w["losses"] == 3
    assert w["low"] <= 0.5 <= w["high"]
    lc = metrics.length_adjusted_win_rate(outcomes, [row["response_tokens"] for row in res.per_example],
                                          [row["baseline_tokens"] for row in res.per_example], n_resamples=200)
    assert w["length_adjusted"] == pytest.approx(lc.win_rate)
    with pytest.raises(ValueError, match="baseline"):
        evaluate_generations(models["policy"], tokenizer, prompts, judge=judge)
    with pytest.raises(ValueError, match="tie_margin"):  # ≥ 0.5 would turn every judgement into a tie
        evaluate_generations(models["policy"], tokenizer, prompts, baseline=baseline, judge=judge, tie_margin=0.5)


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory, tokenizer):
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    path = tmp_path_factory.mktemp("reward_model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_reward_model_scoring(reward_dir, models, tokenizer):
    rm = load_reward_model(str(reward_dir), device="cpu", batch_size=2)
    prompts = ["What is 2 + 2?", "Name a colour.", "Say hi."]
    answers = ["4", "A long answer about the colour blue and why it is nice.", "hi"]
    scores = rm(prompts, answers)
    # Batched, left-padded scores equal one-at-a-time scores (padding does not leak into the reward).
    single = [rm([p], [a])[0] for p, a in zip(prompts, answers, strict=True)]
    assert scores == pytest.approx(single, abs=1e-4)
    baseline = ["five", "red", "hello"]
    res = evaluate_generations(models["policy"], tokenizer, prompts, baseline=baseline, reward_model=rm,
                               max_new_tokens=4, n_bootstrap=100)
    rows = res.per_example
    assert [row["baseline_reward"] for row in rows] == pytest.approx(rm(prompts, baseline), abs=1e-5)
    assert [row["reward"] for row in rows] == pytest.approx(rm(prompts, [row["response"] for row in rows]), abs=1e-5)
    wins = [1.0 if row["reward"] > row["baseline_reward"] else 0.0 if row["reward"] < row["baseline_reward"] else 0.5
            for row in rows]
    assert res.summary["win_rate"]["reward_model"]["win_rate"] == pytest.approx(np.mean(wins))
    assert res.summary["reward"]["mean"] == pytest.approx(np.mean([row["reward"] for row in rows]))


def test_reward_model_rejects_many_labels(tokenizer, reward_dir):
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=3)
    model = LlamaForSequenceClassification(config)
    with pytest.raises(ValueError, match="labels"):
        RewardModel(model, tokenizer)
    with pytest.raises(FileNotFoundError):
        load_reward_model("./no/such/reward/model")


def test_kl_estimate_on_policy_samples(models, tokenizer):
    prompts = ["Hello there.", "What is 3 + 4?"]
    same = evaluate_generations(models["policy"], tokenizer, prompts, reference=models["policy"], max_new_tokens=5,
                                kl_samples=2, n_bootstrap=0)
    assert same.summary["kl"]["k1"] == pytest.approx(0.0, abs=1e-5)
    assert same.summary["kl"]["k3"] == pytest.approx(0.0, abs=1e-6)
    assert same.summary["kl"]["n_samples"] == 4

    other = evaluate_generations(models["policy"], tokenizer, prompts, reference=models["ref"], max_new_tokens=5,
                                 n_bootstrap=0)
    kl = other.summary["kl"]
    assert kl["k3"] >= 0 and math.isfinite(kl["k1"])
    # Recompute by hand from the same seeded samples (the recipe samples with seed + 1).
    state = torch.random.get_rng_state()
    prompt_ids, sampled = sample_token_ids(models["policy"], tokenizer, prompts, max_new_tokens=5, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())  # sampling leaves the global RNG alone
    rows = list(zip(prompt_ids, sampled, strict=True))
    with torch.no_grad():
        lp = sequence_logps(models["policy"], collate(rows, tokenizer.pad_token_id)).logps
        lr = sequence_logps(models["ref"], collate(rows, tokenizer.pad_token_id)).logps
    expected = metrics.kl_estimate(lp, lr)
    assert kl["k1"] == pytest.approx(expected.k1, abs=1e-4)
    assert kl["k3"] == pytest.approx(expected.k3, rel=1e-3, abs=1e-4)
    assert [row["kl_log_ratio"] for row in other.per_example] == pytest.approx((lp - lr).tolist(), abs=1e-4)


# ------------------------------------------------------------------------------------------- real data


def test_hh_rlhf_pairs_load_and_score(tokenizer, models):
    path = require_hh_rlhf()
    loaded = load_records(path, on_invalid="skip", log=None)
    assert (loaded.n_read, loaded.n_skipped) == (1000, 3)  # three rows have an empty chosen response
    res = evaluate_preferences(models["policy"], tokenizer, loaded.records[:3], reference=models["policy"],
                               max_length=96, max_prompt_length=48, n_bootstrap=0)
    assert all(row["prompt_tokens"] + max(row["tokens_chosen"], row["tokens_rejected"]) <= 96
               for row in res.per_example)
    assert all(math.isfinite(row["logp_chosen"]) for row in res.per_example)
    assert res.summary["truncation"]["prompts"] >= 1  # multi-turn prompts are cut to their last 48 tokens


def test_a_causal_lm_is_not_a_reward_model(tmp_path, tokenizer):
    tiny_llama(tokenizer).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    with pytest.raises(ValueError, match="classification head"):
        load_reward_model(str(tmp_path / "lm"))
