import copy

import pytest
from tokenizers.processors import TemplateProcessing

from alignkit.data.tokenize import PromptEncoder, encode_pair, truncate


def test_boundary_is_exact_and_eos_closes_response(tokenizer):
    encoder = PromptEncoder(tokenizer)
    pair = encode_pair(encoder, "What is 2+2?", "4", "five", None, 512, 256)
    messages = [{"role": "user", "content": "What is 2+2?"}]
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": "4"}], tokenize=False)
    assert tokenizer.decode(pair.prompt + pair.chosen) == full.rstrip("\n")
    assert tokenizer.decode(pair.prompt).endswith("<|im_start|>assistant\n")
    assert pair.chosen[-1] == tokenizer.eos_token_id and pair.rejected[-1] == tokenizer.eos_token_id
    assert pair.chosen.count(tokenizer.eos_token_id) == 1
    assert tokenizer.decode(pair.chosen[:-1]) == "4"


def test_conversational_prompt_and_system(tokenizer):
    encoder = PromptEncoder(tokenizer)
    prompt = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
              {"role": "user", "content": "Bye"}]
    ids = encoder.encode_prompt(prompt, system="Be terse.")
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nBe terse.<|im_end|>")
    assert "Hello!" in text and text.endswith("<|im_start|>assistant\n")


@pytest.fixture
def bos_tokenizer(tokenizer):
    """A tokenizer that adds BOS itself and whose chat template also writes it: the doubled-BOS trap."""
    tok = copy.deepcopy(tokenizer)
    bos = tok.bos_token
    tok._tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.bos_token_id)])
    tok.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}" \
                        "{% if add_generation_prompt %}assistant: {% endif %}"
    assert tok("hi").input_ids[0] == tok.bos_token_id
    return tok


def test_no_doubled_bos_with_template(bos_tokenizer):
    ids = PromptEncoder(bos_tokenizer).encode_prompt("hello")
    assert ids[0] == bos_tokenizer.bos_token_id and ids[1] != bos_tokenizer.bos_token_id
    assert ids.count(bos_tokenizer.bos_token_id) == 1


def test_plain_fallback_adds_bos_once_and_eos(bos_tokenizer):
    tok = copy.deepcopy(bos_tokenizer)
    tok.chat_template = None
    encoder = PromptEncoder(tok)
    assert not encoder.use_chat_template
    pair = encode_pair(encoder, "Say hi", "hi", "no", None, 64, 32)
    assert pair.prompt.count(tok.bos_token_id) == 1 and pair.prompt[0] == tok.bos_token_id
    assert pair.chosen[-1] == tok.eos_token_id
    assert tok.decode(pair.prompt, skip_special_tokens=True).endswith("Assistant:")


def test_truncation_keeps_prompt_end_and_response_start():
    prompt, responses = list(range(100)), [list(range(1000, 1050)), list(range(2000, 2010))]
    p, (c, r), pt, rt = truncate(prompt, responses, max_length=80, max_prompt_length=40)
    assert pt and rt
    assert p == list(range(60, 100))  # end of the prompt kept
    assert c == list(range(1000, 1040)) and r == list(range(2000, 2010))  # start of responses kept
    assert len(p) + len(c) <= 80


def test_truncation_prefers_keeping_prompt_when_responses_are_short():
    p, (c,), pt, rt = truncate(list(range(100)), [list(range(5))], max_length=60, max_prompt_length=10)
    assert len(p) == 55 and p[-1] == 99 and c == list(range(5)) and pt and not rt


def test_no_truncation_when_it_fits():
    p, (c,), pt, rt = truncate([1, 2], [[3, 4]], max_length=4, max_prompt_length=1)
    assert (p, c, pt, rt) == ([1, 2], [3, 4], False, False)
