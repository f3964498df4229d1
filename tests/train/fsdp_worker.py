"""Worker for test_sharded_checkpoint, run under torchrun with 2 processes (gloo, CPU): FSDP2 shards a tiny
Llama (``fully_shard`` per decoder layer and the root), and alignkit's checkpoint functions must gather the
shards into the same files an unsharded run writes, restore them into another sharded model, and give the
full weights ``final/`` is written from.

Both processes feed the same token ids, so FSDP's averaged gradient equals one process's gradient and the
sharded run must match an unsharded run of the same steps, which every process also trains locally.

    python -m torch.distributed.run --nproc_per_node 2 -m tests.train.fsdp_worker OUT_DIR full|lora
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from torch.distributed.fsdp import fully_shard

from alignkit.models import load_tokenizer, tiny_llama
from alignkit.train.checkpoint import (
    TrainerState,
    gather_full_model,
    gather_training_state,
    load_checkpoint,
    parameters_sharded,
    rng_state,
    save_checkpoint,
)


def build(tokenizer, seed: int, lora: bool, shard: bool):
    """With LoRA the base weights are always seed 0's (a checkpoint holds only what trains; the base comes
    from the pretrained model) and ``seed`` draws the adapters."""
    model = tiny_llama(tokenizer, seed=0 if lora else seed)
    if lora:
        torch.manual_seed(seed)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights="gaussian"))
    if shard:
        for layer in model.get_decoder().layers:
            fully_shard(layer)
        fully_shard(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler


def train_step(model, optimizer, scheduler, ids: torch.Tensor) -> None:
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b), sorted(set(a) ^ set(b))[:4]
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def main(out: Path, kind: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    tokenizer = load_tokenizer()
    lora = kind == "lora"
    batches = [torch.randint(0, len(tokenizer), (2, 12), generator=torch.Generator().manual_seed(i))
               for i in range(3)]

    sharded, optimizer, scheduler = build(tokenizer, 0, lora, shard=True)
    for ids in batches[:2]:
        train_step(sharded, optimizer, scheduler, ids)
    training_state = gather_training_state(sharded, optimizer)  # collective
    rng_states: list = [None, None]
    dist.all_gather_object(rng_states, rng_state())
    if rank == 0:
        save_checkpoint(out, training_state, scheduler, TrainerState(step=2, num_processes=2),
                        rng_per_process=rng_states)
    dist.barrier()

    restored, restored_optimizer, restored_scheduler = build(tokenizer, 1, lora, shard=True)  # other init
    load_checkpoint(out / "checkpoints" / "step-000002", restored, restored_optimizer, restored_scheduler, rank)
    train_step(sharded, optimizer, scheduler, batches[2])
    train_step(restored, restored_optimizer, restored_scheduler, batches[2])
    full_sharded, full_restored = gather_full_model(sharded), gather_full_model(restored)  # collectives

    plain, plain_optimizer, plain_scheduler = build(tokenizer, 0, lora, shard=False)
    for ids in batches:
        train_step(plain, plain_optimizer, plain_scheduler, ids)
    if rank == 0:
        twin = build(tokenizer, 2, lora, shard=False)[0]
        twin.load_state_dict(full_sharded)  # strict, as the loop's unsharded twin for final/ does
        result = {
            "sharded_detected": parameters_sharded(sharded), "plain_detected": parameters_sharded(plain),
            "checkpoint_names": sorted(training_state[0]),
            "trainable_names": sorted(n for n, p in plain.named_parameters() if p.requires_grad),
            "restored_vs_uninterrupted": max_difference(full_restored, full_sharded),
            "sharded_vs_plain": max_difference(full_sharded, plain.state_dict()),
            "twin_vs_plain": max_difference(twin.state_dict(), plain.state_dict()),
            "moved": max_difference(full_sharded, build(tokenizer, 0, lora, shard=False)[0].state_dict()),
        }
        (out / "result.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
