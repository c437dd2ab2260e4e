# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""`peft-mft`: the command line for saved MFT adapters (analyze, compare, harden, merge, export, card).

This module holds the parser and imports nothing heavy, so `--help`, `--version` and bad arguments answer at once;
each command's work (`peft_mft.tools.cli.run_<command>`) imports torch and PEFT only once the arguments are parsed.
Every command reads local folders only. Bad input (a missing folder, a folder that is not an MFT adapter, shapes that
do not fit) ends with exit code 2 and a one-line reason on stderr, as argparse does for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from decimal import Decimal, InvalidOperation
from typing import Optional, Sequence


EXIT_BAD_INPUT = 2
# Shown in the help; the library's own values (peft_mft.tools.analysis.NEAR_ZERO_THRESHOLD,
# peft_mft.tools.export.COMPACT_FORMATS, peft_mft.tools.sparse_threshold.CALIBRATION_DESCRIPTION) are checked
# against these in the tests, as importing them here would import torch.
NEAR_ZERO_THRESHOLD = 0.1
COMPACT_FORMATS = ("soft-fp16", "soft-int8", "soft-sparse", "hard-bits", "hard-indices")
FORMAT_ALIASES = {
    "fp16": "soft-fp16", "int8": "soft-int8", "sparse": "soft-sparse", "bits": "hard-bits", "indices": "hard-indices",
}
CALIBRATION_DESCRIPTION = "4 x 64 random token ids (seed 0, text only)"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("peft-mft")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "0+unknown"


def _fraction(text: str) -> float:
    """'0.0005' or '0.05%' -> 0.0005; the percentage is divided in decimal, so '0.7%' is 0.007 exactly as written
    (float division gives 0.006999999999999999)."""
    try:
        value = Decimal(text[:-1]) / 100 if text.endswith("%") else Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"expected a fraction (0.0005) or a percentage (0.05%), got {text!r}")
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"expected a finite fraction, got {text!r}")
    return float(value)


def _sparsity(text: str) -> float:
    """`_fraction`, in [0, 1); a number >= 1 written without '%' gets the hint that it may be a percentage."""
    value = _fraction(text)
    if not 0 <= value < 1:
        hint = f"; did you mean {text}%?" if value >= 1 and not text.endswith("%") else ""
        raise argparse.ArgumentTypeError(f"the fraction zeroed must be in [0, 1), got {text}{hint}")
    return value


def _add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty OUT that is not an earlier output of this command: same-named files are "
        "replaced, all others kept (without it such an OUT is refused; OUT may never be or hold an input)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peft-mft",
        description="Inspect and ship Mask Fine-Tuning (MFT) adapters saved with PeftModel.save_pretrained.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    analyze = commands.add_parser(
        "analyze",
        help="mask statistics of an adapter",
        description="Mask statistics per projection type and layer, histogram and suggested H-MFT sparsity of a saved "
        "MFT adapter (no base model needed).",
    )
    analyze.add_argument("adapter", metavar="ADAPTER", help="adapter folder")
    analyze.add_argument("--plot", metavar="OUT.png", help="also write the three plots to this PNG (needs matplotlib)")
    analyze.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing OUT.png that is not an earlier plot of this command (without it such a file is "
        "refused; a file of the adapter folder never is replaced)",
    )
    analyze.add_argument("--json", action="store_true", help="print the statistics as JSON instead of a table")
    analyze.add_argument(
        "--near-zero", type=float, default=NEAR_ZERO_THRESHOLD, metavar="X",
        help="a mask counts as near zero (switched off) when M < X (default: %(default)s)",
    )
    analyze.add_argument("--bins", type=int, default=50, help="histogram bins (default: %(default)s)")
    analyze.set_defaults(run="run_analyze")

    compare = commands.add_parser(
        "compare",
        help="compare the masks of two adapters",
        description="Overlap of the near-zero sets (Jaccard) and correlation of the masks of two adapters of the same "
        "base model (two tasks, two seeds).",
    )
    compare.add_argument("adapter_a", metavar="ADAPTER_A", help="first adapter folder")
    compare.add_argument("adapter_b", metavar="ADAPTER_B", help="second adapter folder, of the same base model")
    compare.add_argument("--json", action="store_true", help="print the comparison as JSON instead of a table")
    compare.add_argument("--near-zero", type=float, default=NEAR_ZERO_THRESHOLD, metavar="X",
                         help="a mask counts as near zero when M < X (default: %(default)s)")
    compare.set_defaults(run="run_compare")

    harden = commands.add_parser(
        "harden",
        help="turn a soft-mask adapter into a hard-mask one",
        description="Write an H-MFT adapter that zeroes, in each weight matrix, the fraction X of entries with the "
        "smallest soft mask.",
    )
    harden.add_argument("adapter", metavar="ADAPTER", help="soft-mask (S-MFT) adapter folder")
    harden.add_argument(
        "--sparsity", type=_sparsity, required=True, metavar="X",
        help="fraction zeroed per matrix, in [0, 1): 0.0005 or 0.05%%",
    )
    harden.add_argument("output", metavar="OUT", help="new adapter folder (see --overwrite)")
    _add_overwrite_argument(harden)
    harden.set_defaults(run="run_harden")

    merge = commands.add_parser(
        "merge",
        help="write a plain merged model",
        description="Apply an MFT adapter to its base model and write the merged model (safetensors) with the base's "
        "tokenizer files, ready for inference or upload.",
    )
    merge.add_argument("adapter", metavar="ADAPTER", help="MFT adapter folder")
    merge.add_argument("--base", required=True, metavar="BASE", help="base model folder (written by save_pretrained)")
    merge.add_argument("output", metavar="OUT", help="output folder (see --overwrite)")
    _add_overwrite_argument(merge)
    merge.add_argument(
        "--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto", help="dtype to load and save in"
    )
    merge.set_defaults(run="run_merge")

    export = commands.add_parser(
        "export",
        help="write a compact inference-only adapter",
        description="Write the adapter's masks in a compact format for inference (peft_mft.tools.export): soft masks "
        "as float16 deviations, per-row uint8 or only those that moved (sparse), hard masks bit-packed or as zeroed "
        "indices. Training resumes only from the float32 adapter.",
    )
    export.add_argument("adapter", metavar="ADAPTER", help="MFT adapter folder (float32 scores)")
    export.add_argument(
        "--format",
        required=True,
        choices=[*COMPACT_FORMATS, *FORMAT_ALIASES],
        help="compact format; fp16, int8, sparse, bits and indices are short for soft-fp16, soft-int8, soft-sparse, "
        "hard-bits, hard-indices",
    )
    export.add_argument("--min-change", type=float, default=None, metavar="X",
                        help="sparse: store only masks that moved more than X from the initial mask")
    export.add_argument("--max-drift", type=float, default=None,
                        help="sparse: the largest threshold whose largest |logit change| on a calibration batch of "
                        f"{CALIBRATION_DESCRIPTION} stays within this (needs --base)")
    export.add_argument("--base", default=None, metavar="BASE",
                        help="sparse with --max-drift: the base model folder (written by save_pretrained)")
    export.add_argument("output", metavar="OUT", help="output folder (see --overwrite)")
    _add_overwrite_argument(export)
    export.set_defaults(run="run_export")

    card = commands.add_parser(
        "card",
        help="write the MFT section of an adapter's model card",
        description="Add the MFT section (method, masked modules, mask statistics, loading code) to README.md of an "
        "adapter folder written by save_pretrained, and of each adapter subfolder; PEFT's own card is kept.",
    )
    card.add_argument("adapter", metavar="ADAPTER", help="adapter folder")
    card.set_defaults(run="run_card")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run `peft-mft`; returns the exit code: 0, or 2 on bad input (`MFTInputError`, argparse) with a one-line reason
    on stderr. Any other exception propagates (a traceback and exit code 1): it is a bug, not bad input."""
    args = build_parser().parse_args(argv)
    if getattr(args, "format", None) in FORMAT_ALIASES:
        args.format = FORMAT_ALIASES[args.format]
    from peft_mft.errors import MFTInputError  # the heavy imports start here, after --help and bad arguments
    from peft_mft.tools import cli

    try:
        return getattr(cli, args.run)(args)
    except MFTInputError as exc:  # documented bad input; anything else is a bug and shows its traceback (exit 1)
        reason = " ".join(str(exc).split())
        print(f"peft-mft {args.command}: error: {reason}", file=sys.stderr)
        return EXIT_BAD_INPUT
