# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""easy-vqa (MIT; 4,000 train / 1,000 test images of one coloured shape) converted to LLaVA JSON files.

- ``train.json``: the train split minus its last ``val_images`` images, the questions of one image grouped into
  multi-turn records of at most ``questions_per_record`` questions (the LLaVA instruction format);
- ``val.json``: the questions of those held-back train images, one per record: for choosing hyperparameters;
- ``test.json``: the test split, one question per record, shuffled once (held out: evaluation only);
- ``captions.json``: one caption per training image ("A blue circle."; none of the held-back images), derived from
  its questions, for the stage-1 projector alignment (LLaVA aligns its projector on image-caption pairs before
  instruction tuning).

The files reference the images inside the installed ``easy_vqa`` package; ``image_folder`` is that data folder.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from pathlib import Path

from peft_mft.atomic import atomic_file

from .cache import cache_dir


COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
SHAPES = ("circle", "rectangle", "triangle")
CAPTION_PROMPT = "Describe the image briefly."
# Questions go in as they are: LLaVA-1.5's "Answer the question using a single word or phrase." would add 11
# tokens to every 20-token question, and every easy-vqa answer is one word anyway.
FORMAT_VERSION = 4  # 4: no captions of the held-back validation images


def easy_vqa_data_folder() -> Path:
    try:
        import easy_vqa
    except ImportError as err:
        raise ImportError("the embedded default needs the easy-vqa data: pip install --no-deps easy-vqa") from err
    return Path(easy_vqa.__file__).parent / "data"


def _load_split(folder: Path, split: str):
    questions = json.loads((folder / split / "questions.json").read_text())
    return [(q, a, int(image_id)) for q, a, image_id in questions]


def infer_caption(qas: list[tuple[str, str]]) -> str | None:
    """Colour and shape of an image from its question/answer pairs; None when either is unknown."""
    color = shape = None
    for q, a in qas:
        words = set(re.findall(r"[a-z]+", q))
        if a in COLORS:
            color = a
        elif a in SHAPES:
            shape = a
        elif a in ("yes", "no"):
            negated = " not " in f" {q} " or q.startswith("is no ")
            present = (a == "yes") != negated
            if present:
                color = color or next((c for c in COLORS if c in words), None)
                shape = shape or next((s for s in SHAPES if s in words), None)
        if a in SHAPES:  # "what is the blue shape?" -> rectangle: the colour is in the question
            color = color or next((c for c in COLORS if c in words), None)
        if a in COLORS:  # "what color is the circle?" -> blue: the shape is in the question
            shape = shape or next((s for s in SHAPES if s in words), None)
    return f"A {color} {shape}." if color and shape else None


def _single_question(rid: str, image: str, q: str, a: str) -> dict:
    return {"id": rid, "image": image, "conversations": [{"from": "human", "value": f"<image>\n{q}"},
                                                         {"from": "gpt", "value": a}]}


def prepare_easy_vqa(
    questions_per_record: int = 4, val_images: int = 200, destination: Path | None = None, source: Path | None = None
) -> dict[str, Path]:
    """Write train/val/test/captions JSON (once; reused if present) from the easy-vqa data folder `source` (default:
    the installed package's). Returns their paths and the image folder."""
    folder = source or easy_vqa_data_folder()
    dest = destination or cache_dir("easy_vqa", f"v{FORMAT_VERSION}-q{questions_per_record}-val{val_images}")
    paths = {name: dest / f"{name}.json" for name in ("train", "val", "test", "captions")}
    if not all(p.is_file() for p in paths.values()):
        dest.mkdir(parents=True, exist_ok=True)
        by_image = defaultdict(list)
        for q, a, image_id in _load_split(folder, "train"):
            by_image[image_id].append((q, a))
        train, val, captions = [], [], []
        held_back = set(sorted(by_image)[len(by_image) - val_images :]) if val_images else set()
        for image_id in sorted(by_image):
            qas = by_image[image_id]
            image = f"train/images/{image_id}.png"
            if image_id in held_back:  # validation images stay unseen by training, stage 1 included
                val += [_single_question(f"val-{image_id}-{k}", image, q, a) for k, (q, a) in enumerate(qas)]
                continue
            caption = infer_caption(qas)
            if caption:
                captions.append({"id": f"caption-{image_id}", "image": image, "conversations": [
                    {"from": "human", "value": f"<image>\n{CAPTION_PROMPT}"}, {"from": "gpt", "value": caption}]})
            for start in range(0, len(qas), questions_per_record):
                conv = []
                for k, (q, a) in enumerate(qas[start : start + questions_per_record]):
                    conv += [{"from": "human", "value": ("<image>\n" + q) if k == 0 else q},
                             {"from": "gpt", "value": a}]
                train.append({"id": f"train-{image_id}-{start // questions_per_record}", "image": image,
                              "conversations": conv})
        test = [_single_question(f"test-{n}", f"test/images/{image_id}.png", q, a)
                for n, (q, a, image_id) in enumerate(_load_split(folder, "test"))]
        # shuffled once: a prefix of the file is then a uniform sample of the split
        random.Random(0).shuffle(test)
        random.Random(1).shuffle(val)
        for name, data in (("train", train), ("val", val), ("test", test), ("captions", captions)):
            with atomic_file(paths[name]) as tmp:
                tmp.write_text(json.dumps(data, indent=0))
    return {**paths, "image_folder": folder}
