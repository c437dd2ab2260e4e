# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Trains a tiny MFT Llama on CPU processes for `tests/test_distributed.py`.

Run in one process (imported by the test) or in several, started by
`torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py OUT_DIR MODES` (CPU, gloo), with the same
global batch: `GLOBAL_BATCH` samples per step split across the processes. MODES is `ddp` (Trainer, with an atomic
checkpoint), `fsdp2` (a plain loop on a model sharded with `fully_shard`), `zero3` (Trainer with DeepSpeed ZeRO-3
and docs/deepspeed_zero3.json) or several, e.g. `ddp,fsdp2,zero3`. Each writes its adapter to OUT_DIR/MODE/adapter.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, TrainingArguments


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script by torchrun

from peft_mft import FiniteScoresCallback, MFTConfig, create_mft_optimizer, save_adapter  # noqa: E402
from peft_mft.training.trainer import AtomicCheckpointTrainer  # noqa: E402
from tests.conftest import VOCAB, make_llama  # noqa: E402


GLOBAL_BATCH, STEPS = 4, 3
DEEPSPEED_CONFIG = Path(__file__).resolve().parents[1] / "docs" / "deepspeed_zero3.json"


def make_model():
    return get_peft_model(make_llama().train(), MFTConfig(init_weights=False))


def dataset():
    """GLOBAL_BATCH sequences: every step sees all of them, whatever the number of processes, so the data order
    (which differs between a random and a distributed sampler) cannot change the result."""
    tokens = torch.randint(3, VOCAB, (GLOBAL_BATCH, 8), generator=torch.Generator().manual_seed(1))
    return [{"input_ids": row, "labels": row} for row in tokens]


def train_with_trainer(output_dir: str, world_size: int = 1) -> AtomicCheckpointTrainer:
    """DDP when started by torchrun / accelerate launch: `transformers.Trainer` splits the global batch."""
    model = make_model()
    args = TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=GLOBAL_BATCH // world_size, max_steps=STEPS,
        save_strategy="steps", save_steps=STEPS, report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
        logging_steps=1, dataloader_num_workers=0, ddp_backend="gloo" if world_size > 1 else None,
    )  # fmt: skip
    trainer = AtomicCheckpointTrainer(
        model=model, args=args, train_dataset=dataset(), optimizers=(create_mft_optimizer(model, lr=0.1), None),
        callbacks=[FiniteScoresCallback()],  # all-reduces its verdict across the processes
    )
    trainer.train()
    save_adapter(trainer.model, os.path.join(output_dir, "adapter"), is_main_process=trainer.args.should_save)
    return trainer


def global_batch() -> torch.Tensor:
    return torch.stack([row["input_ids"] for row in dataset()])


def train_loop(model, input_ids: torch.Tensor) -> None:
    """STEPS steps of AdamW (create_mft_optimizer, lr 0.1) on `input_ids` (this process's share of the batch)."""
    optimizer = create_mft_optimizer(model, lr=0.1)
    model.train()
    for _ in range(STEPS):
        model(input_ids=input_ids, labels=input_ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def train_fsdp2(output_dir: str, rank: int = 0, world_size: int = 1):
    """FSDP2 (`torch.distributed.fsdp.fully_shard`, what accelerate's FSDP2 plugin applies): each decoder layer and
    the whole model sharded across the processes; a plain loop with the global batch split by rank. With
    `world_size == 1` nothing is sharded (the reference)."""
    model = make_model()
    if world_size > 1:
        from torch.distributed.fsdp import fully_shard

        for layer in model.base_model.model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    train_loop(model, global_batch().chunk(world_size)[rank])
    state_dict = None
    if world_size > 1:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # Collective: every process takes part; the full tensors land on rank 0 only.
        state_dict = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    save_adapter(model, os.path.join(output_dir, "adapter"), is_main_process=rank == 0, state_dict=state_dict)


def train_zero3(output_dir: str, world_size: int = 1) -> None:
    """DeepSpeed ZeRO-3 through `transformers.Trainer` with docs/deepspeed_zero3.json (world_size > 1), or the same
    Trainer without DeepSpeed (the reference). The base model is loaded partitioned, so hard-mask scores start from
    the gathered |W| (`ds_shape`). Writes the adapter, and with ZeRO-3 also OUT/merge.json: merged vs masked logits
    and whether unmerging restored the exact weights."""
    zero3 = world_size > 1
    if zero3:
        import deepspeed

        deepspeed.init_distributed("gloo")  # on CPU the Trainer leaves deepspeed.comm to us; zero.Init needs it
    # The same pretrained weights for every process and the reference, written before ZeRO-3 is configured;
    # `from_pretrained` then loads them partitioned (shape [0], the real shape in `ds_shape`).
    pretrained = Path(output_dir) / "pretrained"
    torch.manual_seed(0)
    make_llama().save_pretrained(pretrained)  # rank 0 writes
    if zero3:
        torch.distributed.barrier()
    args = TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=GLOBAL_BATCH // world_size, max_steps=STEPS,
        report_to=[], use_cpu=True, seed=0, disable_tqdm=True, logging_steps=1, dataloader_num_workers=0,
        save_strategy="no", learning_rate=0.1, weight_decay=0.0, lr_scheduler_type="constant",
        deepspeed=str(DEEPSPEED_CONFIG) if zero3 else None, ddp_backend="gloo" if zero3 else None,
    )  # fmt: skip
    base = AutoModelForCausalLM.from_pretrained(pretrained)
    model = get_peft_model(base, MFTConfig(mask_type="hard", sparsity=0.25))
    # DeepSpeed wraps the optimizer itself, so the Trainer builds it: AdamW, lr 0.1, no weight decay, as
    # create_mft_optimizer does for the scores.
    trainer = AtomicCheckpointTrainer(
        model=model, args=args, train_dataset=dataset(), callbacks=[FiniteScoresCallback()]  # checks ZeRO-3 partitions
    )
    trainer.train()
    trainer.save_model(os.path.join(output_dir, "adapter"))  # gathers the partitioned scores under ZeRO-3
    if not zero3:
        return
    tokens = global_batch()
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    weight = layer.get_base_layer().weight
    model.eval()
    with torch.no_grad():
        masked = model(input_ids=tokens).logits
        with deepspeed.zero.GatheredParameters([weight]):
            original = weight.detach().clone()
        model.merge_adapter()
        merged = model(input_ids=tokens).logits
        with deepspeed.zero.GatheredParameters([weight]):
            merged_weight = weight.detach().clone()
        model.unmerge_adapter()
        with deepspeed.zero.GatheredParameters([weight]):
            restored = weight.detach().clone()
    if trainer.args.should_save:
        result = {
            "partitioned_shape": list(weight.shape),
            "ds_shape": list(weight.ds_shape),
            "merged_minus_masked": (merged - masked).abs().max().item(),
            "merge_changed_weight": not torch.equal(merged_weight, original),
            "unmerge_exact": torch.equal(restored, original),
        }
        Path(output_dir, "merge.json").write_text(json.dumps(result))


if __name__ == "__main__":
    out, modes, world_size = Path(sys.argv[1]), sys.argv[2].split(","), int(os.environ["WORLD_SIZE"])
    for mode in modes:  # one launch for several modes saves a process start-up per mode
        if mode == "ddp":
            train_with_trainer(str(out / mode), world_size=world_size)
        elif mode == "fsdp2":
            if not torch.distributed.is_initialized():
                torch.distributed.init_process_group("gloo")
            train_fsdp2(str(out / mode), rank=torch.distributed.get_rank(), world_size=world_size)
        elif mode == "zero3":
            train_zero3(str(out / mode), world_size=world_size)
        else:
            raise ValueError(f"unknown mode {mode!r}; use ddp, fsdp2, zero3 or several: ddp,fsdp2,zero3")
    torch.distributed.destroy_process_group()
