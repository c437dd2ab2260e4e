# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""How far H-MFT runs on the embedded VLM moved their scores from the start (`|W| / mean |W|` per matrix).

    python -m examples.hard_score_drift outputs/results/<run>/adapter [...]

Per adapter: the share of scores below 0, the mean `|S - S_start|` (a unit is the mean start score), and the share
of the finally zeroed entries that were zeroed at the start too. Reads the adapters and the embedded model's weights;
writes nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors import safe_open

from harness.embedded import embedded_llava_checkpoint
from peft_mft.layer import initial_hard_scores
from peft_mft.mask import num_zeroed


ADAPTER_PREFIX = "base_model.model.model."


def checkpoint_key(score_key: str) -> str:
    """The embedded checkpoint's weight key of an adapter's score key (the two name the language model apart)."""
    name = score_key.removeprefix(ADAPTER_PREFIX).removesuffix(".mft_scores")
    if name.startswith("language_model."):
        name = "language_model.model." + name.removeprefix("language_model.")
    return name + ".weight"


def drift(adapter: Path, weights) -> dict[str, float]:
    """The three shares above for one adapter folder; `weights`: the embedded checkpoint, opened."""
    sparsity = json.loads((adapter / "adapter_config.json").read_text())["sparsity"]
    scores_file = safe_open(str(adapter / "adapter_model.safetensors"), "pt")
    negative = count = zeroed = kept = 0
    moved = 0.0
    for key in scores_file.keys():
        start = initial_hard_scores(weights.get_tensor(checkpoint_key(key)))
        scores = scores_file.get_tensor(key).float()
        negative += int((scores < 0).sum())
        count += scores.numel()
        moved += float((scores - start).abs().sum())
        k = num_zeroed(scores.numel(), sparsity)
        if k:
            now = set(scores.abs().flatten().topk(k, largest=False).indices.tolist())
            kept += len(now & set(start.flatten().topk(k, largest=False).indices.tolist()))
            zeroed += k
    return {"sparsity": sparsity, "negative_share": negative / count, "mean_abs_change": moved / count,
            "zeroed_at_start_share": kept / zeroed if zeroed else float("nan")}


def main(argv: list[str]) -> None:
    weights = safe_open(str(Path(embedded_llava_checkpoint()) / "model.safetensors"), "pt")
    for folder in argv:
        d = drift(Path(folder), weights)
        print(f"{folder}: sparsity {d['sparsity']:g}, scores below 0 {100 * d['negative_share']:.1f}%, "
              f"mean |S - S_start| {d['mean_abs_change']:.3f}, zeroed entries also zeroed at the start "
              f"{100 * d['zeroed_at_start_share']:.1f}%")


if __name__ == "__main__":
    main(sys.argv[1:])
