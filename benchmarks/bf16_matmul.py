# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""How much bf16 autocast costs against fp32 on this machine, for the matrix products of one training step's layer.

One SmolLM2-135M MLP projection (1024 tokens x 576 in -> 1536 out), forward and backward with gradients for the input
and the weight (the three GEMMs `x W^T`, `g W`, `g^T x`: 5.4 GFLOP), timed in fp32 and under
`torch.autocast(dtype=bfloat16)` as the examples' `--bf16` training runs it. The ratio tells whether `--bf16` pays
here (`harness.precision`); on a CPU without native bf16 it is far above 1.

    python -m benchmarks.bf16_matmul                       # this CPU, 3 timed calls each
    python -m benchmarks.bf16_matmul --json out.json
"""

from __future__ import annotations

import argparse
import json

import torch

from harness.precision import cpu_bf16_is_native, cpu_capability
from harness.report_files import check_report_files
from peft_mft.tools.output_file import json_report_with

from .timing import load_average, machine_description, summarize, time_interleaved


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--shape", default="1536x576", help="weight shape, out x in")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)
    if args.json:
        check_report_files(p, "--json", [args.json], "python -m benchmarks.bf16_matmul",
                           json_report_with("bf16_over_fp32"))
    out_features, in_features = (int(n) for n in args.shape.split("x"))
    device = torch.device("cpu")
    x = torch.randn(args.tokens, in_features, requires_grad=True)
    weight = torch.randn(out_features, in_features, requires_grad=True)

    def forward_backward(bf16: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = torch.nn.functional.linear(x, weight)
        out.float().sum().backward()

    def fp32():
        forward_backward(bf16=False)

    def bf16_autocast():
        forward_backward(bf16=True)

    times = time_interleaved({"fp32": fp32, "bf16_autocast": bf16_autocast}, args.repeats, warmup=1, device=device)
    stats = {name: summarize(seconds) for name, seconds in times.items()}
    result = {"machine": machine_description(device), "cpu_capability": cpu_capability(),
              "cpu_bf16_native": cpu_bf16_is_native(), "tokens": args.tokens, "shape": args.shape,
              "gflop": 3 * 2 * args.tokens * in_features * out_features / 1e9, "seconds": stats,
              "bf16_over_fp32": stats["bf16_autocast"]["median"] / stats["fp32"]["median"],
              "load_average": load_average()}
    print(f"{result['machine']['device_name']} (capability {result['cpu_capability']}, native bf16: "
          f"{result['cpu_bf16_native']}): {args.tokens} tokens x {args.shape} weight, {result['gflop']:.2f} GFLOP; "
          f"fp32 {stats['fp32']['median'] * 1e3:.1f} ms, bf16 autocast {stats['bf16_autocast']['median'] * 1e3:.1f} ms"
          f" median of {args.repeats}: bf16 / fp32 = {result['bf16_over_fp32']:.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
