# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Whether emulated bf16 autocast (`harness.precision.EmulatedBF16`) trains like the real one.

One training step's forward and backward of the embedded VLM (a batch of easy-vqa training questions, MFT on
attention, MLP and projector) in three precisions: fp32, bf16 autocast through torch's own kernels ("native"; on a
CPU without native bf16 that is the slow fallback, minutes per step), and bf16 autocast with emulated matrix
products; and that emulation again with every matrix product's inner dimension summed in two halves, a change of
the fp32 summation order alone, as between two CPUs' native kernels. Reports each one's loss, seconds, and how far
its trainable parameters' gradient lies from the native one's (relative L2 distance, cosine). Emulation rounds where
native bf16 does if it lies about as far from native as the reordered emulation lies from the emulation, and
closer than fp32.

    python -m benchmarks.bf16_emulation                          # S-MFT, init 3, T 0.5, batch 8
    python -m benchmarks.bf16_emulation --method mft-hard --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

from harness.data import LlavaCollator, LlavaDataset, load_llava_json
from harness.easyvqa import prepare_easy_vqa
from harness.embedded import embedded_llava_checkpoint
from harness.methods import MethodArgs, prepare_model
from harness.models import load_llava
from harness.precision import EmulatedBF16, cpu_bf16_is_native, cpu_capability
from harness.report_files import check_report_files
from peft_mft.tools.output_file import json_report_with

from .timing import load_average, machine_description


PRECISIONS = ("fp32", "bf16 native", "bf16 emulated", "bf16 emulated, reordered")
# op -> the dimension of its first operand that is summed over
_SPLIT_OPS = {torch.ops.aten.mm.default: 1, torch.ops.aten.bmm.default: 2}


class ReorderedEmulation(EmulatedBF16):
    """`EmulatedBF16` whose mm / bmm sum their inner dimension in two halves (the same values, another order)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func not in _SPLIT_OPS or kwargs or args[0].dtype != torch.bfloat16 or args[0].shape[-1] < 2:
            return super().__torch_dispatch__(func, types, args, kwargs)
        a, b = args[0].float(), args[1].float()
        half = a.shape[-1] // 2
        first = func(a.narrow(-1, 0, half), b.narrow(-2, 0, half))
        second = func(a.narrow(-1, half, a.shape[-1] - half), b.narrow(-2, half, b.shape[-2] - half))
        return (first + second).to(torch.bfloat16)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", default="mft", choices=("mft", "mft-hard", "lora", "full"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)
    if args.json:
        check_report_files(p, "--json", [args.json], "python -m benchmarks.bf16_emulation",
                           json_report_with("reordered_gradient_distance_to_emulated"))
    loaded = load_llava(str(embedded_llava_checkpoint()))
    method_args = MethodArgs(init_score=3.0, temperature=0.5) if args.method == "mft" else MethodArgs()
    model = prepare_model(loaded.model, args.method, method_args).model
    processor = loaded.processor()
    data = prepare_easy_vqa()
    records = load_llava_json(data["train"], data["image_folder"], limit=args.batch_size)
    dataset = LlavaDataset(records, processor)
    batch = LlavaCollator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(len(dataset))])
    trainable = [p for p in model.parameters() if p.requires_grad]

    def step(precision: str) -> dict:
        model.zero_grad(set_to_none=True)
        emulation = {"bf16 emulated": EmulatedBF16, "bf16 emulated, reordered": ReorderedEmulation}.get(
            precision, contextlib.nullcontext)()
        start = time.perf_counter()
        with emulation:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "fp32"):
                loss = model(**batch).loss
            loss.backward()
        seconds = time.perf_counter() - start
        gradient = torch.cat([p.grad.flatten().double() for p in trainable])  # float64: sums over ~10^8 values
        return {"loss": loss.item(), "seconds": seconds, "gradient": gradient}

    steps = {precision: step(precision) for precision in PRECISIONS}
    native, emulated = steps["bf16 native"]["gradient"], steps["bf16 emulated"]["gradient"]
    reordered = steps["bf16 emulated, reordered"]["gradient"]
    rows = {}
    for precision, s in steps.items():
        gradient = s.pop("gradient")
        rows[precision] = {**s, "gradient_distance_to_native": ((gradient - native).norm() / native.norm()).item(),
                           "gradient_cosine_to_native": torch.nn.functional.cosine_similarity(
                               gradient, native, dim=0).item()}
    result = {"machine": machine_description(torch.device("cpu")), "cpu_capability": cpu_capability(),
              "cpu_bf16_native": cpu_bf16_is_native(), "method": args.method, "batch_size": args.batch_size,
              "trainable_values": int(native.numel()), "steps": rows,
              "reordered_gradient_distance_to_emulated": ((reordered - emulated).norm() / emulated.norm()).item(),
              "load_average": load_average()}
    print(f"{result['machine']['device_name']} (capability {result['cpu_capability']}, native bf16: "
          f"{result['cpu_bf16_native']}), {args.method}, batch {args.batch_size}, one forward + backward:")
    for precision, row in rows.items():
        print(f"  {precision:24s} loss {row['loss']:.6f}  {row['seconds']:7.1f} s  gradient vs native: relative "
              f"distance {row['gradient_distance_to_native']:.2e}, cosine {row['gradient_cosine_to_native']:.6f}")
    print(f"  reordered emulation vs emulation: gradient relative distance "
          f"{result['reordered_gradient_distance_to_emulated']:.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
