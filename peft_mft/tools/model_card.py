# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""The README model card of a saved MFT adapter: method, masked modules, (init_score, T) or sparsity, mask statistics.

`write_model_card` adds the section to a folder `PeftModel.save_pretrained` wrote (PEFT's own card stays around it);
it reads and analyses every score, so it runs when asked, not on every save: `peft-mft card FOLDER`, `push_to_hub`
here (transformers' own `push_to_hub` replaces the README) and `peft-mft harden` write it. The MFT part sits between
two HTML comments and is replaced, not duplicated, when it is written again.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional, Union

from peft.utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME

from ..config import MFTConfig
from .analysis import MaskAnalysis, analyze_masks, format_share
from .report import PROJECTION_HEADER, method_line, projection_cells


CARD_NAME = "README.md"
SECTION_START = "<!-- peft-mft: start of the MFT adapter section, rewritten on every save -->"
SECTION_END = "<!-- peft-mft: end of the MFT adapter section -->"
CARD_TAGS = ("mft", "mask-fine-tuning")
PAPER = (
    'Zhang et al., "Rethinking Fine-Tuning: Unlocking Hidden Capabilities in Vision-Language Models", '
    "arXiv 2512.23073"
)


def _layer_ranges(layers: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    ranges, start = [], None
    for index, layer in enumerate(layers):
        if start is None:
            start = layer
        if index + 1 == len(layers) or layers[index + 1] != layer + 1:
            ranges.append(str(start) if start == layer else f"{start}-{layer}")
            start = None
    return ", ".join(ranges)


def _modules_line(analysis: MaskAnalysis) -> str:
    """'16 linear layers (5,120 masked weights): q, k, v, o, gate, up, down in layers 0-1; the multimodal
    projector'."""
    projections = ", ".join(p for p in analysis.by_projection() if p != "projector")
    layers = sorted({m.layer for m in analysis.modules if m.layer is not None})
    if projections and layers:
        projections += f" in layers {_layer_ranges(layers)}"
    pieces = [projections] if projections else []
    if any(m.projection == "projector" for m in analysis.modules):
        pieces.append("the multimodal projector")
    return f"{len(analysis.modules)} linear layers ({analysis.overall.numel:,} masked weights): " + "; ".join(pieces)


def mft_card_section(analysis: MaskAnalysis) -> str:
    """The MFT section of a model card (markdown) for an analysed adapter."""
    config = analysis.config
    threshold = analysis.near_zero_threshold
    targets = sorted(config.target_modules) if isinstance(config.target_modules, set) else config.target_modules
    cells = projection_cells(analysis)
    cells[-1] = ("**all**", *cells[-1][1:])
    rows = ["| " + " | ".join(row) + " |" for row in cells]
    lines = [
        SECTION_START,
        "## Mask Fine-Tuning (MFT) adapter",
        "",
        "Each masked linear weight `W` of the base model is used as `W * M`, with a mask `M` learned from scores `S`;",
        f"the base weights stay unchanged. Method: {PAPER}.",
        "",
        f"- **Mask:** {method_line(config)}",
        f"- **Masked modules:** {_modules_line(analysis)}",
        f"- **target_modules:** `{targets}`",
        "",
        "### Mask statistics",
        "",
        f"Near zero: `M < {threshold:g}`. Shares are of the masked weights of each projection type.",
        "",
        "| " + " | ".join(PROJECTION_HEADER) + " |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
    ]
    suggested = analysis.suggested_sparsity()
    if config.mask_type == "soft" and suggested:
        lines += [
            "",
            "Suggested H-MFT sparsity levels (near-zero share x 0.5, 1, 2): "
            + ", ".join(format_share(level) for level in suggested)
            + "; make one with `peft-mft harden ADAPTER --sparsity X OUT`.",
        ]
    lines += ["", "### Loading", "", *loading_snippet(config), SECTION_END]
    return "\n".join(lines)


def base_model_class(config: MFTConfig) -> str:
    """The transformers class the card loads the base model with: the one PEFT recorded (`auto_mapping`), else the
    Auto class of the task type (`AutoModelForCausalLM` for CAUSAL_LM), else `AutoModel`."""
    recorded = (config.auto_mapping or {}).get("base_model_class")
    if recorded and str((config.auto_mapping or {}).get("parent_library", "")).startswith("transformers"):
        return recorded
    return "AutoModelForCausalLM" if config.task_type == "CAUSAL_LM" else "AutoModel"


def loading_snippet(config: MFTConfig) -> list[str]:
    """The card's install line and loading code, runnable as written from the adapter's folder (`adapter = "."`); the
    base model is the config's `base_model_name_or_path`, loaded with `base_model_class`."""
    auto_class = base_model_class(config)
    base = config.base_model_name_or_path or "<base model id or folder>"
    return [
        "```bash",
        "pip install peft-mft",
        "```",
        "",
        "```python",
        "import peft_mft  # registers the MFT adapter type with PEFT; without it loading fails with KeyError: 'MFT'",
        "from peft import PeftModel",
        f"from transformers import {auto_class}",
        "",
        'adapter = "."  # this folder; or the Hub repo id this adapter was pushed to',
        f"base_model = {auto_class}.from_pretrained({base!r})",
        "model = PeftModel.from_pretrained(base_model, adapter)",
        "```",
    ]


def _replace_section(text: str, section: str) -> str:
    """Replace the previous MFT section, else insert it before the first '## ' heading (after the card's title)."""
    start, end = text.find(SECTION_START), text.find(SECTION_END)
    if start != -1 and end > start:
        return text[:start] + section + text[end + len(SECTION_END) :]
    heading = text.find("\n## ")
    if heading == -1:
        return text.rstrip("\n") + "\n\n" + section + "\n"
    return text[: heading + 1] + section + "\n\n" + text[heading + 1 :]


def write_model_card(folder: Union[str, os.PathLike]) -> Optional[Path]:
    """Write or update `README.md` of a saved MFT adapter folder with its MFT section and tags, and that of each
    adapter subfolder (`save_pretrained` writes adapters other than "default" into one named after the adapter).

    Reads the saved configs and scores (no base model). A folder holding only `adapter_config.json` gets no card;
    returns the path of `folder`'s card, or None when it got none.

    Args:
        folder: A folder written by `PeftModel.save_pretrained` (or `peft_mft.save_adapter`).
    """
    folder = Path(folder)
    for sub in sorted(folder.iterdir()):
        if sub.is_dir() and (sub / CONFIG_NAME).is_file():
            _write_card(sub)
    return _write_card(folder)


def _write_card(folder: Path) -> Optional[Path]:
    from huggingface_hub import ModelCard

    if not any((folder / name).is_file() for name in (SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME)):
        return None
    section = mft_card_section(analyze_masks(folder))
    path = folder / CARD_NAME
    card = ModelCard.load(path) if path.is_file() else ModelCard("---\nlibrary_name: peft\n---\n")
    card.data.tags = sorted(set(card.data.tags or []) | set(CARD_TAGS))
    card.text = _replace_section(card.text, section)
    card.save(path)
    return path


def push_to_hub(
    model,
    repo_id: str,
    *,
    token: Optional[str] = None,
    private: Optional[bool] = None,
    commit_message: str = "Upload MFT adapter",
    revision: Optional[str] = None,
    create_pr: bool = False,
    **save_kwargs,
):
    """Upload `model`'s adapter(s) to the Hub repo `repo_id` with their model card; returns the commit info.

    Use this instead of `PeftModel.push_to_hub`: with transformers 5 that method (transformers' `PushToHubMixin`)
    replaces the README written by `save_pretrained` with the repo's existing card or a generic one, dropping PEFT's
    and MFT's card. This saves with `model.save_pretrained(tmp, **save_kwargs)`, writes the MFT card
    (`write_model_card`) and uploads the folder.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, **save_kwargs)
        write_model_card(folder)
        return api.upload_folder(
            repo_id=repo_id, folder_path=folder, commit_message=commit_message, revision=revision, create_pr=create_pr
        )
