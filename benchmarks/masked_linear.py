# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""One masked linear layer against the dense layer it replaces: forward + backward time, on realistic shapes.

The dense baseline is `F.linear` with a weight that requires a gradient (what full fine-tuning runs); the masked
layer is `peft_mft.mask.masked_linear` with the weight frozen and scores trained. Both run the same three GEMMs
(`x W^T`, `g W`, `g^T x`); the masked layer adds element-wise passes over the (out, in) weight.

    python -m benchmarks.masked_linear                      # SmolLM2-135M shapes, 1024 tokens, this CPU
    python -m benchmarks.masked_linear --tokens 4096 --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from harness.report_files import check_report_files
from peft_mft.mask import MaskSpec, hard_mask_threshold, masked_linear
from peft_mft.tools.output_file import json_report_with

from .timing import load_average, machine_description, summarize, time_interleaved


# SmolLM2-135M: q/o 576x576, k/v 192x576, gate/up 1536x576, down 576x1536 (out x in), and how many of each shape
# one decoder layer holds.
DEFAULT_SHAPES = ("576x576", "192x576", "1536x576", "576x1536")
DEFAULT_COUNTS = (2, 2, 2, 1)
# Element-wise traffic of `MaskedLinearFunction` per masked weight (float32 W, S), forward + backward, counted from
# its passes (a pass reading r and writing w float32 tensors moves 4 (r + w) bytes):
#   soft forward: S/T (8), sigmoid_ (8), /normalizer (8), *W (12) = 36
#   soft backward: S/T (8), sigmoid_ (8), /normalizer (8), *W (12), dS *= W*M (12), dS -= dS*sigmoid (16), /T (8) = 72
#   STE backward: the same up to W*M (36), then dS *= W (12) = 48
#   hard forward: |S| (8), sampled bound (5), candidates (5), |S| (8), > threshold (8), *W (12) = 46
#   hard backward: |S| (8), > threshold (8), *W (12), dS *= W (12), sign(S) (8), dS *= sign(S) (12) = 60
ELEMENTWISE_BYTES_PER_WEIGHT = {"mft": 36 + 72, "mft-ste": 36 + 48, "mft-hard": 46 + 60}
# A mask fused into the GEMMs (applied while packing W, and in the epilogue of g^T x) would still read S in the
# forward and in the backward, and W and S once more for dL/dS: 16 bytes per weight.
FUSED_LOWER_BOUND_BYTES_PER_WEIGHT = 16
SPECS = {
    "mft": MaskSpec("soft", temperature=2.3, normalizer=0.9548),
    "mft-ste": MaskSpec("soft", temperature=2.3, normalizer=0.9548, straight_through=True),
    "mft-hard": MaskSpec("hard", sparsity=0.01),
}


def parse_shape(text: str) -> tuple[int, int]:
    try:
        out_features, in_features = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not OUTxIN, e.g. 1536x576") from None
    return out_features, in_features


def layer_functions(out_features: int, in_features: int, tokens: int, device, dtype) -> dict:
    """Closures running one forward + backward of the dense layer and of each masked variant on the same data."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(tokens, in_features, generator=gen).to(device, dtype).requires_grad_()
    weight = (torch.randn(out_features, in_features, generator=gen) * 0.02).to(device, dtype)
    dense_weight = weight.clone().requires_grad_()
    # trained-looking scores: spread around the soft init, |W| for the hard mask
    soft_scores = (7.0 + torch.randn(out_features, in_features, generator=gen)).to(device).requires_grad_()
    hard_scores = weight.abs().float().requires_grad_()
    grad_out = torch.randn(tokens, out_features, generator=gen).to(device, dtype)

    def dense():
        F.linear(x, dense_weight).backward(grad_out)
        dense_weight.grad = x.grad = None

    functions = {"dense": dense}
    for name, spec in SPECS.items():
        scores = hard_scores if spec.mask_type == "hard" else soft_scores

        def masked(spec=spec, scores=scores):
            masked_linear(x, weight, scores, None, spec).backward(grad_out)
            scores.grad = x.grad = None

        functions[name] = masked

    # The hard mask with its threshold selected beforehand: what a forward costs while the scores have not changed
    # since the last selection (MFTLayer.hard_threshold): the forward recomputed under gradient checkpointing, and
    # every forward of generate.
    reused = hard_mask_threshold(hard_scores, SPECS["mft-hard"].sparsity)

    def masked_reused():
        masked_linear(x, weight, hard_scores, None, SPECS["mft-hard"], reused).backward(grad_out)
        hard_scores.grad = x.grad = None

    functions["mft-hard-reused"] = masked_reused
    return functions


def run(shapes, tokens: int, repeats: int, warmup: int, device: torch.device, dtype: torch.dtype,
        counts=None) -> dict:
    """Time every layer on every shape; `counts[i]` copies of shape i make one decoder layer (default: one each),
    whose total time per layer variant is reported as `decoder_layer`."""
    counts = list(counts or [1] * len(shapes))
    if len(counts) != len(shapes):
        raise ValueError(f"{len(counts)} counts for {len(shapes)} shapes; give one count per shape.")
    rows = []
    for out_features, in_features in shapes:
        functions = layer_functions(out_features, in_features, tokens, device, dtype)
        times = time_interleaved(functions, repeats, warmup, device)
        dense = summarize(times["dense"])["median"]
        for name, seconds in times.items():
            stats = summarize(seconds)
            rows.append({"shape": f"{out_features}x{in_features}", "layer": name, **stats,
                         "ratio_to_dense": stats["median"] / dense})
    decoder_layer = {}
    for name in ("dense", *SPECS, "mft-hard-reused"):
        medians = [row["median"] for row in rows if row["layer"] == name]
        decoder_layer[name] = sum(count * median for count, median in zip(counts, medians))
    decoder_layer = {name: {"seconds": total, "ratio_to_dense": total / decoder_layer["dense"]}
                     for name, total in decoder_layer.items()}
    return {
        "benchmark": "masked_linear",
        "counts": counts,
        "decoder_layer": decoder_layer,
        "command": "python -m benchmarks.masked_linear " + " ".join(sys.argv[1:]),
        "tokens": tokens,
        "dtype": str(dtype).removeprefix("torch."),
        "machine": machine_description(device),
        "load_average": load_average(),
        "rows": rows,
    }


def markdown(result: dict) -> str:
    lines = [
        f"{result['tokens']} tokens, {result['dtype']}, {result['machine']['device_name']} "
        f"({result['machine']['torch_threads']} threads), load average {result['load_average']}",
        "",
        "| shape (out x in) | layer | median ms | IQR ms | x dense |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['shape']} | {row['layer']} | {row['median'] * 1e3:.2f} | {row['iqr'] * 1e3:.2f} | "
                     f"{row['ratio_to_dense']:.3f} |")
    mix = " + ".join(f"{count} x {shape}" for count, shape in zip(result["counts"], dict.fromkeys(
        row["shape"] for row in result["rows"])))
    for name, total in result["decoder_layer"].items():
        lines.append(f"| decoder layer ({mix}) | {name} | {total['seconds'] * 1e3:.2f} | | "
                     f"{total['ratio_to_dense']:.3f} |")
    return "\n".join(lines)


def analysis(shapes, tokens: int) -> str:
    """FLOPs of the three GEMMs against the bytes the mask's element-wise passes move, per shape (a Markdown table)."""
    lines = [
        f"{tokens} tokens. GEMMs: x W^T, g W, g^T x = 6 x tokens x out x in FLOPs, identical for dense and masked. "
        "Element-wise: bytes moved per step by the mask passes (float32), ours and a GEMM-fused lower bound.",
        "",
        "| shape (out x in) | GEMM GFLOP | mask FLOP / GEMM FLOP | mft MB | mft-ste MB | mft-hard MB "
        "| fused bound MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for out_features, in_features in shapes:
        weights = out_features * in_features
        gemm = 6 * tokens * weights
        # ~15 FLOPs per weight for the soft mask's forward and backward (two sigmoids, a handful of products)
        megabytes = [ELEMENTWISE_BYTES_PER_WEIGHT[name] * weights / 1e6 for name in ("mft", "mft-ste", "mft-hard")]
        lines.append(
            f"| {out_features}x{in_features} | {gemm / 1e9:.2f} | {15 * weights / gemm:.4f} | "
            + " | ".join(f"{mb:.0f}" for mb in megabytes)
            + f" | {FUSED_LOWER_BOUND_BYTES_PER_WEIGHT * weights / 1e6:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=[parse_shape(s) for s in DEFAULT_SHAPES],
                        help="OUTxIN weight shapes (default: SmolLM2-135M's projections)")
    parser.add_argument("--counts", nargs="+", type=int, default=None,
                        help="copies of each shape in one decoder layer (default: 2 2 2 1 for the default shapes, "
                             "else 1 each)")
    parser.add_argument("--tokens", type=int, default=1024, help="rows of x: batch size x sequence length")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per layer (interleaved)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="weight and activation dtype (scores stay float32)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.add_argument("--analysis", action="store_true", help="only print FLOPs and bytes moved per shape")
    args = parser.parse_args(argv)
    if args.json:
        check_report_files(parser, "--json", [args.json], "python -m benchmarks.masked_linear",
                           json_report_with("rows", benchmark="masked_linear"))
    if args.analysis:
        text = analysis(args.shapes, args.tokens)
        print(text)
        return {"analysis": text}
    if args.threads:
        torch.set_num_threads(args.threads)
    defaults = [parse_shape(s) for s in DEFAULT_SHAPES]
    counts = args.counts or (DEFAULT_COUNTS if args.shapes == defaults else None)
    result = run(args.shapes, args.tokens, args.repeats, args.warmup, torch.device(args.device),
                 getattr(torch, args.dtype), counts)
    print(markdown(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
