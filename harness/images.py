# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Image preprocessing with PIL + numpy (no torchvision), reading Hugging Face ``preprocessor_config.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)
# Per vision-model type defaults for checkpoints that ship no preprocessor_config.json (e.g. TinyLLaVA).
DEFAULT_STATS = {
    "clip_vision_model": (CLIP_MEAN, CLIP_STD),
    "siglip_vision_model": (HALF, HALF),
    "siglip2_vision_model": (HALF, HALF),
    "efficientnet_lite_vision": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
PREPROCESSOR_FILE = "preprocessor_config.json"


@dataclass
class ImagePreprocessor:
    """PIL image -> float tensor (3, height, width), normalised.

    ``resize_mode``: ``"resize"`` stretches to (height, width) (SigLIP style); ``"shortest_edge_crop"`` scales the
    shortest edge to ``shortest_edge`` and centre-crops (height, width) (CLIP style). ``pad_to_square`` first
    pads to a square filled with the mean colour (LLaVA-1.5 "pad" aspect ratio).
    """

    height: int = 224
    width: int = 224
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    resize_mode: str = "resize"
    shortest_edge: int | None = None
    pad_to_square: bool = False
    resample: int = Image.BICUBIC
    rescale_factor: float = 1 / 255
    extra: dict = field(default_factory=dict, repr=False)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        if self.pad_to_square and image.width != image.height:
            side = max(image.width, image.height)
            fill = tuple(int(round(m * 255)) for m in self.image_mean)
            canvas = Image.new("RGB", (side, side), fill)
            canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
            image = canvas
        if self.resize_mode == "shortest_edge_crop":
            edge = self.shortest_edge or min(self.height, self.width)
            scale = edge / min(image.width, image.height)
            new_w, new_h = max(edge, round(image.width * scale)), max(edge, round(image.height * scale))
            image = image.resize((new_w, new_h), self.resample)
            left, top = (new_w - self.width) // 2, (new_h - self.height) // 2
            image = image.crop((left, top, left + self.width, top + self.height))
        elif self.resize_mode == "resize":
            image = image.resize((self.width, self.height), self.resample)
        else:
            raise ValueError("ImagePreprocessor.resize_mode must be 'resize' or 'shortest_edge_crop', got "
                             f"{self.resize_mode!r}")
        array = np.asarray(image, dtype=np.float32) * self.rescale_factor  # (H, W, 3)
        array = (array - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))

    # ---- Hugging Face preprocessor_config.json -------------------------------------------------------------

    @classmethod
    def from_hf_dict(cls, cfg: dict, pad_to_square: bool | None = None) -> "ImagePreprocessor":
        def side(value, default):
            if value is None:
                return default, default
            if isinstance(value, int):
                return value, value
            if "height" in value:
                return value["height"], value["width"]
            edge = value.get("shortest_edge", default)
            return edge, edge

        size = cfg.get("size")
        crop = cfg.get("crop_size")
        if cfg.get("do_center_crop", False) and crop is not None:
            height, width = side(crop, 224)
            shortest = size if isinstance(size, int) else (size or {}).get("shortest_edge", min(height, width))
            mode = "shortest_edge_crop"
        else:
            height, width = side(size, 224)
            shortest, mode = None, "resize"
        return cls(
            height=height,
            width=width,
            image_mean=tuple(cfg.get("image_mean", CLIP_MEAN)),
            image_std=tuple(cfg.get("image_std", CLIP_STD)),
            resize_mode=mode,
            shortest_edge=shortest,
            pad_to_square=bool(cfg.get("do_pad", False)) if pad_to_square is None else pad_to_square,
            resample=int(cfg.get("resample", Image.BICUBIC)),
            rescale_factor=float(cfg.get("rescale_factor", 1 / 255)),
        )

    def to_hf_dict(self) -> dict:
        out = {
            "image_processor_type": "CLIPImageProcessor",
            "do_convert_rgb": True,
            "do_resize": True,
            "do_rescale": True,
            "rescale_factor": self.rescale_factor,
            "do_normalize": True,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "resample": self.resample,
            "do_pad": self.pad_to_square,
        }
        if self.resize_mode == "shortest_edge_crop":
            out.update(size={"shortest_edge": self.shortest_edge}, do_center_crop=True,
                       crop_size={"height": self.height, "width": self.width})
        else:
            out.update(size={"height": self.height, "width": self.width}, do_center_crop=False)
        return out

    def save_pretrained(self, directory: str | Path) -> None:
        Path(directory, PREPROCESSOR_FILE).write_text(json.dumps(self.to_hf_dict(), indent=2))

    @classmethod
    def for_checkpoint(
        cls, name_or_path: str, vision_config, pad_to_square: bool | None = None
    ) -> "ImagePreprocessor":
        """Read ``preprocessor_config.json`` of a local folder or Hub repo; fall back to defaults derived from
        ``vision_config`` (its ``model_type`` and ``image_size``)."""
        cfg = _read_optional_json(name_or_path, PREPROCESSOR_FILE)
        if cfg is not None:
            return cls.from_hf_dict(cfg, pad_to_square=pad_to_square)
        mean, std = DEFAULT_STATS.get(getattr(vision_config, "model_type", ""), (CLIP_MEAN, CLIP_STD))
        size = getattr(vision_config, "image_size", 224)
        size = size if isinstance(size, int) else size[0]
        return cls(height=size, width=size, image_mean=mean, image_std=std, pad_to_square=bool(pad_to_square))


def _read_optional_json(name_or_path: str, filename: str) -> dict | None:
    local = Path(name_or_path)
    if local.is_dir():
        path = local / filename
        return json.loads(path.read_text()) if path.is_file() else None
    from transformers.utils import cached_file

    resolved = cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
    return json.loads(Path(resolved).read_text()) if resolved else None
