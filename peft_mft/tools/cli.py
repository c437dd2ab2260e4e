"""`peft-mft`: the command line for saved MFT adapters (analyse, compare, harden, merge, export).

Every command reads local folders only. Bad input (a missing folder, a folder that is not an MFT adapter, shapes that
do not fit) ends with exit code 2 and a one-line reason on stderr, as argparse does for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from decimal import Decimal, InvalidOperation
from typing import Optional, Sequence

from ..errors import MFTInputError
from .analysis import NEAR_ZERO_THRESHOLD, MaskAnalysis, MaskComparison, analyze_masks, compare_masks, format_share
from .output_file import check_output_files, png_metadata, png_written_by
from .report import PROJECTION_HEADER, method_line, projection_cells


EXIT_BAD_INPUT = 2


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


# ---- analyze ---------------------------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned first column, right-aligned others."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(str(cell).ljust(w) if i == 0 else str(cell).rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in [header, *rows]
    ]


def _text_histogram(analysis: MaskAnalysis, rows: int = 10, width: int = 40) -> list[str]:
    """The histogram merged into at most `rows` bins, one line each, bar length on a log scale."""
    counts, edges = analysis.histogram_counts, analysis.histogram_edges
    step = math.ceil(len(counts) / rows)
    starts = range(0, len(counts), step)
    merged = [(edges[i], edges[min(i + step, len(counts))], sum(counts[i : i + step])) for i in starts]
    top = math.log10(max(count for _, _, count in merged) + 1) or 1.0
    lines = [f"Histogram of M (entries per bin, bars on a log scale; --plot draws all {len(counts)} bins)"]
    for index, (left, right, count) in enumerate(merged):
        closing = "]" if index == len(merged) - 1 else ")"
        bar = "#" * math.ceil(width * math.log10(count + 1) / top)
        lines.append(f"  [{left:.3f}, {right:.3f}{closing} {count:>12,} {bar}")
    return lines


def format_analysis(analysis: MaskAnalysis, source: str) -> str:
    """The `peft-mft analyze` report: per projection type, per layer, histogram summary and suggested sparsity."""
    overall, threshold = analysis.overall, f"{analysis.near_zero_threshold:g}"
    lines = [
        f"MFT adapter {source}",
        f"  {method_line(analysis.config, markdown=False)}",
        f"  {len(analysis.modules)} masked modules, {overall.numel:,} masked weights; near zero means M < {threshold}",
        "",
    ]
    header = [f"M < {threshold}" if column == "near zero" else column for column in PROJECTION_HEADER]
    lines += _table(header, projection_cells(analysis))

    by_layer = analysis.by_layer()
    projections = list(dict.fromkeys(p for _, p in by_layer))
    layers = list(dict.fromkeys(layer for layer, _ in by_layer))
    grid = [
        ["-" if layer is None else str(layer)]
        + [format_share(by_layer[(layer, p)].near_zero_share) if (layer, p) in by_layer else "" for p in projections]
        for layer in layers
    ]
    lines += ["", f"Share with M < {threshold} per layer ('-': outside numbered layers)"]
    lines += _table(("layer", *projections), grid)

    lines += ["", f"Mask values: min {overall.minimum:.4g}, max {overall.maximum:.4g}", *_text_histogram(analysis)]
    suggested = analysis.suggested_sparsity()
    if analysis.config.mask_type == "soft":
        if suggested:
            levels = ", ".join(f"{format_share(level)} ({level:.3g})" for level in suggested)
            lines.append(f"Suggested H-MFT sparsity (near-zero share x 0.5, 1, 2): {levels}")
        else:
            lines.append(f"No mask is below {threshold}: no H-MFT sparsity to suggest (has the adapter been trained?)")
    return "\n".join(lines)


ANALYZE_COMMAND = "peft-mft analyze"


def _analyze(args) -> int:
    if args.plot:  # before the analysis, which reads every score
        check_output_files([args.plot], ANALYZE_COMMAND, png_written_by(ANALYZE_COMMAND), inputs=[args.adapter],
                           overwrite=args.overwrite)
    elif args.overwrite:
        raise MFTInputError("--overwrite applies to --plot only.")
    analysis = analyze_masks(args.adapter, near_zero_threshold=args.near_zero, bins=args.bins, progress=True)
    if args.json:
        print(json.dumps(analysis.to_dict(), indent=2))
    else:
        print(format_analysis(analysis, args.adapter))
    if args.plot:
        try:
            from .plots import save_mask_plots
        except ImportError as exc:
            raise MFTInputError(str(exc)) from exc
        save_mask_plots(analysis, args.plot, title=f"{args.adapter}: {method_line(analysis.config, markdown=False)}",
                        metadata=png_metadata(ANALYZE_COMMAND))
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


# ---- compare ---------------------------------------------------------------------------------------------------------


def format_comparison(comparison: MaskComparison, source_a: str, source_b: str) -> str:
    threshold = f"{comparison.near_zero_threshold:g}"
    rows = [
        (name, f"{a.numel:,}", f"{a.zeroed_a:,}", f"{a.zeroed_b:,}", f"{a.zeroed_both:,}")
        + (_number(a.jaccard), _number(a.correlation))
        for name, a in [*comparison.modules.items(), ("all", comparison.overall)]
    ]
    lines = [f"A = {source_a}", f"B = {source_b}", f"near zero means M < {threshold}", ""]
    lines += _table(("module", "weights", "zero in A", "zero in B", "in both", "Jaccard", "correlation"), rows)
    for label, names in (("A", comparison.only_in_a), ("B", comparison.only_in_b)):
        if names:
            lines.append(f"masked only in {label}: {', '.join(names)}")
    return "\n".join(lines)


def _number(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def _compare(args) -> int:
    comparison = compare_masks(args.adapter_a, args.adapter_b, near_zero_threshold=args.near_zero, progress=True)
    if args.json:
        print(json.dumps(comparison.to_dict(), indent=2))
    else:
        print(format_comparison(comparison, args.adapter_a, args.adapter_b))
    return 0


# ---- harden ----------------------------------------------------------------------------------------------------------


def _harden(args) -> int:
    from .harden import harden_adapter

    harden_adapter(args.adapter, args.sparsity, args.output, progress=True, overwrite=args.overwrite)
    zeroed = f"{format_share(args.sparsity)} of each matrix (sparsity {args.sparsity:g})"
    print(f"wrote {args.output}: hard masks zeroing {zeroed}")
    return 0


# ---- merge -----------------------------------------------------------------------------------------------------------


def _merge(args) -> int:
    from .merge import merge_to_folder

    merge_to_folder(args.base, args.adapter, args.output, dtype=args.dtype, overwrite=args.overwrite)
    print(f"wrote {args.output}: merged model (safetensors), loads with transformers alone")
    return 0


# ---- export ----------------------------------------------------------------------------------------------------------

# The short names for `peft_mft.tools.export.COMPACT_FORMATS`.
_FORMAT_ALIASES = {
    "fp16": "soft-fp16", "int8": "soft-int8", "sparse": "soft-sparse", "bits": "hard-bits", "indices": "hard-indices",
}


def _sparse_threshold(args) -> tuple[float, dict]:
    """`--min-change`, or the one `--max-drift` allows on the base model `--base` (and what was measured)."""
    if (args.min_change is None) == (args.max_drift is None):
        raise MFTInputError("--format sparse needs exactly one of --min-change X or --max-drift X (with --base).")
    if args.min_change is not None:
        return args.min_change, None
    if args.base is None:
        raise MFTInputError("--max-drift measures the drift on the base model: give its folder with --base.")
    if not args.max_drift > 0:
        raise MFTInputError(f"--max-drift must be > 0 (a largest |logit change|), got {args.max_drift}.")
    from ..adapter_files import load_adapter
    from .merge import load_base_model
    from .sparse_threshold import CALIBRATION_DESCRIPTION, choose_sparse_threshold, random_calibration_inputs

    model = load_adapter(load_base_model(args.base, "float32"), args.adapter)
    choice = choose_sparse_threshold(model, random_calibration_inputs(model), args.max_drift)
    drift = {"budget": args.max_drift, "measured": choice.drift, "calibration": CALIBRATION_DESCRIPTION}
    return choice.threshold, drift


def _export(args) -> int:
    from .export import export_compact_adapter

    fmt = _FORMAT_ALIASES.get(args.format, args.format)
    threshold, drift = _sparse_threshold(args) if fmt == "soft-sparse" else (None, None)
    if fmt != "soft-sparse" and (args.min_change is not None or args.max_drift is not None):
        raise MFTInputError(f"--min-change and --max-drift apply to --format sparse only, not {fmt}.")
    result = export_compact_adapter(args.adapter, args.output, fmt, overwrite=args.overwrite, threshold=threshold,
                                    drift=drift)
    print(
        f"wrote {args.output}: {result.format}, {result.layers} layers, {result.masked_weights:,} masked weights, "
        f"{result.bytes_on_disk:,} bytes ({result.bytes_on_disk / result.scores_bytes:.3g} x the float32 scores), "
        f"largest mask error {result.max_abs_mask_error:.3g}"
        + (f", threshold {threshold:.4g}" if threshold is not None else "")
        + (f", logit drift {drift['measured']:.3g} (budget {drift['budget']:g})" if drift else "")
        + "; load it with peft_mft.tools.export.load_compact_adapter"
    )
    return 0


# ---- entry point -----------------------------------------------------------------------------------------------------


def _add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty OUT that is not an earlier output of this command: same-named files are "
        "replaced, all others kept (without it such an OUT is refused; OUT may never be or hold an input)",
    )


def _version() -> str:
    from .. import __version__

    return __version__


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
    analyze.set_defaults(run=_analyze)

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
    compare.set_defaults(run=_compare)

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
    harden.set_defaults(run=_harden)

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
    merge.set_defaults(run=_merge)

    from .export import COMPACT_FORMATS
    from .sparse_threshold import CALIBRATION_DESCRIPTION

    export = commands.add_parser(
        "export",
        help="write a compact inference-only adapter",
        description="Write the adapter's masks in a compact format for inference (peft_mft.tools.export): soft masks as "
        "float16 deviations, per-row uint8 or only those that moved (sparse), hard masks bit-packed or as zeroed "
        "indices. Training resumes only from "
        "the float32 adapter.",
    )
    export.add_argument("adapter", metavar="ADAPTER", help="MFT adapter folder (float32 scores)")
    export.add_argument(
        "--format",
        required=True,
        choices=[*COMPACT_FORMATS, *_FORMAT_ALIASES],
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
    export.set_defaults(run=_export)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run `peft-mft`; returns the exit code: 0, or 2 on bad input (`MFTInputError`, argparse) with a one-line reason
    on stderr. Any other exception propagates (a traceback and exit code 1): it is a bug, not bad input."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except MFTInputError as exc:  # documented bad input; anything else is a bug and shows its traceback (exit 1)
        reason = " ".join(str(exc).split())
        print(f"peft-mft {args.command}: error: {reason}", file=sys.stderr)
        return EXIT_BAD_INPUT
