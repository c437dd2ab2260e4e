# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""TinyLLaVA checkpoints (TinyLLaVA Factory format) as `LlavaForConditionalGeneration`.

TinyLLaVA is vision tower -> MLP connector -> small LLM, i.e. LLaVA's architecture under other names:

| TinyLLaVA (config.json model_type "tinyllava")       | LLaVA (transformers)                         |
|------------------------------------------------------|----------------------------------------------|
| ``language_model.model.*`` / ``language_model.lm_head`` | ``model.language_model.*`` / ``lm_head``    |
| ``vision_tower._vision_tower.*``                     | ``model.vision_tower.*``                     |
| ``connector._connector.0`` / ``.2`` (mlp2x_gelu)     | ``model.multi_modal_projector.linear_1`` / ``linear_2`` |
| ``vision_feature_select_strategy`` "patch" / "cls_patch" | "default" (drop the first token) / "full" |
| image placeholder id -200, spliced in                | an ``<image>`` token repeated per image token |

`convert_tinyllava_checkpoint` renames the tensors once into a cached LLaVA folder (with the TinyLLaVA chat
template), so the TinyLLaVA example trains through exactly the same code as the LLaVA one.
`export_tinyllava_checkpoint` writes the reverse (used for the embedded default, and to round-trip in tests).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from peft_mft.atomic import atomic_directory

from .cache import cache_dir
from .images import PREPROCESSOR_FILE, ImagePreprocessor
from .models import LoadedVLM, load_llava


# TinyLLaVA Factory's "phi" / "qwen2_base" conversation format.
TINYLLAVA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
TINYLLAVA_CHAT_TEMPLATE = (
    "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] + ' ' }}"
    "{% else %}{{ '" + TINYLLAVA_SYSTEM.replace("'", "\\'") + " ' }}{% endif %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ 'USER: ' + m['content'] + ' ' }}"
    "{% elif m['role'] == 'assistant' %}{{ 'ASSISTANT: ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
IMAGE_TOKEN = "<image>"
_RENAMES = [  # (TinyLLaVA prefix, LLaVA prefix)
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("vision_tower._vision_tower.", "model.vision_tower."),
    ("connector._connector.0.", "model.multi_modal_projector.linear_1."),
    ("connector._connector.2.", "model.multi_modal_projector.linear_2."),
]
_STRATEGY = {"patch": "default", "cls_patch": "full"}


def _source_folder(source: str) -> Path:
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source))


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    raise FileNotFoundError(f"{folder}: no model.safetensors(.index.json) or pytorch_model.bin")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".bin":
        return torch.load(path, map_location="cpu", weights_only=True)
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _rename(key: str, source: str) -> str:
    for old, new in _RENAMES:
        if key.startswith(old):
            return new + key[len(old):]
    raise ValueError(f"{source}: tensor {key!r} is not part of a TinyLLaVA mlp2x_gelu model (language_model., "
                     "vision_tower._vision_tower., connector._connector.{0,2}.)")


def _sub_config(cfg: dict, name: str, source: str):
    from transformers import AutoConfig

    sub = cfg.get(name)
    if not isinstance(sub, dict) or "model_type" not in sub:
        raise ValueError(f"{source}: config.json has no usable {name!r} (a dict with a model_type)")
    sub = dict(sub)
    return AutoConfig.for_model(sub.pop("model_type"), **sub)


def _num_image_tokens(vision_config, strategy: str) -> int | None:
    size, patch = getattr(vision_config, "image_size", None), getattr(vision_config, "patch_size", None)
    if not (isinstance(size, int) and isinstance(patch, int)):
        return None
    n = (size // patch) ** 2 + (1 if vision_config.model_type.startswith("clip") else 0)
    return n - 1 if strategy == "default" else n


def check_new_folder(dest: Path) -> None:
    """`FileExistsError` unless `dest` is absent or an empty folder: a conversion (written atomically, so a crash
    leaves `dest` as it was) replaces or deletes nothing of the user's."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not an empty folder; choose a new folder (nothing there is "
                              "replaced)")


def convert_tinyllava_checkpoint(source: str, destination: str | Path | None = None) -> Path:
    """Write (once) a LLaVA-format copy of a TinyLLaVA checkpoint and return its folder: `destination` (absent, empty,
    or an earlier conversion, returned as it is) or a folder in the cache."""
    from transformers import AutoTokenizer, LlavaConfig

    from . import vision_efficientnet  # noqa: F401  (so an exported embedded model converts back)

    folder = _source_folder(source)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{source}: no config.json")
    cfg = json.loads(config_path.read_text())
    if cfg.get("model_type") != "tinyllava":
        raise ValueError(f"{source}: model_type is {cfg.get('model_type')!r}, not 'tinyllava'")
    files = _weight_files(folder)
    stamp = json.dumps([str(folder.resolve()), config_path.stat().st_mtime] + [f.stat().st_size for f in files])
    if destination is None:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", folder.name)[-60:]
        destination = cache_dir("converted") / f"{slug}-{hashlib.sha1(stamp.encode()).hexdigest()[:10]}"
    dest = Path(destination)
    if (dest / "tinyllava_source.json").is_file():
        return dest

    connector = cfg.get("connector_type")
    if connector != "mlp2x_gelu":
        raise ValueError(f"{source}: connector_type {connector!r} cannot become LLaVA's projector "
                         "(Linear-GELU-Linear); only 'mlp2x_gelu' is supported")
    strategy = _STRATEGY.get(cfg.get("vision_feature_select_strategy", "patch"))
    if strategy is None:
        raise ValueError(f"{source}: unknown vision_feature_select_strategy {cfg['vision_feature_select_strategy']!r}")
    text_config = _sub_config(cfg, "text_config", source)
    vision_config = _sub_config(cfg, "vision_config", source)

    if (folder / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        tokenizer = AutoTokenizer.from_pretrained(cfg.get("tokenizer_name_or_path") or cfg["llm_model_name_or_path"])
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = cfg.get("pad_token") or tokenizer.eos_token
    tokenizer.chat_template = TINYLLAVA_CHAT_TEMPLATE
    old_vocab = text_config.vocab_size
    new_vocab = old_vocab if image_token_id < old_vocab else math.ceil((image_token_id + 1) / 64) * 64
    text_config.vocab_size = new_vocab
    tie = bool(getattr(text_config, "tie_word_embeddings", False))

    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=image_token_id,
        projector_hidden_act="gelu",
        vision_feature_layer=cfg.get("vision_feature_layer", -2),
        vision_feature_select_strategy=strategy,
        multimodal_projector_bias=True,
        tie_word_embeddings=tie,
        image_seq_length=_num_image_tokens(vision_config, strategy) or 576,
    )
    check_new_folder(dest)
    with atomic_directory(dest) as tmp:
        weight_map = {}
        for n, path in enumerate(files):
            tensors = {_rename(k, source): v for k, v in _read_tensors(path).items()}
            if tie:
                tensors.pop("lm_head.weight", None)
            for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
                if key in tensors and tensors[key].shape[0] < new_vocab:
                    w = tensors[key]
                    extra = w.float().mean(0, keepdim=True).to(w.dtype).expand(new_vocab - w.shape[0], -1)
                    tensors[key] = torch.cat([w, extra])
            name = "model.safetensors" if len(files) == 1 else f"model-{n + 1:05d}-of-{len(files):05d}.safetensors"
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in tensors})
        if len(files) > 1:
            (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        pad = cfg.get("image_aspect_ratio", "square") == "pad"
        ImagePreprocessor.for_checkpoint(str(folder), vision_config, pad_to_square=pad).save_pretrained(tmp)
        (tmp / "tinyllava_source.json").write_text(json.dumps({"source": source, "stamp": stamp}))
    return dest


def load_tinyllava(source: str, **kwargs) -> LoadedVLM:
    """`load_llava` for a TinyLLaVA checkpoint (converted once); a LLaVA-format folder is loaded as it is."""
    from transformers import AutoConfig

    if Path(source).is_dir() and json.loads((Path(source) / "config.json").read_text()).get("model_type") == "llava":
        return load_llava(source, **kwargs)
    if not Path(source).is_dir() and AutoConfig.from_pretrained(source).model_type == "llava":
        return load_llava(source, **kwargs)
    loaded = load_llava(str(convert_tinyllava_checkpoint(source)), **kwargs)
    loaded.source = source
    return loaded


def export_tinyllava_checkpoint(llava_folder: str | Path, destination: str | Path) -> Path:
    """Write a LLaVA checkpoint (2-layer GELU projector) in TinyLLaVA Factory's layout into `destination`, which must
    be absent or an empty folder."""
    from transformers import AutoConfig, AutoTokenizer, LlavaForConditionalGeneration

    from . import vision_efficientnet  # noqa: F401

    src, dest = Path(llava_folder), Path(destination)
    config = AutoConfig.from_pretrained(src)
    check_new_folder(dest)
    with atomic_directory(dest) as tmp:
        tensors = {}
        # Through the model, not the files: transformers saves LLaVA under older names than it uses in memory.
        state = LlavaForConditionalGeneration.from_pretrained(src).state_dict()
        for key, value in state.items():
            for tiny, llava in _RENAMES:
                if key.startswith(llava):
                    tensors[tiny + key[len(llava):]] = value.contiguous()
                    break
            else:
                raise ValueError(f"{src}: tensor {key!r} has no TinyLLaVA counterpart")
        if "language_model.lm_head.weight" not in tensors:  # tied: TinyLLaVA files carry the head explicitly
            tensors["language_model.lm_head.weight"] = tensors["language_model.model.embed_tokens.weight"].clone()
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        inverse = {v: k for k, v in _STRATEGY.items()}
        (tmp / "config.json").write_text(json.dumps({
            "architectures": ["TinyLlavaForConditionalGeneration"],
            "model_type": "tinyllava",
            "llm_model_name_or_path": "",
            "vision_model_name_or_path": "",
            "connector_type": "mlp2x_gelu",
            "text_config": config.text_config.to_dict(),
            "vision_config": config.vision_config.to_dict(),
            "hidden_size": config.text_config.hidden_size,
            "vision_hidden_size": config.vision_config.hidden_size,
            "vocab_size": config.text_config.vocab_size,
            "vision_feature_layer": config.vision_feature_layer,
            "vision_feature_select_strategy": inverse[config.vision_feature_select_strategy],
            "image_aspect_ratio": "square",
            "image_token_index": -200,
            "ignore_index": -100,
            "tokenizer_padding_side": "right",
        }, indent=2))
        AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
        if (src / PREPROCESSOR_FILE).is_file():
            shutil.copy(src / PREPROCESSOR_FILE, tmp / PREPROCESSOR_FILE)
    return dest


def embedded_tinyllava_checkpoint() -> Path:
    """The embedded default VLM written in TinyLLaVA format (cached next to the LLaVA one)."""
    from .embedded import embedded_llava_checkpoint

    llava = embedded_llava_checkpoint()
    dest = llava.with_name(llava.name + "-tinyllava")
    if not (dest / "config.json").is_file():
        export_tinyllava_checkpoint(llava, dest)
    return dest
