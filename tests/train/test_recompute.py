"""Selective activation checkpointing: same gradients, per-segment attention kept, less memory held."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaConfig, LlamaForCausalLM

from alignkit.engine.layouts import build_groups
from alignkit.engine.logprobs import packing_capacity, segment_plan, sequence_logps
from alignkit.train.recompute import enable_activation_checkpointing


def llama(layers: int = 4) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    return LlamaForCausalLM(config).float().train()


def batch():
    g = torch.Generator().manual_seed(1)

    def ids(n):
        return torch.randint(5, 200, (n,), generator=g).tolist()

    groups = [(ids(30), [ids(20), ids(12)]), (ids(16), [ids(24), ids(9)]), (ids(36), [ids(4), ids(18)])]
    return build_groups(groups, 0, pack=True, row_tokens="all")


class HeldBytes(TorchDispatchMode):
    """Bytes of the tensors that ops produced inside the mode and that are still alive: after a forward, what
    the autograd graph (and checkpointing's caches) hold for the backward."""

    def __enter__(self):
        self.outputs: list[weakref.ref] = []
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else [out]:
            if isinstance(tensor, torch.Tensor):
                self.outputs.append(weakref.ref(tensor))
        return out

    def held(self) -> int:
        storages = {}
        for ref in self.outputs:
            tensor = ref()
            if tensor is not None:
                storage = tensor.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        return sum(storages.values())


KINDS = {  # name -> (every_n_layers, full, selective)
    "none": None, "full": (1, True, False), "selective": (1, False, True), "every2_selective": (2, True, True),
}


def run(kind: str):
    model, packed = llama(), batch()
    if KINDS[kind] is not None:
        every, full, selective = KINDS[kind]
        enable_activation_checkpointing(model, every, full=full, selective=selective)
        assert [layer.gradient_checkpointing for layer in model.model.layers] == [
            (full and i % every == 0) or selective for i in range(4)]
        assert packing_capacity(model) == "all" and segment_plan(model, packed) is not None  # one row kept
    with HeldBytes() as mode:
        out = sequence_logps(model, packed, attention="auto").logps
        held = mode.held()
    out.sum().backward()
    return out.detach(), torch.cat([p.grad.flatten() for p in model.parameters()]), held


@pytest.fixture(scope="module")
def runs():
    return {kind: run(kind) for kind in KINDS}


@pytest.mark.parametrize("kind", ["full", "selective", "every2_selective"])
def test_checkpointing_gives_the_unchecked_log_probs_and_gradients(runs, kind):
    torch.testing.assert_close(runs[kind][0], runs["none"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(runs[kind][1], runs["none"][1], atol=1e-5, rtol=0)


def test_selective_checkpointing_holds_less_than_none_and_more_than_full(runs):
    """Selective keeps matmul and attention outputs only: a Llama layer's norms, rotary embeddings, SiLU and
    gating product are about 40% of what it otherwise holds (the logits, held in every kind, are set aside
    by comparing against full checkpointing)."""
    none, selective, full = (runs[k][2] for k in ("none", "selective", "full"))
    mixed = runs["every2_selective"][2]
    assert full < mixed < selective < none
    layers_none, layers_selective = none - full, selective - full
    assert layers_selective < 0.7 * layers_none, (layers_selective, layers_none)


def test_selective_checkpointing_is_a_config_switch(tmp_path):
    from alignkit.configs import ConfigError
    from alignkit.train.config import load_config

    config = load_config(None, [f"output_dir={tmp_path}", "selective_checkpointing=true",
                                "activation_checkpointing=true", "activation_checkpointing_every=2"])
    assert config.selective_checkpointing and config.activation_checkpointing_every == 2
    with pytest.raises(ConfigError, match="selective_checkpointing"):
        load_config(None, [f"output_dir={tmp_path}", "selective_checkpointing=maybe"])
