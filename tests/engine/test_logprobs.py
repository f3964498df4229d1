import pytest
import torch

from alignkit.engine.layouts import collate
from alignkit.engine.logprobs import sequence_logps

ROWS = [([1, 5, 6, 7], [8, 9, 2]), ([1, 5], [10, 11, 12, 13, 2]), ([1, 30, 31, 32, 33, 34], [2])]


def naive_logps(model, batch):
    """Full-vocabulary log-softmax: the straightforward computation the engine must match."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    per_token = torch.log_softmax(logits, -1)[:, :-1].gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    mask = batch.target_mask[:, 1:]
    return (per_token * mask).sum(1), mask.sum(1)


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_matches_full_log_softmax(tiny_model, tokenizer, chunk_size):
    batch = collate(ROWS, tokenizer.pad_token_id)
    out = sequence_logps(tiny_model, batch, chunk_size=chunk_size, return_token_logps=True)
    expected, counts = naive_logps(tiny_model, batch)
    torch.testing.assert_close(out.logps, expected, atol=1e-5, rtol=0)
    assert out.tokens.tolist() == [3.0, 5.0, 1.0] == counts.float().tolist()
    torch.testing.assert_close(out.token_logps.sum(1), expected, atol=1e-5, rtol=0)


def test_padding_does_not_change_a_row(tiny_model, tokenizer):
    alone = sequence_logps(tiny_model, collate(ROWS[:1], tokenizer.pad_token_id)).logps
    padded = sequence_logps(tiny_model, collate(ROWS, tokenizer.pad_token_id)).logps[:1]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=0)


def test_prompt_tokens_are_not_scored_unless_joint(tokenizer):
    batch = collate(ROWS[:1], tokenizer.pad_token_id)
    assert batch.target_mask[0].tolist() == [False] * 4 + [True] * 3
    joint = collate(ROWS[:1], tokenizer.pad_token_id, score_prompt=True)
    assert joint.target_mask[0].tolist() == [False] + [True] * 6


def test_gradients_flow(tiny_model, tokenizer):
    out = sequence_logps(tiny_model, collate(ROWS, tokenizer.pad_token_id))
    out.logps.sum().backward()
    grads = [p.grad for p in tiny_model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_bf16_autocast_close_to_fp32(tiny_model, tokenizer):
    batch = collate(ROWS, tokenizer.pad_token_id)
    fp32 = sequence_logps(tiny_model, batch).logps
    bf16 = sequence_logps(tiny_model, batch, autocast_dtype=torch.bfloat16).logps
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, atol=0.5, rtol=0.02)


def test_token_logps_equal_the_plain_ops_in_value_and_gradient():
    """The in-place backward gives the gradient autograd gives through log_softmax + gather (float64),
    over more rows than one logsumexp block."""
    from alignkit.engine.logprobs import token_logps

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(70, 11, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (70,), generator=g)
    plain = torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(token_logps(logits.clone(), targets), plain)
    weights = torch.randn(70, generator=g, dtype=torch.float64)
    (expected,) = torch.autograd.grad((plain * weights).sum(), logits)
    (got,) = torch.autograd.grad((token_logps(logits * 1, targets) * weights).sum(), logits)
    torch.testing.assert_close(got, expected)


def test_token_logps_refuse_a_second_backward():
    from alignkit.engine.logprobs import token_logps

    logits = torch.randn(4, 5, requires_grad=True)
    out = token_logps(logits * 1, torch.tensor([0, 1, 2, 3])).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once"):
        out.backward()


def test_token_logps_of_chunks_of_one_tensor_back_propagate_each():
    """Chunks that are views of one logits tensor (the path for models without a plain hidden-state head) share a
    version counter: the backward must not write them in place."""
    from alignkit.engine.logprobs import token_logps

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 7, (6,), generator=g)
    whole = logits * 1
    out = torch.cat([token_logps(whole[:3], targets[:3]), token_logps(whole[3:], targets[3:])])
    (got,) = torch.autograd.grad(out.sum(), logits)
    plain = torch.log_softmax(logits, -1).gather(-1, targets[:, None]).sum()
    (expected,) = torch.autograd.grad(plain, logits)
    torch.testing.assert_close(got, expected)


def test_row_logsumexp_equals_torch_logsumexp_with_infinities_and_a_short_last_block():
    from alignkit.engine.logprobs import _row_logsumexp

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(70, 13, generator=g, dtype=torch.float64) * 7
    logits[3] = -float("inf")  # a row of -inf: -inf
    logits[4, 2] = float("inf")  # an infinite logit: inf
    logits[5, :6] = -float("inf")  # some -inf entries: finite
    torch.testing.assert_close(_row_logsumexp(logits, 16), logits.logsumexp(-1))
    assert _row_logsumexp(logits[:0], 16).shape == (0,)
