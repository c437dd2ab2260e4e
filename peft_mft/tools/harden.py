# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Turning a soft-mask (S-MFT) adapter folder into a hard-mask (H-MFT) adapter folder at a chosen sparsity."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Union

from peft.utils.constants import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import save_file

from ..adapter_files import AdapterFolder
from ..config import check_sparsity
from ..errors import MFTInputError
from ..weight_files import mask_metadata
from .analysis import AdapterMasks, progress_bar
from .model_card import write_model_card
from .output_folder import check_output_folder, command_output


def harden_adapter(
    adapter_dir: Union[str, os.PathLike],
    sparsity: float,
    output_dir: Union[str, os.PathLike],
    progress: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write an H-MFT adapter that zeroes, in each weight matrix, the `sparsity` fraction with the smallest soft mask.

    The hard adapter's scores are the soft mask values `M` (float32, >= 0, same shapes), so the hard mask's ranking
    by `|S|` is the ranking by `M`: exactly `floor(sparsity * numel)` entries per matrix are zeroed, the ones the
    soft adapter had switched off most; ties at the threshold go by row-major index, as for any hard mask. Other
    saved tensors (`modules_to_save`) are copied unchanged. The output folder holds `adapter_config.json`
    (`mask_type="hard"`, `sparsity`), `adapter_model.safetensors` and a model card, and loads with
    `PeftModel.from_pretrained` like any adapter. It is written atomically and follows the output-folder rule of
    `peft_mft.tools.output_folder` (never the input, never a non-empty folder of something else unless `overwrite`).
    Returns the output folder.
    """
    adapter = AdapterFolder.open(adapter_dir)
    masks = AdapterMasks.from_folder(adapter)  # the folder is checked and read once
    if masks.config.mask_type != "soft":
        raise MFTInputError(
            f"{adapter_dir} is already a hard-mask adapter (sparsity {masks.config.sparsity}); harden a soft one."
        )
    sparsity = check_sparsity(sparsity)
    output_dir = Path(output_dir)
    checked = check_output_folder(output_dir, [adapter_dir], "harden", overwrite)  # before the slow part
    # the hard scores are the masks themselves (P is S)
    config = dataclasses.replace(masks.config, mask_type="hard", sparsity=sparsity, straight_through=False,
                                 score_scale=1.0, score_offset=0.0)

    score_keys = set(adapter.score_keys.values())
    state_dict = {key: adapter.read(key) for key in adapter.keys if key not in score_keys}
    for name in progress_bar(masks.module_names, progress, "Hardening masks", len(masks)):
        state_dict[adapter.score_keys[name]] = masks.mask(name).contiguous()

    with command_output(output_dir, [adapter_dir], "harden", overwrite, checked) as staging:
        save_file(state_dict, str(staging / SAFETENSORS_WEIGHTS_NAME), metadata=mask_metadata(config))
        config.save_pretrained(str(staging))
        write_model_card(staging)
    return output_dir
