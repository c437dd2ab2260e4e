# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""H-MFT probe 1, evaluation only: does a trained S-MFT adapter owe its accuracy to the weights it switches off, or
to how much it attenuates the others?

    python -m examples.hmft_probe --adapter outputs/results/<run>/adapter --source-key '<runs.jsonl key>'

Each variant replaces the adapter's (normalised) soft masks `M` by `f(M)`, writes `W * f(M)` into a fresh copy of the
embedded base model and scores it on the first 400 easy-vqa test questions, as the results runner scores its runs
(greedy decoding, fp32):

- `soft`: `f(M) = M`, the adapter itself (its test accuracy must match the run's: a check of the probe);
- `hard <p>`: per matrix, the fraction p with the smallest `M` zeroed and every other mask 1, as `peft-mft harden`
  does (the H-MFT levels of RESULTS.md and 1%);
- `soft, near-zero back to 1`: `M` where `M >= 0.1`, else 1 (the attenuation without the switched-off set);
- `binary at 0.1`: 0 where `M < 0.1`, else 1 (the switched-off set without the attenuation).

Every finished variant is appended at once to examples/results/hmft_probe.jsonl and skipped when the probe runs
again for the same adapter (`--source-key`).
"""

from __future__ import annotations

import argparse
import json

import torch

from harness.data import load_llava_json
from harness.easyvqa import prepare_easy_vqa
from harness.embedded import embedded_llava_checkpoint
from harness.evaluation import correctness_text, evaluate_vqa
from harness.models import load_llava
from peft_mft.mask import hard_mask, hard_mask_threshold
from peft_mft.tools.analysis import AdapterMasks

from .results_plan import RESULTS_DIR, TEST_QUESTIONS


PROBE_FILE = RESULTS_DIR / "hmft_probe.jsonl"
HARD_LEVELS = (0.000711, 0.001423, 0.002846, 0.01)  # RESULTS.md's H-MFT levels, and the paper's TinyLlama best
NEAR_ZERO = 0.1


def hardened(mask: torch.Tensor, sparsity: float) -> torch.Tensor:
    """0 for the `sparsity` fraction of `mask` with the smallest values (ties: lowest flat index first), 1 else."""
    threshold = hard_mask_threshold(mask, sparsity)
    return torch.ones_like(mask) if threshold is None else hard_mask(mask, threshold)


def variants() -> dict[str, callable]:
    """{name: f}, the mask transforms the probe evaluates."""
    out = {"soft": lambda m: m}
    out |= {f"hard {100 * p:.4g}%": (lambda m, p=p: hardened(m, p)) for p in HARD_LEVELS}
    out["soft, near-zero back to 1"] = lambda m: torch.where(m < NEAR_ZERO, torch.ones_like(m), m)
    out["binary at 0.1"] = lambda m: (m >= NEAR_ZERO).to(m.dtype)
    return out


def masked_base_model(checkpoint: str, masks: AdapterMasks, transform):
    """The embedded base model with `W * transform(M)` written into every masked weight, its processor, and the
    share of masked weights `transform` zeroed."""
    loaded = load_llava(checkpoint)
    zeroed = total = 0
    with torch.no_grad():
        for name, mask in masks:
            weight, applied = loaded.model.get_submodule(name).weight, transform(mask)
            weight.mul_(applied.to(weight.dtype))
            zeroed, total = zeroed + int((applied == 0).sum()), total + applied.numel()
    return loaded.model, loaded.processor(), zeroed / total


def done_variants(source_key: str) -> set[str]:
    if not PROBE_FILE.is_file():
        return set()
    records = [json.loads(line) for line in PROBE_FILE.read_text().splitlines() if line.strip()]
    return {r["variant"] for r in records if r["source_key"] == source_key}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", required=True, help="a trained soft-mask (S-MFT) adapter folder")
    parser.add_argument("--source-key", required=True, help="the run's key in examples/results/runs.jsonl")
    parser.add_argument("--questions", type=int, default=TEST_QUESTIONS, help="test questions, the first N")
    parser.add_argument("--only", action="append", help="evaluate only these variants (default: all)")
    args = parser.parse_args(argv)
    masks = AdapterMasks.from_folder(args.adapter)
    if masks.config.mask_type != "soft":
        parser.error(f"{args.adapter} is a hard-mask adapter; the probe needs a soft one")
    data = prepare_easy_vqa()
    records = load_llava_json(data["test"], data["image_folder"], limit=args.questions)
    checkpoint = str(embedded_llava_checkpoint())
    skip, results = done_variants(args.source_key), []
    for name, transform in variants().items():
        if name in skip or (args.only and name not in args.only):
            continue
        model, processor, zeroed_share = masked_base_model(checkpoint, masks, transform)
        evaluation = evaluate_vqa(model, processor, records, batch_size=32, desc=name)
        record = {"source_key": args.source_key, "adapter": str(args.adapter), "variant": name,
                  "accuracy": evaluation["accuracy"], "questions": evaluation["total"], "zeroed_share": zeroed_share,
                  "answers_correct": correctness_text(evaluation["predictions"])}
        PROBE_FILE.parent.mkdir(parents=True, exist_ok=True)
        with open(PROBE_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"{name}: {100 * record['accuracy']:.2f}% ({record['zeroed_share']:.4%} zeroed)", flush=True)
        results.append(record)
    return results


if __name__ == "__main__":
    main()
