"""The unpaired objectives inside the preference method: KTO's mismatched KL partners and BCO's underlying
distribution matching (UDM), on tiny random Llamas."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from alignkit.models import tiny_llama
from alignkit.train.config import load_config
from alignkit.train.loop import train
from alignkit.train.methods import build_method
from alignkit.train.methods.preference import kl_partners


@dataclass
class Example:
    prompt: list[int]
    response: list[int]
    label: bool


def paired_items(group_sizes: list[int]) -> list[Example]:
    """Paired data as the loop feeds unpaired objectives: [chosen_k, rejected_k, ...], prompts shared in
    groups (ranked groups give more than two examples per prompt); every response is unique."""
    items = []
    for k, size in enumerate(group_sizes):
        items += [Example([5, 100 + k], [1000 + len(items)], label=j == 0) for j in range(size)]
    return items


def kto_method(*overrides: str):
    return build_method(load_config(None, ["objectives=[{name: kto}]", *overrides]))


@pytest.mark.parametrize("group_sizes", [[2] * 10, [2, 3, 2, 6, 2, 1, 2], [4, 1]])
def test_kl_partners_never_share_the_example_prompt(group_sizes: list[int]) -> None:
    items = paired_items(group_sizes)
    method = kto_method()
    rows = method.reference_rows(items)  # what the precomputed reference scores: (completion, KL row) per example
    owner = {tuple(it.response): i for i, it in enumerate(items)}
    for i, item in enumerate(items):
        assert rows[2 * i] == (item.prompt, item.response)
        kl_prompt, kl_response = rows[2 * i + 1]
        assert kl_prompt == item.prompt
        assert items[owner[tuple(kl_response)]].prompt != item.prompt, (i, owner[tuple(kl_response)])
    # the training step's KL rows are the very rows the precomputed reference scored
    indices = [3, 0, len(items) - 1]
    assert method.kl_rows(items, indices) == [rows[2 * i + 1] for i in indices]


def test_kl_partners_depend_only_on_data_and_seed() -> None:
    items = paired_items([2] * 12)
    partners = kl_partners(items, seed=3)
    assert kl_partners(items, seed=3) == partners  # a resumed run (or another rank) gets the same partners
    assert kl_partners([Example(list(it.prompt), list(it.response), it.label) for it in items], 3) == partners
    assert kl_partners(items, seed=4) != partners
    assert all(items[j].prompt != items[i].prompt for i, j in enumerate(partners))
    assert kto_method("seed=3").kl_rows(items, [0])[0][1] == items[partners[0]].response


def test_single_prompt_split_falls_back_to_its_other_responses() -> None:
    items = paired_items([3])
    assert kl_partners(items, seed=0) == [1, 2, 0]


# ------------------------------------------------------------------------------------------- BCO UDM


def write_binary_data(path, n: int = 48) -> None:
    """Desirable and undesirable examples whose prompts come from different distributions (UDM's use case)."""
    with path.open("w") as f:
        for i in range(n):
            desirable = i % 2 == 0
            prompt = f"Please write a short poem about the sea, number {i}." if desirable else \
                f"What is {i} plus {i + 3}? Answer with digits only."
            f.write(json.dumps({"prompt": prompt, "completion": f"answer {i}", "label": desirable}) + "\n")


def bco_config(tmp_path, *overrides: str):
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "binary.jsonl"
    write_binary_data(data)
    base = [f"output_dir={tmp_path / 'run'}", "model.device=cpu", "progress=false", "lora.enabled=false",
            "batch_size=8", "max_steps=4", "eval_every=0", "save_every=0", "optim.learning_rate=1e-3",
            f"data.train={data}", "data.kind=binary", "data.eval_fraction=0.25"]
    return load_config(None, base + list(overrides))


def read_metrics(run_dir, split: str) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if m["split"] == split]


@pytest.mark.parametrize("reference", ["copy", "precomputed"])
def test_bco_udm_fits_the_prompt_classifier_and_weights_undesirable_examples(tmp_path, tokenizer, reference):
    config = bco_config(tmp_path, "objectives=[{name: bco, udm: true, min_density_ratio: 0.2}]",
                        f"reference={reference}", "eval_every=4")
    result = train(config, model=tiny_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None)
    last = read_metrics(result.output_dir, "train")[-1]
    assert last["udm/classifier_accuracy"] == 1.0  # the two prompt distributions are easy to tell apart
    # undesirable prompts look nothing like desirable ones: p(desirable) small, weight clamped at the minimum
    assert last["udm_weight/mean"] == pytest.approx(0.2, abs=0.05)
    final_eval = read_metrics(result.output_dir, "eval")[-1]
    assert {"udm/classifier_accuracy", "udm_weight/mean"} <= final_eval.keys()


def test_bco_udm_weights_match_the_classifier_and_survive_resume(tmp_path, tokenizer):
    common = ["objectives=[{name: bco, udm: true}]", "max_steps=4", "save_every=2"]
    straight = train(bco_config(tmp_path / "a", *common), model=tiny_llama(tokenizer), tokenizer=tokenizer,
                     log=lambda m: None)
    train(bco_config(tmp_path / "b", *common), model=tiny_llama(tokenizer), tokenizer=tokenizer,
          log=lambda m: None, stop_after_steps=2)
    torch.manual_seed(1234)
    resumed = train(bco_config(tmp_path / "b", *common, "resume=true"), model=tiny_llama(tokenizer),
                    tokenizer=tokenizer, log=lambda m: None)  # refits on the starting weights, not the trained ones
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)
    straight_lines = read_metrics(straight.output_dir, "train")
    resumed_lines = read_metrics(resumed.output_dir, "train")
    assert [m["step"] for m in resumed_lines] == [1, 2, 3, 4]
    for key in ("udm_weight/mean", "udm/classifier_accuracy", "delta"):
        assert [m[key] for m in resumed_lines] == [m[key] for m in straight_lines]


def test_bco_udm_is_checked_when_the_config_loads(tmp_path) -> None:
    with pytest.raises(ValueError, match="udm"):
        load_config(None, ["objectives=[{name: bco, udm: sometimes}]"])
    with pytest.raises(ValueError, match="udm"):
        load_config(None, ["objectives=[{name: kto, udm: true}]"])
