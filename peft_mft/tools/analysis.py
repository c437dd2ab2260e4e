# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Mask analysis: which connections an MFT adapter switched off, from a model or from a saved adapter folder.

Masks come from the adapter's own maths (`MaskSpec.mask`): from a model, each layer's `mft_mask_spec`; from a folder,
the spec `MFTConfig.mask_spec()` rebuilds from `adapter_config.json` (no base model needed). Everything is computed
one module at a time, so analysing a large adapter needs memory for one score matrix, not for all of them.

Statistics are exact counts that add up across modules: per module, per projection type (q, k, v, o, gate, up, down,
projector), per (layer, projection) and for the whole adapter.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Iterator, Optional, Union

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from ..adapter_files import AdapterFolder
from ..config import MFTConfig
from ..errors import MFTInputError
from ..layer import MFTLayer
from ..mask import MaskSpec
from ..targets import layer_index, projection_order, projection_type


# The paper gives no number for its "near-zero" masks (docs/method.md); we count M < 0.1 (a connection kept at under a
# tenth of its strength) and make it a parameter everywhere.
NEAR_ZERO_THRESHOLD = 0.1
# H-MFT sweep suggested around the near-zero share: the paper swept a small range around its pick
# (e.g. 0.01%-0.1% around 0.05% for Qwen2.5-0.5B).
SPARSITY_SWEEP_FACTORS = (0.5, 1.0, 2.0)
HISTOGRAM_BINS = 50

AdapterSource = Union[str, os.PathLike, nn.Module]


def format_share(share: float) -> str:
    """A fraction as a percentage with 3 significant digits: 0.000512 -> '0.0512%'; NaN -> 'n/a'."""
    return "n/a" if math.isnan(share) else f"{100 * share:.3g}%"


# ---------------------------------------------------------------------------------------------------------------------
# Reading masks


class AdapterMasks:
    """The masks of one MFT adapter, computed lazily one module at a time.

    Build it with `from_folder` or `from_model` (or `load_adapter_masks`, which picks). `module_names` are relative to
    the base model (`model.layers.0.self_attn.q_proj`), the same for a model and for its saved folder.
    """

    def __init__(self, config: MFTConfig, module_names: list[str], scores_fn, spec_fn, state_dict_keys=None):
        self.config = config
        self.module_names = module_names
        self._scores_fn = scores_fn
        self._spec_fn = spec_fn
        # module name -> state-dict key of its scores (folder sources only)
        self.state_dict_keys: dict[str, str] = state_dict_keys or {}

    @classmethod
    def from_folder(cls, folder: Union[str, os.PathLike, AdapterFolder]) -> "AdapterMasks":
        """Masks of a saved adapter folder (a path, or an already opened `AdapterFolder`), read lazily.

        Raises `peft_mft.AdapterFileError` naming the file for a missing folder, a non-MFT adapter, invalid config
        values, a missing / truncated weight file, no scores, or scores that are not 2-D.
        """
        adapter = folder if isinstance(folder, AdapterFolder) else AdapterFolder.open(folder)
        spec = adapter.config.mask_spec()
        return cls(adapter.config, list(adapter.score_keys), adapter.read_scores, lambda name: spec,
                   state_dict_keys=adapter.score_keys)

    @classmethod
    def from_model(cls, model: nn.Module, adapter_name: str = "default") -> "AdapterMasks":
        """Masks of adapter `adapter_name` in a `PeftModel`, an `MFTModel` or any module holding `MFTLayer`s."""
        base = model.base_model if isinstance(model, PeftModel) else model
        base = base.model if isinstance(base, BaseTuner) else base
        layers = {
            name: module
            for name, module in base.named_modules()
            if isinstance(module, MFTLayer) and adapter_name in module.mft_scores
        }
        if not layers:
            present = sorted({a for m in base.modules() if isinstance(m, MFTLayer) for a in m.mft_scores})
            raise MFTInputError(
                f"The model has no MFT layer with adapter {adapter_name!r}; MFT adapters present: {present}."
            )
        config = getattr(model, "peft_config", {}).get(adapter_name)
        return cls(
            config,
            list(layers),
            lambda name: layers[name].mft_scores[adapter_name].detach(),
            lambda name: layers[name].mft_mask_spec[adapter_name],
        )

    def scores(self, name: str) -> torch.Tensor:
        """Scores `S` of module `name`: float32, (out_features, in_features)."""
        return self._scores_fn(name)

    def spec(self, name: str) -> MaskSpec:
        return self._spec_fn(name)

    def mask(self, name: str) -> torch.Tensor:
        """Mask `M` of module `name`: float32, (out_features, in_features), on the scores' device."""
        with torch.no_grad():
            return self.spec(name).mask(self.scores(name))

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(module name, mask) for every masked module."""
        for name in self.module_names:
            yield name, self.mask(name)

    def __len__(self) -> int:
        return len(self.module_names)


def load_adapter_masks(source: Union[AdapterSource, AdapterMasks], adapter_name: str = "default") -> AdapterMasks:
    """`AdapterMasks` of a model (adapter `adapter_name`) or of a saved adapter folder."""
    if isinstance(source, AdapterMasks):
        return source
    if isinstance(source, nn.Module):
        return AdapterMasks.from_model(source, adapter_name)
    return AdapterMasks.from_folder(source)


def progress_bar(iterable, enabled: bool, description: str, total: int):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=description, total=total, unit="module")


# ---------------------------------------------------------------------------------------------------------------------
# Statistics


@dataclass(frozen=True)
class MaskCounts:
    """Counts over a set of mask entries. They add up: modules sum into projections, layers, the whole adapter."""

    numel: int = 0
    total: float = 0.0  # sum of mask values
    near_zero: int = 0  # entries with M < the near-zero threshold
    below_half: int = 0  # entries with M < 0.5
    minimum: float = math.inf
    maximum: float = -math.inf

    @classmethod
    def of(cls, mask: torch.Tensor, near_zero_threshold: float) -> "MaskCounts":
        mask = mask.detach()
        minimum, maximum = torch.aminmax(mask)  # NaN if any entry is NaN
        return cls(
            numel=mask.numel(),
            total=mask.sum(dtype=torch.float64).item(),
            near_zero=int((mask < near_zero_threshold).sum().item()),
            below_half=int((mask < 0.5).sum().item()),
            minimum=minimum.item(),
            maximum=maximum.item(),
        )

    def __add__(self, other: "MaskCounts") -> "MaskCounts":
        return MaskCounts(
            self.numel + other.numel,
            self.total + other.total,
            self.near_zero + other.near_zero,
            self.below_half + other.below_half,
            min(self.minimum, other.minimum),
            max(self.maximum, other.maximum),
        )

    @property
    def mean(self) -> float:
        return self.total / self.numel if self.numel else math.nan

    @property
    def near_zero_share(self) -> float:
        """Fraction (0-1) of entries with M below the near-zero threshold."""
        return self.near_zero / self.numel if self.numel else math.nan

    @property
    def below_half_share(self) -> float:
        """Fraction (0-1) of entries with M < 0.5."""
        return self.below_half / self.numel if self.numel else math.nan

    def to_dict(self) -> dict:
        return {
            "numel": self.numel,
            "mean": _json_float(self.mean),
            "near_zero_share": _json_float(self.near_zero_share),
            "below_half_share": _json_float(self.below_half_share),
            "min": _json_float(self.minimum),
            "max": _json_float(self.maximum),
        }


def _json_float(value: float) -> Optional[float]:
    return None if not math.isfinite(value) else value


def _sum_counts(counts) -> MaskCounts:
    total = MaskCounts()
    for item in counts:
        total = total + item
    return total


@dataclass(frozen=True)
class ModuleMaskStats:
    """Statistics of one masked module."""

    name: str
    projection: str
    layer: Optional[int]  # decoder-layer index; None outside numbered layers (the projector)
    shape: tuple[int, int]
    counts: MaskCounts


@dataclass
class MaskAnalysis:
    """Mask statistics of one adapter (see `analyze_masks`). Shares are fractions in [0, 1]."""

    modules: list[ModuleMaskStats]
    near_zero_threshold: float
    histogram_edges: list[float]  # HISTOGRAM_BINS + 1 edges of M, from 0 to the largest possible mask
    histogram_counts: list[int]  # entries per bin; the last bin includes its right edge
    config: Optional[MFTConfig] = field(default=None, repr=False)

    @property
    def overall(self) -> MaskCounts:
        return _sum_counts(m.counts for m in self.modules)

    def by_projection(self) -> dict[str, MaskCounts]:
        """Counts per projection type, in `PROJECTION_TYPES` order."""
        groups: dict[str, MaskCounts] = {}
        for module in self.modules:
            groups[module.projection] = groups.get(module.projection, MaskCounts()) + module.counts
        return {key: groups[key] for key in sorted(groups, key=projection_order)}

    def by_layer(self) -> dict[tuple[Optional[int], str], MaskCounts]:
        """Counts per (decoder layer, projection type); layer None for modules outside numbered layers."""
        groups: dict[tuple[Optional[int], str], MaskCounts] = {}
        for module in self.modules:
            key = (module.layer, module.projection)
            groups[key] = groups.get(key, MaskCounts()) + module.counts
        order = lambda key: (key[0] is None, key[0] if key[0] is not None else 0, projection_order(key[1]))  # noqa
        return {key: groups[key] for key in sorted(groups, key=order)}

    def suggested_sparsity(self, factors: tuple[float, ...] = SPARSITY_SWEEP_FACTORS) -> list[float]:
        """H-MFT sparsity levels to try: the adapter's near-zero share (the paper's pick) times each factor.

        Levels >= 1 are dropped (a hard mask cannot zero everything). Returns [] when no mask is near zero.
        """
        share = self.overall.near_zero_share
        if not share or math.isnan(share):
            return []
        return [share * factor for factor in factors if share * factor < 1.0]

    def to_dict(self) -> dict:
        """Everything as JSON-ready builtins (NaN and inf as None)."""
        config = self.config
        return {
            "mask_type": config.mask_type if config else None,
            "init_score": config.init_score if config and config.mask_type == "soft" else None,
            "temperature": config.temperature if config and config.mask_type == "soft" else None,
            "sparsity": config.sparsity if config and config.mask_type == "hard" else None,
            "near_zero_threshold": self.near_zero_threshold,
            "overall": self.overall.to_dict(),
            "by_projection": {key: counts.to_dict() for key, counts in self.by_projection().items()},
            "by_layer": [
                {"layer": layer, "projection": projection, **counts.to_dict()}
                for (layer, projection), counts in self.by_layer().items()
            ],
            "modules": [
                {"name": m.name, "projection": m.projection, "layer": m.layer, "shape": list(m.shape)}
                | m.counts.to_dict()
                for m in self.modules
            ],
            "histogram": {"edges": self.histogram_edges, "counts": self.histogram_counts},
            "suggested_sparsity": self.suggested_sparsity(),
        }


class NonFiniteMaskError(MFTInputError):
    """A mask holds NaN or inf, so it has no statistics; the message names the module."""


def _mask_upper_bound(spec: MaskSpec) -> float:
    """The largest value a mask of `spec` can take: 1, or 1 / M0 for a normalised soft mask (inf if M0 underflows)."""
    if spec.mask_type != "soft":
        return 1.0
    return max(1.0, 1.0 / spec.normalizer) if spec.normalizer > 0 else math.inf


def _histogram(mask: torch.Tensor, bins: int, upper: float) -> torch.Tensor:
    """Exact float64 counts of `mask` in `bins` equal bins over [0, upper] (CPU)."""
    counts = torch.zeros(bins, dtype=torch.float64)
    # histc counts in the input's dtype: chunks of 2^24 entries keep float32 counts exact
    for chunk in mask.detach().float().reshape(-1).split(1 << 24):
        chunk_counts = torch.histc(chunk, bins, 0.0, upper).double().cpu()
        # histc drops values above `upper`: only float32 rounding puts a mask there, a hair above the bound
        chunk_counts[-1] += chunk.numel() - chunk_counts.sum()
        counts += chunk_counts
    return counts


def analyze_masks(
    source: Union[AdapterSource, AdapterMasks],
    adapter_name: str = "default",
    near_zero_threshold: float = NEAR_ZERO_THRESHOLD,
    bins: int = HISTOGRAM_BINS,
    progress: bool = False,
) -> MaskAnalysis:
    """Mask statistics of an MFT adapter: a model (adapter `adapter_name`) or a saved adapter folder.

    `near_zero_threshold`: entries with `M < near_zero_threshold` count as near zero (default `NEAR_ZERO_THRESHOLD`).
    The histogram has `bins` equal bins from 0 to the largest possible mask value (1, or 1 / M0 for normalised soft
    masks). `progress` shows a progress bar over modules. Raises `NonFiniteMaskError` for a mask holding NaN or inf.
    """
    if not 0.0 < near_zero_threshold <= 1.0:
        raise MFTInputError(f"near_zero_threshold must be in (0, 1], got {near_zero_threshold!r}.")
    if bins < 1:
        raise MFTInputError(f"bins must be >= 1, got {bins!r}.")
    masks = load_adapter_masks(source, adapter_name)
    upper = torch.tensor(_mask_upper_bound(masks.spec(masks.module_names[0])), dtype=torch.float32).item()
    histogram = torch.zeros(bins, dtype=torch.float64)
    modules = []
    for name, mask in progress_bar(masks, progress, "Analysing masks", len(masks)):
        counts = MaskCounts.of(mask, near_zero_threshold)
        if not (math.isfinite(counts.minimum) and math.isfinite(counts.maximum)):
            raise NonFiniteMaskError(
                f"The mask of {name!r} holds NaN or inf (min {counts.minimum}, max {counts.maximum}); the scores "
                "are broken (diverged training?)."
            )
        histogram += _histogram(mask, bins, upper)
        modules.append(
            ModuleMaskStats(name, projection_type(name), layer_index(name, None), tuple(mask.shape), counts)
        )
    edges = torch.linspace(0.0, upper, bins + 1, dtype=torch.float64).tolist()
    return MaskAnalysis(modules, near_zero_threshold, edges, [int(c) for c in histogram.tolist()], masks.config)


# ---------------------------------------------------------------------------------------------------------------------
# Comparing two adapters


@dataclass(frozen=True)
class MaskAgreement:
    """How two masks of the same shapes agree: overlap of their near-zero sets and the Pearson correlation of values.

    Holds centred moments (float64) so that agreements of several modules combine exactly (Chan et al.'s formula).
    """

    numel: int = 0
    zeroed_a: int = 0  # entries near zero in A
    zeroed_b: int = 0
    zeroed_both: int = 0
    mean_a: float = 0.0
    mean_b: float = 0.0
    m2_a: float = 0.0  # sum of squared deviations of A
    m2_b: float = 0.0
    c_ab: float = 0.0  # sum of products of deviations

    @classmethod
    def of(cls, mask_a: torch.Tensor, mask_b: torch.Tensor, near_zero_threshold: float) -> "MaskAgreement":
        a, b = mask_a.detach().double().flatten(), mask_b.detach().double().flatten()
        zero_a, zero_b = a < near_zero_threshold, b < near_zero_threshold
        da, db = a - a.mean(), b - b.mean()
        return cls(
            numel=a.numel(),
            zeroed_a=int(zero_a.sum().item()),
            zeroed_b=int(zero_b.sum().item()),
            zeroed_both=int((zero_a & zero_b).sum().item()),
            mean_a=a.mean().item(),
            mean_b=b.mean().item(),
            m2_a=(da * da).sum().item(),
            m2_b=(db * db).sum().item(),
            c_ab=(da * db).sum().item(),
        )

    def __add__(self, other: "MaskAgreement") -> "MaskAgreement":
        n = self.numel + other.numel
        if not self.numel or not other.numel:
            return self if other.numel == 0 else other
        w = self.numel * other.numel / n
        delta_a, delta_b = other.mean_a - self.mean_a, other.mean_b - self.mean_b
        return MaskAgreement(
            numel=n,
            zeroed_a=self.zeroed_a + other.zeroed_a,
            zeroed_b=self.zeroed_b + other.zeroed_b,
            zeroed_both=self.zeroed_both + other.zeroed_both,
            mean_a=self.mean_a + delta_a * other.numel / n,
            mean_b=self.mean_b + delta_b * other.numel / n,
            m2_a=self.m2_a + other.m2_a + delta_a * delta_a * w,
            m2_b=self.m2_b + other.m2_b + delta_b * delta_b * w,
            c_ab=self.c_ab + other.c_ab + delta_a * delta_b * w,
        )

    @property
    def jaccard(self) -> float:
        """|A0 & B0| / |A0 | B0| of the near-zero sets; NaN when neither has a near-zero entry."""
        union = self.zeroed_a + self.zeroed_b - self.zeroed_both
        return self.zeroed_both / union if union else math.nan

    @property
    def correlation(self) -> float:
        """Pearson correlation of the mask values; NaN when either mask is constant."""
        denominator = math.sqrt(self.m2_a * self.m2_b)
        return self.c_ab / denominator if denominator > 0 else math.nan

    def to_dict(self) -> dict:
        return {
            "numel": self.numel,
            "zeroed_a": self.zeroed_a,
            "zeroed_b": self.zeroed_b,
            "zeroed_both": self.zeroed_both,
            "jaccard": _json_float(self.jaccard),
            "correlation": _json_float(self.correlation),
        }


@dataclass
class MaskComparison:
    """Comparison of two adapters module by module (see `compare_masks`)."""

    modules: dict[str, MaskAgreement]  # modules masked by both
    only_in_a: list[str]
    only_in_b: list[str]
    near_zero_threshold: float

    @property
    def overall(self) -> MaskAgreement:
        total = MaskAgreement()
        for agreement in self.modules.values():
            total = total + agreement
        return total

    def to_dict(self) -> dict:
        return {
            "near_zero_threshold": self.near_zero_threshold,
            "overall": self.overall.to_dict(),
            "modules": {name: agreement.to_dict() for name, agreement in self.modules.items()},
            "only_in_a": self.only_in_a,
            "only_in_b": self.only_in_b,
        }


def compare_masks(
    source_a: Union[AdapterSource, AdapterMasks],
    source_b: Union[AdapterSource, AdapterMasks],
    adapter_a: str = "default",
    adapter_b: str = "default",
    near_zero_threshold: float = NEAR_ZERO_THRESHOLD,
    progress: bool = False,
) -> MaskComparison:
    """Compare two MFT adapters (two tasks, two seeds, ...), each a model or a saved folder, on the modules both mask.

    Two adapters of one model: `compare_masks(model, model, "task_a", "task_b")`. Raises `ValueError` when no
    module is masked by both or when a module's masks differ in shape.
    """
    masks_a, masks_b = load_adapter_masks(source_a, adapter_a), load_adapter_masks(source_b, adapter_b)
    names_b = set(masks_b.module_names)
    common = [name for name in masks_a.module_names if name in names_b]
    if not common:
        raise MFTInputError(
            f"The two adapters mask no module in common (A: {masks_a.module_names[:3]}..., "
            f"B: {masks_b.module_names[:3]}...); they do not belong to the same base model."
        )
    modules = {}
    for name in progress_bar(common, progress, "Comparing masks", len(common)):
        mask_a, mask_b = masks_a.mask(name), masks_b.mask(name)
        if mask_a.shape != mask_b.shape:
            raise MFTInputError(
                f"Masks of {name!r} differ in shape: {tuple(mask_a.shape)} in A, {tuple(mask_b.shape)} in B."
            )
        modules[name] = MaskAgreement.of(mask_a, mask_b.to(mask_a.device), near_zero_threshold)
    set_a = set(masks_a.module_names)
    return MaskComparison(
        modules,
        only_in_a=[name for name in masks_a.module_names if name not in names_b],
        only_in_b=[name for name in masks_b.module_names if name not in set_a],
        near_zero_threshold=near_zero_threshold,
    )
