# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""What each `peft-mft` command does (`run_<command>(args)`); the parser and entry point are `peft_mft_cli`, which
imports this module only once the arguments are parsed.

Every command reads local folders only; bad input raises `MFTInputError`, which the entry point turns into exit code
2 and a one-line reason on stderr.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Sequence

from ..errors import MFTInputError
from .analysis import MaskAnalysis, MaskComparison, analyze_masks, compare_masks, format_share
from .output_file import check_output_files, png_metadata, png_written_by
from .report import PROJECTION_HEADER, method_line, projection_cells


# ---- analyze --------------------------------------------------------------------------------------------------------


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


def run_analyze(args) -> int:
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


# ---- compare --------------------------------------------------------------------------------------------------------


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


def run_compare(args) -> int:
    comparison = compare_masks(args.adapter_a, args.adapter_b, near_zero_threshold=args.near_zero, progress=True)
    if args.json:
        print(json.dumps(comparison.to_dict(), indent=2))
    else:
        print(format_comparison(comparison, args.adapter_a, args.adapter_b))
    return 0


# ---- harden ---------------------------------------------------------------------------------------------------------


def run_harden(args) -> int:
    from .harden import harden_adapter

    harden_adapter(args.adapter, args.sparsity, args.output, progress=True, overwrite=args.overwrite)
    zeroed = f"{format_share(args.sparsity)} of each matrix (sparsity {args.sparsity:g})"
    print(f"wrote {args.output}: hard masks zeroing {zeroed}")
    return 0


# ---- merge ----------------------------------------------------------------------------------------------------------


def run_merge(args) -> int:
    from .merge import merge_to_folder

    merge_to_folder(args.base, args.adapter, args.output, dtype=args.dtype, overwrite=args.overwrite)
    print(f"wrote {args.output}: merged model (safetensors), loads with transformers alone")
    return 0


# ---- export ---------------------------------------------------------------------------------------------------------

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


def run_export(args) -> int:
    from .export import export_compact_adapter

    fmt = args.format
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


def run_card(args) -> int:
    from ..adapter_files import read_adapter_config
    from .model_card import write_model_card

    read_adapter_config(args.adapter)  # a missing or non-MFT folder is bad input, named
    path = write_model_card(args.adapter)
    if path is None:
        raise MFTInputError(
            f"{args.adapter} holds no adapter weights to describe (adapter_model.safetensors or .bin)."
        )
    print(f"wrote {path}")
    return 0
