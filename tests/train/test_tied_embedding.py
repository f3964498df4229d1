"""Sparse accumulation of a tied embedding's gradient: same gradient, dense at the optimizer, only where it applies."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alignkit.engine.layouts import build_groups
from alignkit.engine.logprobs import sequence_logps
from alignkit.train.tied_embedding import accumulate_tied_embedding_sparsely


def llama(tied: bool = True) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    return LlamaForCausalLM(config).float()


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(5, 250, (n,), generator=g).tolist()

    return build_groups([(ids(6), [ids(4), ids(3)]), (ids(5), [ids(2), ids(5)])], 0, pack=True)


def embedding_gradient(model, seeds) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    for seed in seeds:  # accumulation over micro-batches
        sequence_logps(model, batch(seed)).logps.sum().backward()
    return model.get_input_embeddings().weight.grad


def test_tied_weight_gets_the_dense_gradient_summed_in_place_from_a_sparse_lookup():
    dense_model, sparse_model = llama(), llama()
    assert accumulate_tied_embedding_sparsely(sparse_model)
    assert sparse_model.get_input_embeddings().sparse
    assert not accumulate_tied_embedding_sparsely(sparse_model)  # once
    expected = embedding_gradient(dense_model, [1, 2])
    got = embedding_gradient(sparse_model, [1, 2])
    assert not got.is_sparse
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    optimizer = torch.optim.AdamW(sparse_model.parameters(), fused=True)
    optimizer.step()  # AdamW refuses sparse gradients: this one is dense


def test_a_gradient_that_never_reached_the_head_is_made_dense_before_the_optimizer():
    model = llama()
    accumulate_tied_embedding_sparsely(model)
    hidden = model.model(input_ids=torch.tensor([[5, 6, 7]])).last_hidden_state  # the head is never called
    hidden.sum().backward()
    weight = model.get_input_embeddings().weight
    assert not weight.grad.is_sparse and weight.grad[5].abs().sum() > 0


def test_untied_or_frozen_embeddings_are_left_dense():
    untied = llama(tied=False)
    assert not accumulate_tied_embedding_sparsely(untied)
    assert not untied.get_input_embeddings().sparse
    frozen = llama()
    frozen.get_input_embeddings().weight.requires_grad_(False)
    assert not accumulate_tied_embedding_sparsely(frozen)
