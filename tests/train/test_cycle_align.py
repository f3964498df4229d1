"""CycleAlign on tiny models: black-box and white-box rankings of the same samples, the hinge on the black box's
ranking (non-zero where the two disagree), the agreed rankings given to an LM judge as in-context demonstrations
(bounded, checkpointable), and a run through the loop."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import alignkit.train.methods.cycle_align as cycle
from alignkit.engine.generation import Sampled
from alignkit.engine.layouts import collate
from alignkit.engine.logprobs import sequence_logps
from alignkit.io import read_jsonl
from alignkit.models import tiny_llama
from alignkit.objectives.cycle_align import ranking_loss
from alignkit.rewards import JudgePreference, LMJudge
from alignkit.train.config import load_config
from alignkit.train.loop import train
from alignkit.train.methods import BatchContext, build_method

TEXTS = ["Yes.", "No, I think not really.", "Maybe so.", "Certainly not, never."]


class ShortestWins:
    """A reward source preferring shorter responses."""

    def rewards(self, prompts, responses):
        return torch.tensor([-float(len(r)) for r in responses])


class PairwiseOnly:
    def preferences(self, prompts, first, second):  # P(first ≻ second) = 1 when first is shorter
        return torch.tensor([float(len(a) < len(b)) for a, b in zip(first, second, strict=True)])


class RankedBy:
    """A reward source ranking each prompt's responses in a given order (best first)."""

    def __init__(self, order_of):  # prompt text -> list of response texts, best first
        self.order_of = order_of

    def rewards(self, prompts, responses):
        return torch.tensor([-float(self.order_of[p].index(r)) for p, r in zip(prompts, responses, strict=True)])


class RecordingJudge(LMJudge):
    """An LM judge that records every prompt it is given and answers by a fixed order of the responses."""

    def __init__(self, model, tokenizer, order_of):
        super().__init__(model, tokenizer)
        self.order_of, self.seen = order_of, []

    def __call__(self, prompt, first, second):
        self.seen.append(self.build_prompt(prompt, first, second))
        order = self.order_of[prompt]
        return float(order.index(first) < order.index(second))


def make_config(out, *overrides: str):
    base = [f"output_dir={out}", "model.device=cpu", "progress=false", "lora.enabled=false", "batch_size=2",
            "max_steps=2", "eval_every=2", "save_every=0", "data.synthetic.n_train=8", "data.synthetic.n_test=2",
            "objectives=[{name: cycle_align, n_candidates: 3, max_new_tokens: 6}]"]
    return load_config(None, base + list(overrides))


@pytest.fixture
def setup(tmp_path, tokenizer, monkeypatch):
    """(build(objective overrides) -> (method, items, ctx), white_order(item) -> TEXTS best first by the model)."""
    ids = [tokenizer.encode(t, add_special_tokens=False) + [tokenizer.eos_token_id] for t in TEXTS]
    monkeypatch.setattr(cycle, "sample_ids", lambda model, prompts, params, n, **kw: Sampled(
        prompts=list(prompts), responses=[ids[:n] for _ in prompts]))
    model = tiny_llama(tokenizer)
    ctx = BatchContext(model, None, tokenizer.pad_token_id, 1024, None, torch.device("cpu"), tokenizer)

    def build(objective: str, log=lambda m: None):
        method = build_method(make_config(tmp_path / "run", f"objectives=[{{name: cycle_align, {objective}}}]"))
        items, _ = method.load(tokenizer, tmp_path, log)
        return method, items, ctx

    @torch.no_grad()
    def scored(item):
        return sequence_logps(model, collate([(item.prompt, r) for r in ids], tokenizer.pad_token_id))

    def white_order(item):
        out = scored(item)
        normalised = (out.logps / out.tokens).tolist()
        return [TEXTS[i] for i in sorted(range(4), key=lambda i: (-normalised[i], i))]

    return build, white_order, scored


def test_black_box_scores_from_rewards_or_pairwise_preferences():
    texts = ["ccc", "a", "bb"]
    assert cycle.black_box_scores(ShortestWins(), "x", texts) == [-3.0, -1.0, -2.0]
    assert cycle.black_box_scores(PairwiseOnly(), "x", texts) == [0.0, 2.0, 1.0]  # summed wins over the others


def test_loss_is_the_hinge_on_the_black_box_ranking(setup, monkeypatch):
    build, white_order, scored = setup
    monkeypatch.setattr(cycle, "build_source", lambda spec, device=None: ShortestWins())
    method, items, ctx = build("n_candidates: 4, sft_weight: 0.5")
    out = method.step(ctx, items, [0], None, {}, training=True)
    black = sorted(range(4), key=lambda i: len(TEXTS[i]))  # shortest first, all lengths differ
    logps = scored(items[0])
    expected = ranking_loss(logps.logps[black], logps.tokens[black], sft_weight=0.5)
    assert out.loss.item() == pytest.approx(expected.loss.item(), abs=1e-5)
    assert out.metrics["rank_loss"] == pytest.approx(float(expected.metrics["rank_loss"]), abs=1e-5)


def test_rank_loss_is_positive_where_black_and_white_box_disagree(setup, monkeypatch):
    build, white_order, scored = setup
    method, items, ctx = build("n_candidates: 4, sft_weight: 0.0")
    white = white_order(items[0])
    swapped = [white[1], white[0], *white[2:]]  # the black box disagrees on the white box's top pair only
    monkeypatch.setattr(cycle, "build_source", lambda spec, device=None: RankedBy({items[0].text: swapped}))
    out = method.step(ctx, items, [0], None, {}, training=True)
    logps = scored(items[0])
    s = {TEXTS[i]: float(logps.logps[i] / logps.tokens[i]) for i in range(4)}
    assert out.metrics["rank_loss"] == pytest.approx(s[white[0]] - s[white[1]], abs=1e-5)
    assert out.metrics["rank_loss"] > 0
    assert out.metrics["cycle/agreement_length"] == 3.0 and out.metrics["cycle/kendall_tau"] == pytest.approx(2 / 3)
    (demo,) = read_jsonl(method.run_dir / cycle.DEMONSTRATIONS_FILE)
    assert len(demo["ranking"]) == 3 and demo["ranking"][-2:] == white[2:]
    literal, items, ctx = build("n_candidates: 4, sft_weight: 0.0, label: agreement")
    assert literal.step(ctx, items, [0], None, {}, training=True).metrics["rank_loss"] == 0.0


def test_lm_judge_sees_the_agreed_rankings_of_earlier_steps(setup, monkeypatch, tokenizer):
    build, white_order, _ = setup
    static = "{prompt: 'Static question?', ranking: [Static good., Static bad.]}"
    method, items, ctx = build(f"n_candidates: 4, n_demonstrations: 1, demonstrations: [{static}]")
    orders = {item.text: white_order(item) for item in items[:3]}  # the judge agrees with the white box
    judge = RecordingJudge(tiny_llama(tokenizer), tokenizer, orders)
    monkeypatch.setattr(cycle, "build_source", lambda spec, device=None: JudgePreference(judge))
    state = {}

    def prompts_of_step(index, run=method, run_state=state):
        judge.seen = []
        run.step(ctx, items, [index], None, run_state, training=True)
        assert len(judge.seen) == 12  # 6 pairs, each asked in both orders
        return judge.seen

    first = prompts_of_step(0)  # nothing agreed yet: the static demonstration and the question itself
    assert all("[Question]\nStatic question?" in p and p.count("[Question]") == 2 for p in first)
    second = prompts_of_step(1)
    best, worst = orders[items[0].text][0], orders[items[0].text][-1]
    shown = f"[Question]\n{items[0].text}\n\n[Response A]\n{worst}\n\n[Response B]\n{best}\n\nAnswer: B"
    assert all(cycle.DEMONSTRATIONS_HEADER in p and shown in p and p.count("[Question]") == 3 for p in second)
    # the pool keeps the n_demonstrations (1) most recent agreements: now the second prompt's
    assert state["cycle_align"]["demonstrations"] == [{"prompt": items[1].text, "ranking": orders[items[1].text]}]

    # a resumed run (fresh method, the state through JSON as in a checkpoint) shows the judge the same prompt
    saved = json.loads(json.dumps(state))
    third = prompts_of_step(2, run_state=copy.deepcopy(state))
    assert all(f"[Question]\n{items[1].text}" in p and items[0].text not in p for p in third)  # pool of one
    resumed, _, _ = build(f"n_candidates: 4, n_demonstrations: 1, demonstrations: [{static}]")
    judge.system_prompt = None  # a new process builds its judge afresh from the config
    assert prompts_of_step(2, run=resumed, run_state=saved) == third


def test_non_judge_ranker_is_said_once(setup, monkeypatch):
    build, _, _ = setup
    monkeypatch.setattr(cycle, "build_source", lambda spec, device=None: ShortestWins())
    lines = []
    method, items, ctx = build("n_candidates: 2", log=lines.append)
    state = {}
    for index in (0, 1):
        out = method.step(ctx, items, [index], None, state, training=True)
    assert sum("not an LM judge" in line for line in lines) == 1
    assert out.metrics["cycle/demonstrations"] == 0.0


def test_runs_through_the_loop_with_the_verifier_as_black_box(tmp_path, tokenizer):
    result = train(make_config(tmp_path / "run"), model=tiny_llama(tokenizer), tokenizer=tokenizer,
                   log=lambda m: None)
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert len(train_rows) == 2
    for row in train_rows:
        assert {"cycle/agreement_rate", "cycle/kendall_tau", "rank_loss", "sft_loss", "ordered_pairs"} <= set(row)
        assert -1.0 <= row["cycle/kendall_tau"] <= 1.0
