"""Precomputed reference log-probs: the shared-prefix layout gives the padded layout's values."""

from __future__ import annotations

import torch

from alignkit.train.reference import PrecomputedReference, _consecutive_groups


def test_consecutive_rows_with_one_prompt_form_one_group():
    rows = [([1, 2], [3]), ([1, 2], [4, 5]), ([6], [7]), ([1, 2], [8])]
    assert _consecutive_groups(rows) == [([1, 2], [[3], [4, 5]]), ([6], [[7]]), ([1, 2], [[8]])]


def test_shared_prefix_precompute_equals_padded(tmp_path, tiny_model, tokenizer):
    generator = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(3, 500, (n,), generator=generator).tolist()

    rows = []
    for length in [5, 9, 3, 12, 7]:  # pairs: (prompt, chosen), (prompt, rejected) consecutive, as methods give them
        prompt = ids(length)
        rows += [(prompt, ids(4 + length % 3)), (prompt, ids(2 + length % 5))]
    tables = {}
    for shared in (False, True):
        # batch_size 3 splits some pairs across batches: those become two one-response groups
        tables[shared] = PrecomputedReference.build(tiny_model, tokenizer, rows, pad_id=tokenizer.pad_token_id,
                                                    batch_size=3, shared_prefix=shared, cache_dir=tmp_path,
                                                    log=lambda m: None)
    torch.testing.assert_close(tables[True].table_logps, tables[False].table_logps, atol=1e-5, rtol=0)
    assert torch.equal(tables[True].table_tokens, tables[False].table_tokens)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2  # the layout is part of the cache key
