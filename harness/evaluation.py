# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Exact-match VQA accuracy by greedy generation."""

from __future__ import annotations

import re
import string

import torch
from tqdm.auto import tqdm

from .data import LlavaCollator, Record, VLMProcessor


_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, collapse spaces: "Blue." -> "blue"."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


@torch.no_grad()
def evaluate_vqa(
    model,
    processor: VLMProcessor,
    records: list[Record],
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    desc: str = "eval",
    disable_tqdm: bool = False,
) -> dict:
    """Greedy-decode an answer for every assistant turn of ``records`` (earlier turns given as in the data) and
    compare it with the reference after `normalize_answer`.

    Returns {"accuracy", "correct", "total", "predictions": [{"id", "turn", "answer", "prediction", "correct"}]}.
    Puts ``model`` in eval mode (and leaves it there)."""
    model.eval()
    items = []
    for record in records:
        for turn, (ids, answer) in enumerate(processor.encode_prompts(record)):
            items.append((record, turn, ids, answer))
    if max_new_tokens is None:
        longest = max(len(processor.tokenizer(a, add_special_tokens=False).input_ids) for *_, a in items)
        max_new_tokens = min(longest + 4, 64)
    order = sorted(range(len(items)), key=lambda i: len(items[i][2]))  # similar lengths share a batch
    param = next(p for p in model.parameters() if p.dtype.is_floating_point)
    collate = LlavaCollator(processor.tokenizer.pad_token_id, padding_side="left", pixel_dtype=param.dtype)
    predictions: list[dict | None] = [None] * len(items)
    device = param.device
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=disable_tqdm, leave=False):
        chunk = order[start : start + batch_size]
        feats = []
        for i in chunk:
            record, _, ids, _ = items[i]
            feat = {"input_ids": ids}
            if record.image is not None:
                feat["pixel_values"] = processor.load_image(record)
            feats.append(feat)
        batch = {k: v.to(device) for k, v in collate(feats).items()}
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=processor.tokenizer.pad_token_id,
            eos_token_id=processor.eos_token_id,
        )
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        texts = processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        for i, text in zip(chunk, texts):
            record, turn, _, answer = items[i]
            predictions[i] = {
                "id": record.id if record.id is not None else record.index,
                "turn": turn,
                "answer": answer,
                "prediction": text.strip(),
                "correct": normalize_answer(text) == normalize_answer(answer),
            }
    correct = sum(p["correct"] for p in predictions)
    return {"accuracy": correct / len(predictions), "correct": correct, "total": len(predictions),
            "predictions": predictions}


def correctness_text(predictions: list[dict]) -> str:
    """Each prediction's correctness as one character, "1" right and "0" wrong, in evaluation order: a compact form
    kept in results so two runs on the same questions can be paired question by question (McNemar's test)."""
    return "".join("1" if p["correct"] else "0" for p in predictions)


def correctness_from_text(text: str) -> list[bool]:
    """The inverse of `correctness_text`."""
    if set(text) - {"0", "1"}:
        raise ValueError(f"per-question correctness holds only '0' and '1', got {sorted(set(text) - {'0', '1'})}")
    return [c == "1" for c in text]
