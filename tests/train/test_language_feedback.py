"""Language feedback (LLF): the rule critic, the respond -> critique -> refine data flow, DPO on the pairs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import alignkit.train.methods.language_feedback as llf
from alignkit.engine.layouts import collate
from alignkit.engine.logprobs import sequence_logps
from alignkit.io import read_jsonl
from alignkit.models import tiny_llama
from alignkit.train.config import load_config
from alignkit.train.loop import train
from alignkit.train.methods import BatchContext, build_method
from alignkit.train.reference import FrozenCopyReference


def make_config(out, *overrides: str, params: str = ""):
    base = [f"output_dir={out}", "model.device=cpu", "progress=false", "lora.enabled=false", "batch_size=2",
            "max_steps=3", "eval_every=3", "save_every=0", "optim.learning_rate=3e-3", "optim.scheduler=constant",
            "data.synthetic.n_train=6", "data.synthetic.n_test=2", "reference=copy",
            f"objectives=[{{name: language_feedback, max_new_tokens: 12, eval_prompts: 2{params}}}]"]
    return load_config(None, base + list(overrides))


def test_rule_critic():
    arithmetic = "Compute 9 - 3. Reply with only the number."
    assert llf.rule_critique(arithmetic, "6") is None
    assert llf.rule_critique(arithmetic, "16") == "The response does not give the correct result of 9 - 3."
    assert llf.rule_critique("Tell me a story.", "A cat. A cat. A cat.") == \
        "The response repeats itself; remove the repeated phrases."
    long = "One. Two. Three. Four."
    assert llf.rule_critique("Tell me a story.", long) == "The response is too long: answer in at most 3 sentences."
    assert llf.rule_critique("Tell me a story.", long, max_sentences=4) is None
    assert llf.distinct_n(["a b a b"]) == pytest.approx(2 / 3)  # bigrams ab, ba, ab
    assert llf.distinct_n(["a"]) == 1.0


class StubGenerate:
    """Stage 1 answers "6" to "9 - 3" prompts (right) and "16" to the rest (wrong); refinements (prompts with an
    assistant turn) answer "refined <i>"."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, tokenizer, prompts, **kwargs):
        self.calls.append(prompts)
        if not any(m["role"] == "assistant" for m in prompts[0]):  # respond
            return ["6" if "9 - 3" in str(p) else "16" for p in prompts]
        return [f"refined {i}" for i in range(len(prompts))]


def test_responses_are_critiqued_refined_and_paired(tmp_path, tokenizer, monkeypatch):
    stub = StubGenerate()
    monkeypatch.setattr(llf, "generate", stub)
    method = build_method(make_config(tmp_path / "run"))
    train_items, eval_items = method.load(tokenizer, tmp_path, lambda m: None)
    assert train_items == [] and eval_items == []  # filled by wrap_model, from the starting policy
    method.wrap_model(tiny_llama(tokenizer))
    rows = read_jsonl(tmp_path / llf.DATA_FILE)
    train_rows = [r for r in rows if r["split"] == "train"]
    for row in train_rows:
        assert row["response"] in ("6", "16")
        assert row["critique"] == llf.rule_critique(row["prompt"], row["response"])
    critiqued = [r for r in train_rows if r["critique"]]
    assert 0 < len(critiqued) <= len(train_rows)
    # the refine call sees the user prompt, the original response as the assistant turn, the critique turn
    refine_prompts = stub.calls[1]
    assert len(refine_prompts) == len(critiqued)
    for messages, row in zip(refine_prompts, critiqued, strict=True):
        assert messages[-3]["content"] == row["prompt"]
        assert messages[-2] == {"role": "assistant", "content": row["response"]}
        assert messages[-1]["content"] == llf.REFINE_INSTRUCTION.format(critique=row["critique"].rstrip(". "))
    assert [r["refined"] for r in critiqued] == [f"refined {i}" for i in range(len(critiqued))]
    # pairs: chosen = refinement, rejected = original response; uncritiqued rows make none
    assert len(train_items) == len(critiqued)
    for item, row in zip(train_items, critiqued, strict=True):
        assert tokenizer.decode(item.chosen, skip_special_tokens=True).strip() == row["refined"]
        assert tokenizer.decode(item.rejected, skip_special_tokens=True).strip() == row["response"]
    # a resumed run reads the stored rows instead of generating again
    again = build_method(make_config(tmp_path / "run"))
    again_train, _ = again.load(tokenizer, tmp_path, lambda m: None)
    again.wrap_model(tiny_llama(tokenizer))
    assert len(stub.calls) == 4 and len(again_train) == len(train_items)


def test_judgment_rows_skip_respond_and_critique(tmp_path, tokenizer, monkeypatch):
    stub = StubGenerate()
    monkeypatch.setattr(llf, "generate", stub)
    rows = [{"prompt": "Say hi.", "response": "Go away.", "judgment": "The response is rude."},
            {"prompt": "Say bye.", "response": "Bye!", "judgment": None}]
    path = tmp_path / "judged.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    method = build_method(make_config(tmp_path / "run", f"data.train={path}", f"data.eval={path}"))
    train_items, _ = method.load(tokenizer, tmp_path, lambda m: None)
    method.wrap_model(tiny_llama(tokenizer))
    assert len(stub.calls) == 2  # one refinement call per split, no responses generated
    assert all(len(call) == 1 for call in stub.calls)  # the row without a judgment is not refined
    assert stub.calls[0][0][-1]["content"].startswith("The response is rude. Now, please refine")
    assert len(train_items) == 1


def test_loss_is_dpo_on_refined_over_original(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr(llf, "generate", StubGenerate())
    method = build_method(make_config(tmp_path / "run", params=", beta: 0.5"))
    train_items, _ = method.load(tokenizer, tmp_path, lambda m: None)
    policy = tiny_llama(tokenizer)
    method.wrap_model(policy)
    reference = FrozenCopyReference(tiny_llama(tokenizer, seed=3))
    ctx = BatchContext(policy, reference, tokenizer.pad_token_id, 1024, None, torch.device("cpu"), tokenizer)
    out = method.step(ctx, train_items, [0, 1], None, {}, training=True)
    losses = []
    for item in train_items[:2]:
        batch = collate([(item.prompt, item.chosen), (item.prompt, item.rejected)], tokenizer.pad_token_id)
        pc, pr = sequence_logps(policy, batch).logps
        rc, rr = sequence_logps(reference.model, batch).logps
        losses.append(-F.logsigmoid(0.5 * ((pc - rc) - (pr - rr))))
    assert out.loss.item() == pytest.approx(torch.stack(losses).mean().item(), abs=1e-5)


def test_trains_end_to_end_with_real_generation(tmp_path, tokenizer):
    result = train(make_config(tmp_path / "run"), model=tiny_llama(tokenizer), tokenizer=tokenizer,
                   log=lambda m: None)
    metrics = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in metrics if m["split"] == "eval"]
    assert len(evals) == 2 and {"llf/critique_free_rate", "llf/distinct_2", "llf/mean_words"} <= set(evals[-1])
    assert all(m["loss"] == m["loss"] for m in metrics)  # finite
    assert read_jsonl(result.output_dir / llf.DATA_FILE)
