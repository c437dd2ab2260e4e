# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Compact export of trained MFT adapters for inference, and loading them back.

A trained adapter stores float32 scores: 4 bytes per masked weight. For inference only the mask matters, and it
packs much smaller:

- `soft-fp16` (soft masks): `M - M_init` as float16, 2 bytes per masked weight; the loaded mask is within the stated
  `max_abs_mask_error` (about 2^-11 of the deviation).
- `soft-int8` (soft): `M` quantized to uint8 with a float32 minimum and step per row, 1 byte; within half a step of
  each row.
- `hard-bits` (hard): keep / zero, bit-packed, 1 bit; exact.
- `hard-indices` (hard): the zeroed entries' columns (uint16 where `in_features` <= 65536) + a count per row; exact.
- `soft-sparse` (soft): the masks with `|M - M_init| > threshold` as column + float16 `M - M_init`, 4 bytes each;
  those kept load as in `soft-fp16`, the rest as `M_init`.

`M_init` is the mask of a fresh adapter (1 with the default normalised soft mask), so float16 spends its precision on
how far training moved the mask. `hard-indices` is smaller than `hard-bits` when fewer than about 1 in 16 weights is
zeroed (H-MFT zeroes well under 1%). `soft-sparse` stores the soft masks training moved: its `threshold` is given, or
found for a logit-drift budget on a calibration batch (`peft_mft.tools.sparse_threshold`); both, the share kept and
the measured drift go into `mft_compact.json` and the folder's README.

**Compact adapters are for inference and merging. Training resumes only from the full float32 scores**: a compact
folder keeps the mask, not the scores behind it (a hard mask loses every magnitude, a quantized soft mask its fine
values), and not the optimizer state. Keep the `save_pretrained` folder to go on training.

Folder layout: `adapter_config.json` (the unchanged `MFTConfig`), `mft_compact.json` (format, version, per-layer
shapes and the measured mask error) and `mft_compact.safetensors` (the packed masks; other saved tensors such as
`modules_to_save` are copied unchanged). `PeftModel.from_pretrained` does not read this folder (it has no
`adapter_model.safetensors`, and it refuses the folder naming `load_compact_adapter`);
`load_compact_adapter(base_model, folder)` does, and returns an ordinary MFT `PeftModel` whose float32 scores reproduce
the stored masks, so forward, `merge_and_unload()` and `generate` work as usual.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from peft import PeftModel
from peft.utils import set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..adapter_files import AdapterFolder, check_declared_keys
from ..atomic import PathLike
from ..config import MFTConfig
from ..errors import AdapterFileError, MFTInputError
from ..mask import MaskSpec, num_zeroed
from ..weight_files import COMPACT_MARKER_NAME, SCORES_SUFFIX, check_safetensors_file
from .output_folder import check_output_folder, command_output


COMPACT_FORMATS = {
    "soft-fp16": "soft", "soft-int8": "soft", "soft-sparse": "soft", "hard-bits": "hard", "hard-indices": "hard",
}
COMPACT_META_NAME = COMPACT_MARKER_NAME
COMPACT_WEIGHTS_NAME = "mft_compact.safetensors"
COMPACT_FORMAT_VERSION = 1
# Scores that reproduce a soft mask are T * logit(M * normalizer); the logit is clipped where M * normalizer rounds to
# 0 or 1. sigmoid(+-40) is 1.0 and 4e-18 in float32, the same masks to within float32 rounding.
_LOGIT_LIMIT = 40.0
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


@dataclass
class CompactExport:
    """What `export_compact_adapter` wrote.

    `max_abs_mask_error`: the largest `|M_loaded - M|` over all masked weights, measured by decoding the written
    masks (0.0 for hard formats). `bytes_on_disk`: size of `mft_compact.safetensors`; `scores_bytes`: size of the
    float32 scores it came from.
    """

    folder: str
    format: str
    layers: int
    masked_weights: int
    bytes_on_disk: int
    scores_bytes: int
    max_abs_mask_error: float


# ---- packing ----------------------------------------------------------------------------------------------------


def pack_bits(keep: torch.Tensor) -> torch.Tensor:
    """Bool tensor -> uint8 tensor of `ceil(numel / 8)` bytes, row-major, most significant bit first."""
    flat = keep.flatten().to(torch.uint8)
    padded = torch.zeros(math.ceil(flat.numel() / 8) * 8, dtype=torch.uint8)
    padded[: flat.numel()] = flat
    return (padded.view(-1, 8) * _BIT_WEIGHTS).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of `pack_bits`: uint8 bytes -> bool tensor of `shape`."""
    bits = (packed.unsqueeze(1) & _BIT_WEIGHTS).ne(0).flatten()
    return bits[: math.prod(shape)].view(shape)


def _column_dtype(in_features: int) -> torch.dtype:
    return torch.uint16 if in_features <= 65536 else torch.int32


def _rows_of(per_row: torch.Tensor) -> torch.Tensor:
    """Row index of each stored entry, from the count of entries per row (row-major order)."""
    return torch.repeat_interleave(torch.arange(per_row.numel()), per_row.long())


def sparse_keep(mask: torch.Tensor, mask_init: float, threshold: float) -> torch.Tensor:
    """The masks `soft-sparse` stores: those that moved more than `threshold` from the initial mask (bool, out x
    in)."""
    return (mask - mask_init).abs() > threshold


def encode_mask(
    mask: torch.Tensor, spec: MaskSpec, mask_init: float, fmt: str, prefix: str, threshold: float = 0.0
) -> dict[str, torch.Tensor]:
    """Tensors that store `mask` (float32, out x in) in format `fmt`, named `prefix + suffix`."""
    if fmt == "soft-fp16":
        return {prefix + ".mask_delta_fp16": (mask - mask_init).to(torch.float16)}
    if fmt == "soft-sparse":
        keep = sparse_keep(mask, mask_init, threshold)
        return {prefix + ".kept_per_row": keep.sum(1, dtype=torch.int32),
                prefix + ".kept_columns": keep.nonzero()[:, 1].to(_column_dtype(mask.shape[1])),
                prefix + ".kept_delta_fp16": (mask - mask_init)[keep].to(torch.float16)}
    if fmt == "soft-int8":
        row_min = mask.amin(1)
        step = (mask.amax(1) - row_min) / 255
        step = torch.where(step > 0, step, torch.ones_like(step))
        codes = ((mask - row_min[:, None]) / step[:, None]).round_().clamp_(0, 255).to(torch.uint8)
        return {prefix + ".mask_uint8": codes, prefix + ".row_min": row_min, prefix + ".row_step": step}
    keep = mask.bool()
    if fmt == "hard-bits":
        return {prefix + ".keep_bits": pack_bits(keep)}
    zeroed = ~keep
    columns = zeroed.nonzero()[:, 1]  # row-major order
    return {prefix + ".zeroed_per_row": zeroed.sum(1, dtype=torch.int32),
            prefix + ".zeroed_columns": columns.to(_column_dtype(mask.shape[1]))}


def decode_mask(tensors: dict[str, torch.Tensor], mask_init: float, fmt: str, prefix: str, shape) -> torch.Tensor:
    """The float32 mask stored under `prefix` in format `fmt`."""
    if fmt == "soft-fp16":
        return tensors[prefix + ".mask_delta_fp16"].float() + mask_init
    if fmt == "soft-int8":
        codes = tensors[prefix + ".mask_uint8"].float()
        return tensors[prefix + ".row_min"][:, None] + codes * tensors[prefix + ".row_step"][:, None]
    if fmt == "hard-bits":
        return unpack_bits(tensors[prefix + ".keep_bits"], shape).float()
    if fmt == "soft-sparse":
        mask = torch.full(shape, mask_init, dtype=torch.float32)
        rows, columns = _rows_of(tensors[prefix + ".kept_per_row"]), tensors[prefix + ".kept_columns"].long()
        mask[rows, columns] = tensors[prefix + ".kept_delta_fp16"].float() + mask_init
        return mask
    mask = torch.ones(shape, dtype=torch.float32)
    mask[_rows_of(tensors[prefix + ".zeroed_per_row"]), tensors[prefix + ".zeroed_columns"].long()] = 0.0
    return mask


# The tensors each format stores per layer: suffix -> (allowed dtypes, length: "rows", "matrix", "bytes" or "entries").
_LAYER_TENSORS = {
    "soft-fp16": {".mask_delta_fp16": ((torch.float16,), "matrix")},
    "soft-int8": {".mask_uint8": ((torch.uint8,), "matrix"), ".row_min": ((torch.float32,), "rows"),
                  ".row_step": ((torch.float32,), "rows")},
    "soft-sparse": {".kept_per_row": ((torch.int32,), "rows"),
                    ".kept_columns": ((torch.uint16, torch.int32), "entries"),
                    ".kept_delta_fp16": ((torch.float16,), "entries")},
    "hard-bits": {".keep_bits": ((torch.uint8,), "bytes")},
    "hard-indices": {".zeroed_per_row": ((torch.int32,), "rows"),
                     ".zeroed_columns": ((torch.uint16, torch.int32), "entries")},
}


def check_layer_tensors(tensors: dict[str, torch.Tensor], fmt: str, prefix: str, shape, where: str) -> None:
    """`AdapterFileError` naming `where` (the file) and layer `prefix` unless its stored tensors are what format
    `fmt` writes for a (out, in) = `shape` matrix: every tensor present with its dtype and length, counts per row
    non-negative and summing to the entries stored, columns in [0, in) and strictly increasing within each row, float
    values finite."""
    def bad(problem: str) -> AdapterFileError:
        return AdapterFileError(f"{where}: layer {prefix!r} ({fmt}, shape {tuple(shape)}): {problem}; the file was "
                                "not written by `peft-mft export` or was changed since. Export the adapter again.")

    rows, columns_total = shape
    per_row_key = next((prefix + s for s in (".kept_per_row", ".zeroed_per_row") if s in _LAYER_TENSORS[fmt]), None)
    entries = None
    if per_row_key is not None and per_row_key in tensors:
        per_row = tensors[per_row_key]
        if per_row.dtype == torch.int32 and per_row.shape == (rows,):
            if (per_row < 0).any() or (per_row > columns_total).any():
                raise bad(f"{per_row_key} holds counts outside [0, {columns_total}]")
            entries = int(per_row.sum())
    lengths = {"rows": (rows,), "matrix": (rows, columns_total), "bytes": (math.ceil(rows * columns_total / 8),),
               "entries": (entries,)}
    for suffix, (dtypes, length) in _LAYER_TENSORS[fmt].items():
        key = prefix + suffix
        if key not in tensors:
            raise bad(f"tensor {key!r} is missing")
        tensor = tensors[key]
        if tensor.dtype not in dtypes:
            raise bad(f"{key} is {tensor.dtype}, expected {' or '.join(str(d) for d in dtypes)}")
        if tuple(tensor.shape) != lengths[length]:
            expected = f"{entries} (the sum of {per_row_key})" if length == "entries" else lengths[length]
            raise bad(f"{key} has shape {tuple(tensor.shape)}, expected {expected}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise bad(f"{key} holds NaN or inf")
    if per_row_key is not None:
        columns = tensors[per_row_key.replace("_per_row", "_columns")].long()
        if ((columns < 0) | (columns >= columns_total)).any():
            raise bad(f"a stored column is outside [0, {columns_total})")
        row_of = _rows_of(tensors[per_row_key])
        same_row = row_of[1:] == row_of[:-1]
        if (same_row & (columns[1:] <= columns[:-1])).any():
            raise bad("columns within a row repeat or are out of order")
    if fmt == "soft-int8" and ((tensors[prefix + ".row_min"] < 0).any() or (tensors[prefix + ".row_step"] <= 0).any()):
        raise bad("a row minimum is negative or a row step is not positive (soft masks are >= 0)")


def scores_for_mask(mask: torch.Tensor, spec: MaskSpec) -> torch.Tensor:
    """Float32 scores whose mask under `spec` is `mask` (out x in).

    Hard: 1.0 where kept, 0.0 where zeroed; exact when the number of zeros is `floor(sparsity * numel)`, because the
    k smallest |S| are then exactly the zeros. Soft: the trained tensor P of `S = T * logit(M * normalizer)`, the logit
    clipped where the sigmoid saturates; the mask comes back to within float32 rounding.
    """
    if spec.mask_type == "hard":
        return (mask != 0).to(torch.float32)
    probability = (mask.double() * spec.normalizer).clamp_(0.0, 1.0)
    scores = torch.logit(probability).clamp_(-_LOGIT_LIMIT, _LOGIT_LIMIT) * spec.temperature
    return ((scores - spec.score_offset) / spec.score_scale).float()


# ---- export and load --------------------------------------------------------------------------------------------


def initial_mask(config: MFTConfig, spec: MaskSpec) -> float:
    """The soft mask of a fresh adapter (1.0 when normalised), the reference `soft-fp16` stores deviations from."""
    if spec.mask_type != "soft":
        return 1.0
    return float(spec.mask(torch.tensor([config.initial_trained_score], dtype=torch.float32))[0])


def export_compact_adapter(
    adapter_folder: PathLike, output_folder: PathLike, fmt: str, overwrite: bool = False,
    threshold: Optional[float] = None, drift: Optional[dict] = None,
) -> CompactExport:
    """Write the adapter saved in `adapter_folder` (float32 scores, by `save_pretrained`) as a compact folder.

    `fmt`: one of `COMPACT_FORMATS` ("soft-fp16", "soft-int8" for soft masks; "hard-bits", "hard-indices" for hard
    masks; "soft-sparse" also needs `threshold`, the distance from the initial mask below which a mask is stored as
    exactly initial). The masks are decoded again before returning, and the largest error is stored in
    `mft_compact.json`, with `threshold`, the share of masks kept and `drift` (what `choose_sparse_threshold`
    measured: budget, drift, calibration) for "soft-sparse".
    Does not modify `adapter_folder`; `output_folder` follows the rule of `peft_mft.tools.output_folder` (never an
    input, never a non-empty folder of something else unless `overwrite`). Inference only: training resumes only from
    the float32 scores.
    """
    if fmt not in COMPACT_FORMATS:
        raise MFTInputError(f"Unknown compact format {fmt!r}; choose one of {sorted(COMPACT_FORMATS)}.")
    source, output = Path(adapter_folder), Path(output_folder)
    checked = check_output_folder(output, [source], "export", overwrite)  # before reading the scores
    adapter = AdapterFolder.open(source)
    config = adapter.config
    if COMPACT_FORMATS[fmt] != config.mask_type:
        usable = sorted(name for name, kind in COMPACT_FORMATS.items() if kind == config.mask_type)
        raise MFTInputError(f"Format {fmt!r} stores {COMPACT_FORMATS[fmt]} masks, but {source} holds a "
                         f"{config.mask_type} adapter; use one of {usable}.")
    valid_threshold = isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0
    if fmt == "soft-sparse" and not valid_threshold:
        raise MFTInputError(f"Format 'soft-sparse' needs a threshold >= 0 (how far from the initial mask a mask must "
                            f"have moved to be stored), got {threshold!r}.")
    spec = config.mask_spec(torch.device("cpu"))
    mask_init = initial_mask(config, spec)
    packed, layers, masked_weights, scores_bytes, max_error, kept = {}, {}, 0, 0, 0.0, 0
    score_keys = {key: module for module, key in adapter.score_keys.items()}
    for key in adapter.keys:
        if key not in score_keys:
            packed[key] = adapter.read(key)  # modules_to_save
            continue
        tensor = adapter.read_scores(score_keys[key])  # 2-D, its dtype, finite: checked before anything is written
        prefix = key[: -len(SCORES_SUFFIX)]
        mask = spec.mask(tensor.float())
        encoded = encode_mask(mask, spec, mask_init, fmt, prefix, threshold or 0.0)
        decoded = decode_mask(encoded, mask_init, fmt, prefix, tuple(tensor.shape))
        loaded_mask = spec.mask(scores_for_mask(decoded, spec))
        max_error = max(max_error, float((loaded_mask - mask).abs().max()))
        if fmt == "soft-sparse":
            kept += int(encoded[prefix + ".kept_columns"].numel())
        packed.update(encoded)
        layers[prefix] = list(tensor.shape)
        masked_weights += tensor.numel()
        scores_bytes += tensor.numel() * tensor.element_size()
    if not layers:
        raise MFTInputError(f"{adapter.weights} holds no '*{SCORES_SUFFIX}' tensors: not an MFT adapter.")
    meta = {
        "format": fmt,
        "format_version": COMPACT_FORMAT_VERSION,
        "mask_type": config.mask_type,
        "layers": layers,
        "max_abs_mask_error": max_error,
        "note": "Inference only: training resumes only from the float32 scores written by save_pretrained.",
    }
    if fmt == "soft-sparse":
        meta.update(threshold=threshold, kept_share=kept / masked_weights, drift=drift)
    with command_output(output, [source], "export", overwrite, checked) as staging:  # a crash leaves the folder intact
        config.save_pretrained(str(staging))
        save_file({k: v.contiguous() for k, v in packed.items()}, str(staging / COMPACT_WEIGHTS_NAME))
        (staging / COMPACT_META_NAME).write_text(json.dumps(meta, indent=1))
        (staging / "README.md").write_text(compact_card(meta, (staging / COMPACT_WEIGHTS_NAME).stat().st_size,
                                                        scores_bytes))
    return CompactExport(str(output), fmt, len(layers), masked_weights, (output / COMPACT_WEIGHTS_NAME).stat().st_size,
                         scores_bytes, max_error)


def compact_card(meta: dict, bytes_on_disk: int, scores_bytes: int) -> str:
    """The README of a compact folder: what it stores, its size and error, and how to load it."""
    lines = [
        "---", "library_name: peft", "tags: [mft, mask-fine-tuning]", "---", "",
        f"# Compact MFT adapter ({meta['format']})", "",
        f"Masks of {len(meta['layers'])} layers in `{COMPACT_WEIGHTS_NAME}`: {bytes_on_disk:,} bytes, "
        f"{bytes_on_disk / scores_bytes:.3g} x the float32 scores. Largest mask error: "
        f"{meta['max_abs_mask_error']:.3g}.",
    ]
    if meta["format"] == "soft-sparse":
        lines.append(f"Stored: the masks that moved more than {meta['threshold']:.4g} from the initial mask "
                     f"({100 * meta['kept_share']:.3g}% of them); every other mask is exactly the initial one.")
        if meta.get("drift"):
            d = meta["drift"]
            lines.append(f"Threshold chosen for a logit-drift budget of {d['budget']:.3g}: largest |logit change| "
                         f"{d['measured']:.3g} on {d['calibration']}.")
    lines += ["", meta["note"], "", "```python", "import peft_mft",
              "from peft_mft.tools.export import load_compact_adapter",
              "model = load_compact_adapter(base_model, \".\")  # a PeftModel: forward, generate, merge_and_unload()",
              "```", ""]
    return "\n".join(lines)


def read_compact_masks(folder: PathLike) -> tuple[MFTConfig, dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Decode a compact folder: (config, metadata, {layer key: float32 mask}, {other key: tensor})."""
    folder = Path(folder)
    meta_path = folder / COMPACT_META_NAME
    if not meta_path.is_file():
        raise AdapterFileError(f"{folder} has no {COMPACT_META_NAME}: not a compact MFT adapter (a float32 adapter "
                               "folder loads with PeftModel.from_pretrained).")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterFileError(f"{meta_path} is not valid JSON: {exc}.") from exc
    fmt = meta.get("format") if isinstance(meta, dict) else None
    known = isinstance(meta, dict) and meta.get("format_version") == COMPACT_FORMAT_VERSION
    if not known or fmt not in COMPACT_FORMATS:
        raise MFTInputError(f"{meta_path}: format {fmt!r} version {meta.get('format_version')!r} is not one this "
                         f"peft_mft reads ({sorted(COMPACT_FORMATS)}, version {COMPACT_FORMAT_VERSION}).")
    layers = meta.get("layers")
    if not isinstance(layers, dict) or not layers or not all(
        isinstance(shape, list) and len(shape) == 2 and all(type(n) is int and n > 0 for n in shape)
        for shape in layers.values()
    ):
        raise AdapterFileError(f"{meta_path}: 'layers' must map each layer to its [out_features, in_features], got "
                               f"{str(layers)[:120]}.")
    config = MFTConfig.read_local(str(folder))  # from_pretrained's checks refuse a compact folder to PEFT's loader
    spec = config.mask_spec(torch.device("cpu"))
    weights = folder / COMPACT_WEIGHTS_NAME
    check_safetensors_file(weights)
    with safe_open(str(weights), framework="pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    mask_init = initial_mask(config, spec)
    masks = {}
    for prefix, shape in layers.items():
        check_layer_tensors(tensors, fmt, prefix, shape, str(weights))
        mask = decode_mask(tensors, mask_init, fmt, prefix, tuple(shape))
        if spec.mask_type == "hard" and int((mask == 0).sum()) != num_zeroed(mask.numel(), spec.sparsity):
            raise MFTInputError(
                f"{folder / COMPACT_WEIGHTS_NAME}: layer {prefix!r} has {int((mask == 0).sum())} zeroed entries, but "
                f"sparsity {spec.sparsity} of {mask.numel()} zeroes {num_zeroed(mask.numel(), spec.sparsity)}."
            )
        masks[prefix] = mask
    others = {k: v for k, v in tensors.items() if not any(k.startswith(p + ".") for p in layers)}
    check_declared_keys(weights, config, list(others))
    return config, meta, masks, others


def load_compact_adapter(base_model: nn.Module, folder: PathLike, adapter_name: str = "default") -> PeftModel:
    """Load a compact folder onto `base_model` (mutated, as with `PeftModel.from_pretrained`) for inference.

    Returns an ordinary MFT `PeftModel` in eval mode with frozen scores that reproduce the stored masks: exactly for
    hard formats, to within `mft_compact.json`'s `max_abs_mask_error` for soft ones. To train further, load the float32
    scores instead; a compact folder does not hold them.
    """
    config, _, masks, others = read_compact_masks(folder)
    config.inference_mode = True
    spec = config.mask_spec(torch.device("cpu"))
    state = {prefix + SCORES_SUFFIX: scores_for_mask(mask, spec) for prefix, mask in masks.items()}
    state.update(others)
    model = PeftModel(base_model, config, adapter_name=adapter_name)
    result = set_peft_model_state_dict(model, state, adapter_name=adapter_name)
    missing = [key for key in result.missing_keys if "mft_scores" in key]
    if missing or result.unexpected_keys:
        raise MFTInputError(f"{folder} does not fit this base model: missing masks for {missing[:4]}, unexpected "
                         f"{list(result.unexpected_keys)[:4]} (was it exported from an adapter of another model?).")
    model.eval()
    return model
