"""The engine's N-from-one-prefill expansion is exact, and the log-probs it returns are the model's."""

from __future__ import annotations

import torch

from alignkit.data.tokenize import PromptEncoder
from alignkit.engine.generation import SamplingParams, sample_ids

PROMPTS = ["Say hello.", "What is 2 + 2? Answer with just the number.", "Name a colour."]


def test_expanded_kv_cache_logits_equal_an_unshared_run(tiny_model, tokenizer):
    encoder = PromptEncoder(tokenizer)
    prompts = [encoder.encode_prompt(p) for p in PROMPTS]
    n, params = 4, SamplingParams(max_new_tokens=6)
    kwargs = dict(eos_token_id=-1, pad_token_id=tokenizer.pad_token_id, batch_size=len(prompts) * n,
                  return_logits=True)
    shared = sample_ids(tiny_model, prompts, params, n, **kwargs)
    # the same rows without sharing: every prompt repeated n times, each prefilled on its own row
    unshared = sample_ids(tiny_model, [p for p in prompts for _ in range(n)], params, 1, **kwargs)
    (shared_logits,), (unshared_logits,) = shared.step_logits, unshared.step_logits
    # both runs order rows shortest prompt first (a stable sort), so map rows back to prompt order
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    shared_rows = torch.cat([shared_logits[k * n:(k + 1) * n] for k in sorted(range(len(order)),
                                                                           key=order.__getitem__)])
    repeated = [p for p in prompts for _ in range(n)]
    unshared_order = sorted(range(len(repeated)), key=lambda i: len(repeated[i]))
    unshared_rows = unshared_logits[torch.tensor(sorted(range(len(repeated)), key=unshared_order.__getitem__))]
    assert shared_rows.shape == unshared_rows.shape == (len(prompts) * n, 6, len(tokenizer))
    assert (shared_rows - unshared_rows).abs().max().item() < 1e-5
    assert all(shared.responses[i] == [unshared.responses[i * n + j][0] for j in range(n)]
               for i in range(len(prompts)))


def test_returned_logps_are_the_models_summed_response_logps(tiny_model, tokenizer):
    encoder = PromptEncoder(tokenizer)
    prompts = [encoder.encode_prompt(p) for p in PROMPTS]
    out = sample_ids(tiny_model, prompts, SamplingParams(max_new_tokens=5, do_sample=True, seed=1), 3,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, return_logps=True)
    for prompt, responses, logps in zip(prompts, out.responses, out.logps, strict=True):
        for response, logp in zip(responses, logps, strict=True):
            ids = torch.tensor([prompt + response])
            with torch.no_grad():
                logprobs = tiny_model(input_ids=ids).logits[0].float().log_softmax(-1)
            expected = sum(logprobs[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(response))
            assert abs(expected - logp) < 1e-4
