"""PAL (Chen et al. 2024, arXiv:2406.08469): the ideal-point mixture model, its losses, few-shot adaptation with
the shared parts frozen, saving/loading, the reward spec, the user-tagged data and the heterogeneous generator."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.data.errors import DataError
from alignkit.data.synthetic import write_jsonl
from alignkit.data.synthetic.heterogeneous import FORMAL_OPENERS, GROUPS, make_heterogeneous, make_users, prefers
from alignkit.decoding.rewards import build_reward, source_spec
from alignkit.rewards import build_source
from alignkit.rewards.pal import PAL, PALReward, adapt_users, norm_bound, pair_loss, save_pal, train_pal, user_weights
from alignkit.rewards.pal_data import PairTensors, load_user_pairs
from alignkit.rewards.pal_eval import few_shot_report, per_user_accuracy, seen_user_report, train_bt

D = 8
DIRECTION = torch.nn.functional.normalize(torch.arange(1.0, D + 1), dim=0)


def opposite_groups(users: int, pairs: int, seed: int, first_user: int = 0) -> PairTensors:
    """Random unit items; even users prefer the item further along DIRECTION, odd users the one less far."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.nn.functional.normalize(torch.randn(users * pairs, D, generator=generator), dim=1)
    b = torch.nn.functional.normalize(torch.randn(users * pairs, D, generator=generator), dim=1)
    user_index = torch.arange(users).repeat_interleave(pairs)
    a_wins = (a @ DIRECTION > b @ DIRECTION) == (user_index % 2 == 0)
    chosen = torch.where(a_wins[:, None], a, b)
    rejected = torch.where(a_wins[:, None], b, a)
    return PairTensors(chosen, rejected, user_index, [f"u{first_user + i}" for i in range(users)])


@pytest.fixture(scope="module")
def trained():
    data = opposite_groups(12, 60, seed=0)
    model, history = train_pal(data, prototypes=2, dim=16, hidden=32, epochs=40, seed=0)
    bt = train_bt(data, dim=16, hidden=32, epochs=40, seed=0)
    return data, model, bt, history


def test_pal_fits_opposite_groups_a_single_bradley_terry_model_cannot(trained):
    data, model, bt, history = trained
    assert history[-1] < history[0]
    held_out = opposite_groups(12, 40, seed=1)
    report = seen_user_report(model, bt, held_out)
    assert report["pal"]["mean"] > 0.9
    assert abs(report["bradley_terry"]["mean"] - 0.5) < 0.1  # the two groups cancel out for one reward
    # The two groups end on different prototypes: the mixture weights separate even from odd users.
    weights = model.mixture(model.user_logits)[:, 0]
    assert weights[0::2].mean() - weights[1::2].mean() > 0.5 or weights[1::2].mean() - weights[0::2].mean() > 0.5


def test_adaptation_recovers_a_new_users_group_with_shared_parts_frozen(trained):
    _, model, bt, _ = trained
    new = opposite_groups(6, 40, seed=2, first_user=100)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit_index = torch.cat([new.of_user(u)[:8] for u in new.user_ids])
    logits = adapt_users(model, new.subset(fit_index), seed=0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # only W_u moved
    test = new.subset(torch.cat([new.of_user(u)[8:] for u in new.user_ids]))
    with torch.no_grad():
        accuracy = per_user_accuracy(model.margins(test, logits) > 0, test.users)
    assert accuracy.mean() > 0.9
    # A new even user's mixture leans the way the training even users' does.
    trained_even = model.mixture(model.user_logits)[0::2, 0].mean()
    new_even = model.mixture(logits)[0::2, 0].mean()
    assert (trained_even - 0.5) * (new_even - 0.5) > 0
    report = few_shot_report(model, bt, new, shots=(1, 8), repeats=2, test_pairs=16)
    assert report["pal"]["8"]["mean"] > report["pal_n0"]["mean"] + 0.2
    assert report["pal"]["8"]["mean"] > report["bradley_terry"]["mean"] + 0.2


def test_margins_are_distance_differences_to_the_mixed_ideal_point():
    model = PAL(input_dim=3, dim=2, hidden=4, prototypes=2, users=1, temperature=2.0)
    with torch.no_grad():
        model.user_logits.copy_(torch.tensor([[math.log(3.0) * 2, 0.0]]))  # softmax([log 3, 0]) = (3/4, 1/4)
    assert torch.allclose(model.mixture(model.user_logits), torch.tensor([[0.75, 0.25]]))
    chosen, rejected = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    ideal = model.projector(0.75 * model.prototypes[0] + 0.25 * model.prototypes[1])
    expected = (model.projector(rejected) - ideal).norm() - (model.projector(chosen) - ideal).norm()
    data = PairTensors(chosen, rejected, torch.tensor([0]), ["u"])
    assert torch.allclose(model.margins(data), expected[None].detach(), atol=1e-6)


def test_losses_and_weights_against_hand_worked_values():
    m = torch.tensor([2.0, 0.5, -1.0])
    assert torch.allclose(pair_loss(m, "hinge", 1.0), torch.tensor([0.0, 0.5, 2.0]))
    assert torch.allclose(pair_loss(m, "logistic"), torch.log1p(torch.exp(-m)))
    assert torch.allclose(user_weights(torch.tensor([0, 0, 0, 1]), 2), torch.tensor([2 / 3, 2 / 3, 2 / 3, 2.0]))
    prototypes = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # norms 5 and 1
    assert float(norm_bound(prototypes, bound=2.0)) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="unknown PAL loss"):
        pair_loss(m, "squared")


class TableEmbedder:
    def __init__(self, table):
        self.table = table

    def __call__(self, prompts, responses):
        return torch.stack([self.table[r] for r in responses])


def test_saved_model_is_a_reward_source_per_user_and_for_the_population(trained, tmp_path):
    data, model, _, _ = trained
    save_pal(tmp_path / "pal", model, {"encoder": "all-minilm-l6-v2", "users": data.user_ids, "train": {}})
    assert sorted(p.name for p in (tmp_path / "pal").iterdir()) == ["config.json", "pal.safetensors"]
    embedder = TableEmbedder({"up": DIRECTION, "down": -DIRECTION})
    even, odd = (PALReward(tmp_path / "pal", user=u, embedder=embedder) for u in ("u0", "u1"))
    r_even, r_odd = even.rewards(["q", "q"], ["up", "down"]), odd.rewards(["q", "q"], ["up", "down"])
    assert r_even[0] > r_even[1] and r_odd[1] > r_odd[0]  # opposite users, opposite rankings
    assert torch.allclose(even.preferences(["q"], ["up"], ["down"]), torch.sigmoid(r_even[0] - r_even[1]))
    with torch.no_grad():
        ideal = model.ideal_points(model.mixture(model.user_logits[:1]))[0]
        assert torch.allclose(r_even[0], -(model.projector(DIRECTION) - ideal).norm(), atol=1e-5)
    population = PALReward(tmp_path / "pal", embedder=embedder)
    assert population.rewards(["q"], ["up"]).shape == (1,)
    with pytest.raises(ValueError, match="no user 'nobody'"):
        PALReward(tmp_path / "pal", user="nobody", embedder=embedder)


def test_reward_specs_reach_pal_and_its_user(trained, tmp_path):
    data, model, _, _ = trained
    save_pal(tmp_path / "pal", model, {"encoder": "all-minilm-l6-v2", "users": data.user_ids, "train": {}})
    assert source_spec(f"pal:{tmp_path}/pal@u1") == {"type": "pal", "model": f"{tmp_path}/pal", "user": "u1"}
    assert source_spec("pal:runs/pal") == {"type": "pal", "model": "runs/pal"}
    source = build_source({"type": "pal", "model": str(tmp_path / "pal"), "user": "u1"})
    assert isinstance(source, PALReward) and source.user == "u1"
    source.embedder = TableEmbedder({"up": DIRECTION, "down": -DIRECTION})
    reward = build_reward([f"pal:{tmp_path}/pal@u1"])
    reward.sources[0] = (1.0, source)
    up, down = reward.score(["q", "q"], ["up", "down"])
    assert down > up


def test_rows_without_a_user_id_fail_with_file_line_and_column(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "user_id": "u1"}, {"prompt": "p", "chosen": "a",
                                                                               "rejected": "b"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as error:
        load_user_pairs(path)
    assert str(error.value).startswith(f"{path}, line 2, field 'user_id': no user id")
    result = CliRunner().invoke(app, ["reward", "pal-train", str(path), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "line 2" in result.output and "no user id" in result.output and "Traceback" not in result.output
    other = tmp_path / "users.jsonl"
    other.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "user": 7}) + "\n")
    assert load_user_pairs(other)[0][0] == "7"  # the 'user' column when there is no 'user_id'
    with pytest.raises(DataError, match="field 'rater'"):
        load_user_pairs(other, user_key="rater")


def test_generator_labels_follow_each_users_group():
    pairs = make_users(8, 30, seed=3)
    assert [p.metadata["group"] for p in pairs[::30]] == list(GROUPS) * 2
    for pair in pairs:
        group, axis = pair.metadata["group"], pair.metadata["axis"]
        if axis == "length":
            assert (len(pair.chosen.split()) > len(pair.rejected.split())) == prefers(group, "length")
        else:
            assert pair.chosen.startswith(FORMAL_OPENERS) == prefers(group, "tone")
            assert pair.rejected.startswith(FORMAL_OPENERS) != prefers(group, "tone")
    assert make_users(8, 30, seed=3) == pairs and make_users(8, 30, seed=4) != pairs
    splits = make_heterogeneous(users=4, new_users=2, train_pairs=3, test_pairs=2, new_user_pairs=5)
    assert [len(splits[k]) for k in ("train", "test", "new_users")] == [12, 8, 10]
    assert {p.metadata["user_id"] for p in splits["new_users"]} == {"new000", "new001"}


def test_cli_train_adapt_eval_with_the_builtin_encoder(tmp_path):
    pytest.importorskip("safetensors")
    splits = make_heterogeneous(users=8, new_users=4, train_pairs=12, test_pairs=4, new_user_pairs=10)
    for name, pairs in splits.items():
        write_jsonl(pairs, tmp_path / f"{name}.jsonl")
    runner = CliRunner()
    out = tmp_path / "pal"
    result = runner.invoke(app, ["reward", "pal-train", str(tmp_path / "train.jsonl"), "--out", str(out),
                                 "--epochs", "5", "--no-progress", "--report", str(tmp_path / "train.json")])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"config.json", "pal.safetensors", "bt.safetensors"}
    again = runner.invoke(app, ["reward", "pal-train", str(tmp_path / "train.jsonl"), "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    result = runner.invoke(app, ["reward", "pal-eval", str(out), "--data", str(tmp_path / "new_users.jsonl"),
                                 "--shots", "1,2", "--repeats", "1", "--test-pairs", "6", "--report",
                                 str(tmp_path / "eval.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval.json").read_text())
    assert set(report["new_users"]["pal"]) == {"1", "2"} and report["new_users"]["pal"]["1"]["users"] == 4
    result = runner.invoke(app, ["reward", "pal-adapt", str(out), "--data", str(tmp_path / "new_users.jsonl"),
                                 "--shots", "4"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["users"][-4:] == ["new000", "new001", "new002", "new003"] and len(config["users"]) == 12
    reward = build_reward([f"pal:{out}@new001"])
    assert len(reward.score(["How do I start running?"], ["Hey! just run lol."])) == 1
