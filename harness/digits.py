# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""A second VQA task from real images, offline: scikit-learn's handwritten digits as LLaVA JSON files.

Source: `sklearn.datasets.load_digits` (the UCI "Optical Recognition of Handwritten Digits" test set, bundled with
scikit-learn: 1,797 scans of digits 0-9 by 43 writers, 8 x 8 pixels, 17 grey levels). Each scan is drawn dark on
white and upscaled (nearest neighbour) to `DIGIT_PIXELS` pixels square; images with two or three digits put scans
side by side on one white canvas. The scans are split once into train / validation / test (`SPLIT`, by scan, seed 0),
and every image of a split uses that split's scans only. Question types (`QUESTION_TYPES`):

- one digit: "Which digit is this?" (0-9) and "Is the digit even or odd?";
- two different digits: "Which digit is larger, the left or the right one?" and "What is the sum of the two digits?";
- two or three digits: "How many digits are in the image?".

``train.json`` groups the questions of one image into one multi-turn record (the LLaVA instruction format);
``val.json`` (200 questions) and ``test.json`` (400) have one question per record, the same number of each type
(shuffled once, so a prefix is a sample of every type). `majority_baseline` answers each question string with its
most common training answer; `prepare_digits` records its test accuracy in ``summary.json``.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from peft_mft.atomic import atomic_file

from .cache import cache_dir


FORMAT_VERSION = 1
DIGIT_PIXELS = 64  # one scan, upscaled 8x
SPLIT = {"train": 0.6, "val": 0.15, "test": 0.25}  # shares of the 1,797 scans
EVAL_QUESTIONS = {"val": 200, "test": 400}
PAIRS_PER_SCAN = 1  # two-digit images per scan of the split (each scan is the left digit of this many)
TRIPLES_PER_SCAN = 0.5  # three-digit images per scan of the split
QUESTION_TYPES = ("digit", "parity", "larger", "sum", "count")
QUESTIONS = {
    "digit": "Which digit is this?",
    "parity": "Is the digit even or odd?",
    "larger": "Which digit is larger, the left or the right one?",
    "sum": "What is the sum of the two digits?",
    "count": "How many digits are in the image?",
}


def load_scans() -> list[tuple[list[list[int]], int]]:
    """The 1,797 scans as (8 x 8 grey levels 0-16, digit)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError("the digits task needs scikit-learn: pip install scikit-learn") from err
    digits = load_digits()
    return [(image.astype(int).tolist(), int(target)) for image, target in zip(digits.images, digits.target)]


def split_scans(count: int) -> dict[str, list[int]]:
    """Scan indices per split (`SPLIT`), by a fixed shuffle (seed 0)."""
    order = list(range(count))
    random.Random(0).shuffle(order)
    train_end = round(SPLIT["train"] * count)
    val_end = train_end + round(SPLIT["val"] * count)
    return {"train": sorted(order[:train_end]), "val": sorted(order[train_end:val_end]),
            "test": sorted(order[val_end:])}


def draw(scans: list[list[list[int]]]):
    """A square white RGB image with `scans` side by side across its middle, dark on white, each `DIGIT_PIXELS`
    square and `DIGIT_PIXELS / 8` apart (square, so that resizing for the vision tower keeps the digits' shape)."""
    from PIL import Image

    gap = DIGIT_PIXELS // 8
    side = len(scans) * DIGIT_PIXELS + (len(scans) + 1) * gap
    canvas = Image.new("RGB", (side, side), "white")
    for index, scan in enumerate(scans):
        tile = Image.new("L", (8, 8))
        tile.putdata([255 - round(255 * level / 16) for row in scan for level in row])
        tile = tile.resize((DIGIT_PIXELS, DIGIT_PIXELS), Image.NEAREST).convert("RGB")
        canvas.paste(tile, (gap + index * (DIGIT_PIXELS + gap), (side - DIGIT_PIXELS) // 2))
    return canvas


def questions_for(digits: list[int]) -> list[tuple[str, str, str]]:
    """(type, question, answer) of an image showing `digits` (left to right)."""
    if len(digits) == 1:
        (digit,) = digits
        parity = "odd" if digit % 2 else "even"
        return [("digit", QUESTIONS["digit"], str(digit)), ("parity", QUESTIONS["parity"], parity)]
    out = []
    if len(digits) == 2:
        left, right = digits
        out += [("larger", QUESTIONS["larger"], "left" if left > right else "right"),
                ("sum", QUESTIONS["sum"], str(left + right))]
    return out + [("count", QUESTIONS["count"], str(len(digits)))]


def split_images(scans: list, indices: list[int], rng: random.Random) -> list[list[int]]:
    """The images of one split as lists of scan indices: every scan alone, `PAIRS_PER_SCAN` pairs of different digits
    per scan and `TRIPLES_PER_SCAN` triples per scan, all from `indices`."""
    images = [[i] for i in indices]
    for left in indices * PAIRS_PER_SCAN:
        right = rng.choice([j for j in rng.sample(indices, 20) if scans[j][1] != scans[left][1]])
        images.append([left, right])
    images += [rng.sample(indices, 3) for _ in range(round(TRIPLES_PER_SCAN * len(indices)))]
    return images


def balanced_sample(items: list[dict], total: int, rng: random.Random) -> list[dict]:
    """`total` items, the same number of each question type (as near as `total` allows), shuffled."""
    by_type = {kind: [item for item in items if item["type"] == kind] for kind in QUESTION_TYPES}
    per_type = total // len(QUESTION_TYPES)
    chosen = [item for kind in QUESTION_TYPES for item in rng.sample(by_type[kind], per_type)]
    rng.shuffle(chosen)
    return chosen


def majority_baseline(train: list[dict], test: list[dict]) -> float:
    """Test accuracy of answering each question string with its most common training answer."""
    answers: dict[str, Counter] = {}
    for record in train:
        turns = record["conversations"]
        for question, answer in zip(turns[0::2], turns[1::2]):
            answers.setdefault(question["value"].replace("<image>\n", ""), Counter())[answer["value"]] += 1
    right = 0
    for record in test:
        question, answer = (turn["value"] for turn in record["conversations"])
        guess = answers.get(question.replace("<image>\n", ""), Counter()).most_common(1)
        right += bool(guess) and guess[0][0] == answer
    return right / len(test)


def prepare_digits() -> dict[str, Path]:
    """Build (once, cached) the digits task; returns {"train", "val", "test", "summary"} JSON paths and
    "image_folder"."""
    folder = cache_dir() / f"digits-v{FORMAT_VERSION}"
    paths = {name: folder / f"{name}.json" for name in ("train", "val", "test", "summary")}
    if all(path.is_file() for path in paths.values()):
        return {**paths, "image_folder": folder}
    scans = load_scans()
    rng = random.Random(0)
    files: dict[str, list[dict]] = {}
    counts = {}
    for split, indices in split_scans(len(scans)).items():
        items = []
        for number, image in enumerate(split_images(scans, indices, rng)):
            name = f"{split}/{number:05d}.png"
            (folder / split).mkdir(parents=True, exist_ok=True)
            draw([scans[i][0] for i in image]).save(folder / name)
            qas = questions_for([scans[i][1] for i in image])
            items += [{"image": name, "type": kind, "question": q, "answer": a} for kind, q, a in qas]
            if split == "train":
                conversation = []
                for k, (_, q, a) in enumerate(qas):
                    conversation += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + q},
                                     {"from": "gpt", "value": a}]
                files.setdefault("train", []).append({"id": f"train-{number}", "image": name,
                                                      "conversations": conversation})
        counts[split] = {"scans": len(indices), "questions": Counter(item["type"] for item in items)}
        if split != "train":
            files[split] = [{"id": f"{split}-{n}", "image": item["image"], "type": item["type"],
                             "conversations": [{"from": "human", "value": "<image>\n" + item["question"]},
                                               {"from": "gpt", "value": item["answer"]}]}
                            for n, item in enumerate(balanced_sample(items, EVAL_QUESTIONS[split], rng))]
    files["summary"] = {
        "source": "sklearn.datasets.load_digits (UCI optical recognition of handwritten digits, 8 x 8 scans)",
        "format_version": FORMAT_VERSION, "splits": counts,
        "majority_baseline_test_accuracy": majority_baseline(files["train"], files["test"]),
    }
    for name, data in files.items():
        with atomic_file(paths[name]) as staging:
            staging.write_text(json.dumps(data, indent=0))
    return {**paths, "image_folder": folder}
