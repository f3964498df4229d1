"""CUT: judgment data, aligned two-context token log-probs, the unlikelihood effect, training and resume."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from alignkit.data import DataError, Judgment, load_records
from alignkit.data.synthetic import judgment_for, make_judgments, make_synthetic, verify
from alignkit.data.tokenize import PromptEncoder
from alignkit.engine.layouts import collate
from alignkit.engine.logprobs import sequence_logps
from alignkit.models import tiny_llama
from alignkit.objectives.cut import cut_flags, cut_loss
from alignkit.train.config import load_config
from alignkit.train.loop import train
from alignkit.train.methods import BatchContext, build_method
from alignkit.train.methods.cut import JUDGMENT_TEMPLATE, CutMethod, encode_judgment, is_negative, with_judgment


def make_config(tmp_path, *overrides: str):
    base = [
        f"output_dir={tmp_path / 'run'}", "model.device=cpu", "progress=false", "lora.enabled=false",
        "batch_size=8", "max_steps=4", "eval_every=0", "save_every=0", "optim.learning_rate=3e-3",
        "optim.scheduler=constant", "data.synthetic.n_train=48", "data.synthetic.n_test=8",
        "data.max_eval_examples=16", "objectives=[{name: cut}]",
    ]
    return load_config(None, base + list(overrides))


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _ctx(model, tokenizer):
    return BatchContext(model, None, tokenizer.pad_token_id, 1024, None, torch.device("cpu"), tokenizer)


def _encode(tokenizer, records):
    encoder = PromptEncoder(tokenizer)
    return [encode_judgment(encoder, r, is_negative(r, 7.0), JUDGMENT_TEMPLATE, 256, 128) for r in records]


def test_synthetic_judgments_name_the_violated_instruction():
    pairs, _ = make_synthetic(40, 0, seed=1)
    records = make_judgments(pairs)
    assert len(records) == 80
    for pair, (good, bad) in zip(pairs, zip(records[::2], records[1::2], strict=True), strict=True):
        assert good.response == pair.chosen and good.judgment is None
        assert bad.response == pair.rejected and bad.judgment
        assert not verify(pair.prompt, pair.rejected)
    assert judgment_for("Reply with exactly one word: what is the capital of Japan?", "It is Tokyo.") == \
        'The response does not follow the instruction "Reply with exactly one word": it has 3 words.'
    assert judgment_for("What is 2 + 3? Answer with just the number.", "5") is None


def test_judgment_records_positive_and_negative(tmp_path):
    rows = [{"prompt": "Hi", "response": "Hello", "judgment": None},
            {"prompt": "Hi", "response": "Go away", "judgment": "Rude."},
            {"prompt": "Hi", "response": "Hey", "judgment": "Fine, a little terse.", "score": 8}]
    path = tmp_path / "j.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = load_records(path, kind="judgment", log=None).records
    assert [is_negative(r, 7.0) for r in records] == [False, True, False]
    assert [is_negative(r, None) for r in records] == [False, True, True]
    path.write_text(json.dumps({"prompt": "Hi", "response": "Yo", "judgment": 3}) + "\n")
    with pytest.raises(DataError, match="judgment must be a string"):
        load_records(path, kind="judgment", log=None)
    messages = with_judgment([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}], "Bad.")
    assert messages[0].content == "S" and messages[1].content.startswith("Q\n\n") and "Judgment: Bad." in \
        messages[1].content


def test_both_contexts_score_the_same_response_tokens(tokenizer):
    """The realigned per-token log-probs equal each row scored on its own, position by position."""
    records = [Judgment(prompt="What is 2 + 3? Answer with just the number.", response="It is 6.",
                        judgment="Wrong result."),
               Judgment(prompt="Say hi.", response="Hi!")]
    items = _encode(tokenizer, records)
    assert items[0].negative and not items[1].negative
    model = tiny_llama(tokenizer)
    method = CutMethod(load_config(None, ["objectives=[{name: cut}]"]))
    lp_with, lp_without, mask, negative, _ = method.token_logps(_ctx(model, tokenizer), items, [0, 1])
    assert negative.tolist() == [True, False] and mask.sum(-1).tolist() == [len(i.response) for i in items]
    for prompt, row, lp in [(items[0].judged_prompt, 0, lp_with), (items[0].prompt, 0, lp_without),
                            (items[1].prompt, 1, lp_without)]:
        alone = sequence_logps(model, collate([(prompt, items[row].response)], tokenizer.pad_token_id),
                               return_token_logps=True).token_logps[0, len(prompt) - 1:]
        torch.testing.assert_close(lp[row, :len(items[row].response)], alone, atol=1e-5, rtol=0)
    assert (lp_with[1] == 0).all()  # a positive example's judged row is never computed
    out = method.step(_ctx(model, tokenizer), items, [0, 1], None, {}, training=True)
    expected = cut_loss(lp_with, lp_without, mask, negative, 1.1, 0.1).loss.mean()
    torch.testing.assert_close(out.loss, expected)


def test_unlikelihood_lowers_the_flagged_tokens(tokenizer):
    """Against the same run without the unlikelihood term, CUT makes flagged tokens of negatives less likely.
    Unlikelihood only bites once p is not tiny, so a random model is first fitted to the examples."""
    torch.manual_seed(0)
    items = _encode(tokenizer, make_judgments(make_synthetic(4, 0, seed=0)[0]))
    model = tiny_llama(tokenizer)
    rows = [(i.prompt, i.response) for i in items] + [(i.judged_prompt, i.response) for i in items if i.negative]
    batch = collate(rows, tokenizer.pad_token_id)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        out = sequence_logps(model, batch)
        loss = -out.logps.sum() / out.tokens.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    indices = list(range(len(items)))
    probs = {}
    for alpha in (0.0, 1.0):
        config = load_config(None, [f"objectives=[{{name: cut, threshold: 1.0, unlikelihood_weight: {alpha}}}]"])
        method, policy = build_method(config), copy.deepcopy(model)
        with torch.no_grad():
            lp_with, lp_without, mask, negative, _ = method.token_logps(_ctx(policy, tokenizer), items, indices)
        flags = cut_flags(lp_with, lp_without, mask & negative[:, None], 1.0)
        assert flags.sum() > 5
        optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
        for _ in range(5):
            loss = method.step(_ctx(policy, tokenizer), items, indices, None, {}, training=True).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            _, after, _, _, _ = method.token_logps(_ctx(policy, tokenizer), items, indices)
        probs[alpha] = after[flags].exp().mean().item()
    assert probs[1.0] < probs[0.0] - 0.01


def test_cut_trains_end_to_end_and_resumes_exactly(tmp_path, tokenizer):
    common = ["save_every=2", "eval_every=4", "objectives=[{name: cut, threshold: 1.0, unlikelihood_weight: 1.0}]"]
    straight = train(make_config(tmp_path / "a", *common), model=tiny_llama(tokenizer), tokenizer=tokenizer,
                     log=lambda m: None)
    metrics = read_metrics(straight.output_dir)
    evals = [m for m in metrics if m["split"] == "eval"]
    assert evals[-1]["loss"] < evals[0]["loss"] - 0.5
    assert evals[0]["negative_fraction"] == pytest.approx(0.5)
    assert 0.2 < evals[0]["flagged_fraction"] < 0.8  # λ = 1 flags about half the tokens of a random model
    for key in ["mle_loss", "ul_loss", "flagged_fraction", "mean_ratio", "logps/positive", "logps/negative"]:
        assert key in evals[-1]
    assert {"mle_loss", "ul_loss", "flagged_fraction", "mean_ratio", "loss"} <= set(metrics[-2])
    train(make_config(tmp_path / "b", *common), model=tiny_llama(tokenizer), tokenizer=tokenizer,
          log=lambda m: None, stop_after_steps=2)
    resumed = train(make_config(tmp_path / "b", *common, "resume=true"), model=tiny_llama(tokenizer),
                    tokenizer=tokenizer, log=lambda m: None)
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)


def test_unknown_cut_parameter_is_an_error():
    with pytest.raises(ValueError, match="unknown parameter 'beta'"):
        build_method(load_config(None, ["objectives=[{name: cut, beta: 0.1}]"]))
