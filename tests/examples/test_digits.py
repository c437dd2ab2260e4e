# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""harness.digits: the second VQA task, built from scikit-learn's digit scans."""

import json
import random
from collections import Counter

import pytest
from PIL import Image

from harness import digits
from harness.data import load_llava_json


pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PEFT_MFT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield digits.prepare_digits()


def test_scans_are_split_once_and_every_image_uses_its_splits_scans_only():
    parts = digits.split_scans(1797)
    assert sum(len(p) for p in parts.values()) == 1797 and len(set().union(*parts.values())) == 1797
    assert [len(parts[s]) for s in ("train", "val", "test")] == [1078, 270, 449]
    scans = digits.load_scans()
    for split, indices in parts.items():
        images = digits.split_images(scans, indices, random.Random(0))
        assert {i for image in images for i in image} <= set(indices)
        assert all(scans[a][1] != scans[b][1] for a, b in (image for image in images if len(image) == 2))


def test_questions_and_answers_follow_the_digits():
    assert digits.questions_for([7]) == [("digit", digits.QUESTIONS["digit"], "7"),
                                         ("parity", digits.QUESTIONS["parity"], "odd")]
    assert [a for _, _, a in digits.questions_for([3, 8])] == ["right", "11", "2"]
    assert [a for _, _, a in digits.questions_for([4, 0, 9])] == ["3"]


def test_the_files_are_llava_json_with_balanced_held_out_sets(built):
    test = json.loads(built["test"].read_text())
    assert Counter(r["type"] for r in test) == {kind: 80 for kind in digits.QUESTION_TYPES}
    assert len(json.loads(built["val"].read_text())) == 200
    records = load_llava_json(built["train"], built["image_folder"])  # the harness's own checks pass
    assert len(records) == 1078 + 1078 + 539
    held_out = {r["image"] for name in ("val", "test") for r in json.loads(built[name].read_text())}
    assert not held_out & {r["image"] for r in json.loads(built["train"].read_text())}
    for record in test[:5]:
        image = Image.open(built["image_folder"] / record["image"])
        assert image.width == image.height and image.mode == "RGB"


def test_the_majority_baseline_is_recorded_and_computed_per_question_string(built):
    summary = json.loads(built["summary"].read_text())
    assert 0.3 < summary["majority_baseline_test_accuracy"] < 0.45
    question = {"from": "human", "value": "<image>\nIs the digit even or odd?"}
    train = [{"conversations": [question, {"from": "gpt", "value": "even"}]}] * 2 + [
        {"conversations": [question, {"from": "gpt", "value": "odd"}]}]
    test = [{"conversations": [question, {"from": "gpt", "value": answer}]} for answer in ("even", "odd", "even")]
    assert digits.majority_baseline(train, test) == 2 / 3
