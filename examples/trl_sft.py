# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Supervised fine-tuning with TRL's SFTTrainer and an MFT adapter (the README's TRL recipe as a script).

    python -m examples.trl_sft --data train.jsonl                      # the embedded SmolLM2-135M-Instruct
    python -m examples.trl_sft --model PATH --data train.jsonl --4bit  # a bitsandbytes NF4 base

`--data`: JSON Lines in a format SFTTrainer reads, {"text": ...} or {"messages": [{"role": ..., "content": ...}]}.
The adapter (scores only) is saved in `--output-dir`.
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

import peft_mft


def build_parser() -> argparse.ArgumentParser:
    from harness.cli import DefaultsOnce

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=DefaultsOnce)
    p.add_argument("--model", default=None, help="model folder or Hub id (default: the embedded SmolLM2-135M)")
    p.add_argument("--data", required=True, help="training JSON Lines: {'text': ...} or {'messages': [...]}")
    p.add_argument("--4bit", dest="four_bit", action="store_true", help="load the base in bitsandbytes NF4")
    p.add_argument("--targets", choices=("attn", "mlp", "both"), default="both",
                   help="language-model projections to mask (plus a VLM's projector)")
    p.add_argument("--method", choices=("mft", "mft-hard"), default="mft",
                   help="mft: soft masks; mft-hard: hard masks (as examples.llava.train_methods names them)")
    p.add_argument("--lr", type=float, default=2e-5,
                   help="learning rate, as for LoRA (SFTConfig's default; MFTConfig.score_scale makes it move masks)")
    p.add_argument("--max-steps", type=int, default=100, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per device per step")
    p.add_argument("--max-length", type=int, default=512, help="tokens per training sequence")
    p.add_argument("--output-dir", default="outputs/trl-sft", help="folder the adapter is saved in")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)

    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    source = args.model
    if source is None:
        from harness.embedded import smollm2_checkpoint

        source = str(smollm2_checkpoint())
    kwargs = {}
    if args.four_bit:
        kwargs = dict(quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                             bnb_4bit_compute_dtype=torch.bfloat16),
                      device_map={"": 0} if torch.cuda.is_available() else {"": "cpu"})
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
    config = SFTConfig(output_dir=args.output_dir, max_steps=args.max_steps,
                       per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
                       max_length=args.max_length, logging_steps=10,
                       save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available())
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=load_dataset("json", data_files=args.data, split="train"),
        processing_class=AutoTokenizer.from_pretrained(source),
        peft_config=peft_mft.MFTConfig(mask_type="hard" if args.method == "mft-hard" else "soft",
                                       targets=args.targets),
        callbacks=[peft_mft.Standard4bitLayoutCallback()],
    )
    trainer.train()
    trainer.model.save_pretrained(args.output_dir)
    print(f"saved the MFT adapter in {args.output_dir}")


if __name__ == "__main__":
    main()
