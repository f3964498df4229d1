"""URIAL: the prompt layout, custom examples, stop string and output cleaning."""

from __future__ import annotations

import json

import pytest

from alignkit.decoding import decode
from alignkit.decoding.urial import EXAMPLES, HEADER, build_prefix, clean, load_examples, urial_prompt
from alignkit.engine.generation import SamplingParams, decode_response, sample_ids


def test_prompt_layout():
    prefix = build_prefix()
    assert prefix.startswith(HEADER)
    assert prefix.count("# Query:\n```\n") == len(EXAMPLES) == 3
    assert prefix.count("# Answer:\n```\n") == 3
    text = urial_prompt("How tall is Everest?", prefix)
    assert text.startswith(prefix)
    assert text.endswith("# Query:\n```\nHow tall is Everest?\n```\n\n# Answer:\n```\n")
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": "Name a fruit."}]
    turns = urial_prompt(conversation, "")
    assert turns.index("Hi") < turns.index("Hello!") < turns.index("Name a fruit.")
    assert turns.endswith("Name a fruit.\n```\n\n# Answer:\n```\n")
    assert "be brief" in build_prefix(system="be brief").split("# Query:\n")[0]


def test_clean_cuts_at_the_next_turn_and_fences():
    assert clean("Sure! Here it is.\n```\n\n# Query:\n```\nmore") == "Sure! Here it is."
    assert clean("  plain answer  ") == "plain answer"
    assert clean("answer``` trailing") == "answer"


def test_custom_examples_and_k(tmp_path, tiny_model, tokenizer):
    path = tmp_path / "ex.jsonl"
    path.write_text(json.dumps({"header": "# Be nice"}) + "\n"
                    + "".join(json.dumps({"query": f"q{i}", "answer": f"a{i}"}) + "\n" for i in range(3)))
    header, examples = load_examples(path)
    assert header == "# Be nice" and examples == [("q0", "a0"), ("q1", "a1"), ("q2", "a2")]
    rows = decode(tiny_model, tokenizer, ["Say hi."], "urial", urial_examples=path, urial_k=1, max_new_tokens=5,
                  log=lambda m: None)
    expected_prompt = urial_prompt("Say hi.", build_prefix("# Be nice", examples[:1]))
    ids = tokenizer(expected_prompt, add_special_tokens=True).input_ids
    params = SamplingParams(max_new_tokens=5, stop=("# Query",))
    out = sample_ids(tiny_model, [ids], params, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id, tokenizer=tokenizer)
    assert rows[0]["text"] == clean(decode_response(tokenizer, out.responses[0][0], ("# Query",)))
    assert rows[0]["settings"]["urial_k"] == 1
    (tmp_path / "bad.jsonl").write_text(json.dumps({"q": 1}) + "\n")
    with pytest.raises(ValueError, match="'query' and 'answer'"):
        load_examples(tmp_path / "bad.jsonl")
