# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Fine-tune a LLaVA model with Mask Fine-Tuning (MFT) on LLaVA-format JSON, the way you would with LoRA.

    python examples/llava/train.py --model llava-hf/llava-interleave-qwen-0.5b-hf \\
        --data train.json --image-folder images/ --eval-data test.json --output-dir mft-llava

Data: a JSON list of {"image": "file.png", "conversations": [{"from": "human", "value": "<image>\\nQuestion?"},
{"from": "gpt", "value": "Answer"}, ...]} (LLaVA's format; more turns may follow). The loss covers the answers only.
After training: exact-match accuracy on --eval-data (greedy decoding, each question after the earlier reference
turns), the adapter in OUTPUT_DIR/adapter and the merged model, with the processor, in OUTPUT_DIR/merged.

Self-contained on purpose: it needs peft-mft (with PEFT, transformers and torch) and Pillow, nothing else of this
repository. Copy it and change what you need.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from peft import get_peft_model
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration, Trainer, TrainingArguments, set_seed

import peft_mft


IGNORE_INDEX = -100  # label of tokens outside the answers: no loss


def read_records(path: str, image_folder: str, limit: int | None = None) -> list[dict]:
    """LLaVA JSON as [{"image": Path, "turns": [(question, answer), ...]}]; the <image> placeholder is dropped from
    the text (the chat template places the image)."""
    records = []
    for record in json.loads(Path(path).read_text())[:limit]:
        texts = [turn["value"].replace("<image>", "").strip() for turn in record["conversations"]]
        records.append({"image": Path(image_folder) / record["image"], "turns": list(zip(texts[0::2], texts[1::2]))})
    return records


def chat(turns: list[tuple[str, str]], answer_last: bool = True) -> list[dict]:
    """The turns as chat messages, the image in the first user message; without the last answer if not
    `answer_last` (a prompt to generate it)."""
    messages = []
    for index, (question, answer) in enumerate(turns):
        image = [{"type": "image"}] if index == 0 else []
        messages.append({"role": "user", "content": [*image, {"type": "text", "text": question}]})
        if answer_last or index < len(turns) - 1:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def encode(processor, record: dict, max_length: int) -> dict:
    """Token ids, labels (the answer tokens only) and pixel values of one record: each answer's tokens are those
    between the prompt that asks for it and the conversation that includes it."""
    image = Image.open(record["image"]).convert("RGB")

    def ids(messages, generation_prompt):
        text = processor.apply_chat_template(messages, add_generation_prompt=generation_prompt)
        return processor(text=text, images=image, return_tensors="pt")

    full = ids(chat(record["turns"]), False)
    input_ids = full["input_ids"][0][:max_length]
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for turn in range(1, len(record["turns"]) + 1):
        start = ids(chat(record["turns"][:turn], answer_last=False), True)["input_ids"].shape[1]
        end = ids(chat(record["turns"][:turn]), False)["input_ids"].shape[1]
        labels[start:end] = input_ids[start:end]
    return {"input_ids": input_ids, "labels": labels, "pixel_values": full["pixel_values"][0]}


def collator(processor, max_length: int):
    """A `Trainer` data collator: encodes a batch of records and pads it on the right."""
    pad_id = processor.tokenizer.pad_token_id

    def collate(records: list[dict]) -> dict:
        examples = [encode(processor, record, max_length) for record in records]
        length = max(len(example["input_ids"]) for example in examples)

        def padded(key, value):
            rows = [torch.cat([e[key], e[key].new_full((length - len(e[key]),), value)]) for e in examples]
            return torch.stack(rows)

        input_ids = padded("input_ids", pad_id)
        mask = torch.stack([torch.arange(length) < len(e["input_ids"]) for e in examples]).long()
        return {"input_ids": input_ids, "attention_mask": mask, "labels": padded("labels", IGNORE_INDEX),
                "pixel_values": torch.stack([e["pixel_values"] for e in examples])}

    return collate


@torch.no_grad()
def exact_match(model, processor, records: list[dict], max_new_tokens: int = 16) -> float:
    """Share of questions whose greedy answer equals the reference (case and surrounding punctuation ignored)."""
    model.eval()
    device = next(model.parameters()).device
    right = total = 0
    for record in records:
        image = Image.open(record["image"]).convert("RGB")
        for turn in range(1, len(record["turns"]) + 1):
            prompt = processor.apply_chat_template(chat(record["turns"][:turn], answer_last=False),
                                                   add_generation_prompt=True)
            inputs = processor(text=prompt, images=image, return_tensors="pt").to(device)
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            answer = processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            right += answer.strip().strip(".").lower() == record["turns"][turn - 1][1].strip().strip(".").lower()
            total += 1
    return right / max(total, 1)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="LLaVA checkpoint: Hub id or local folder")
    parser.add_argument("--data", required=True, help="training data, LLaVA JSON")
    parser.add_argument("--image-folder", default=".", help="folder the training records' image paths start from")
    parser.add_argument("--eval-data", help="held-out LLaVA JSON for exact-match accuracy (none: no evaluation)")
    parser.add_argument("--eval-image-folder", help="image folder of --eval-data (default: --image-folder)")
    parser.add_argument("--eval-samples", type=int, default=200, help="held-out records evaluated")
    parser.add_argument("--output-dir", default="mft-llava", help="adapter/ and merged/ are written here")
    parser.add_argument("--targets", choices=("attn", "mlp", "both"), default="both",
                        help="language-model projections to mask (each plus the image-text projector)")
    parser.add_argument("--mask-type", choices=("soft", "hard"), default="soft", help="S-MFT or H-MFT")
    parser.add_argument("--sparsity", type=float, default=None, help="hard masks: fraction zeroed per matrix")
    parser.add_argument("--lr", type=float, default=5e-5, help="learning rate (Trainer's default; MFTConfig's "
                        "score_scale turns it into the score step masks learn at)")
    parser.add_argument("--max-steps", type=int, default=640, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=8, help="records per step")
    parser.add_argument("--max-length", type=int, default=512, help="tokens per record, image tokens included")
    parser.add_argument("--bf16", action="store_true", help="train in bf16 autocast (GPUs, CPUs with native bf16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data order")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    set_seed(args.seed)
    processor = AutoProcessor.from_pretrained(args.model)
    model = LlavaForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32)
    config = peft_mft.MFTConfig(targets=args.targets, mask_type=args.mask_type, sparsity=args.sparsity)
    model = get_peft_model(model, config)  # the vision tower is never masked; only the scores train
    model.print_trainable_parameters()

    training = TrainingArguments(
        output_dir=str(Path(args.output_dir) / "trainer"), max_steps=args.max_steps, learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size, logging_steps=10, save_strategy="no", report_to="none",
        remove_unused_columns=False, bf16=args.bf16, seed=args.seed,
    )
    train_records = read_records(args.data, args.image_folder)
    trainer = Trainer(model=model, args=training, train_dataset=train_records,
                      data_collator=collator(processor, args.max_length))
    trainer.train()

    result = {"train_loss": trainer.state.log_history[-1].get("train_loss")}
    if args.eval_data:
        eval_records = read_records(args.eval_data, args.eval_image_folder or args.image_folder, args.eval_samples)
        result["accuracy"] = exact_match(model, processor, eval_records)
    out = Path(args.output_dir)
    peft_mft.save_adapter(model, out / "adapter")  # only the scores; load with PeftModel.from_pretrained
    merged = model.merge_and_unload()  # a plain LlavaForConditionalGeneration with W * M in its weights
    merged.save_pretrained(out / "merged")
    processor.save_pretrained(out / "merged")
    if args.eval_data:
        result["merged_accuracy"] = exact_match(merged, processor, eval_records)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
