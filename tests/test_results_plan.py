# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""The experiment plan behind examples/RESULTS.md: derived lengths and layer ranges."""

import pytest

from examples.results_plan import LONG_STEP_CHOICES, VAL_QUESTIONS, layer_range, long_steps


@pytest.mark.parametrize(
    "num_layers, expected",
    [(30, {"first": "0-9", "middle": "10-19", "last": "20-29"}),
     (31, {"first": "0-9", "middle": "10-20", "last": "21-30"})],  # the middle third takes the remainder
)
def test_layer_thirds_cover_every_layer_once(num_layers, expected):
    assert {third: layer_range(third, num_layers) for third in expected} == expected


def _pilot(accuracies):
    return {"result": {"curve": [{"step": 40 * (i + 1), "val_accuracy": a} for i, a in enumerate(accuracies)]}}


def test_long_steps_is_the_first_choice_within_one_standard_error_of_the_best():
    assert VAL_QUESTIONS == 200 and LONG_STEP_CHOICES == (320, 480, 640)
    # best 0.96 at step 520; s.e. sqrt(0.96 * 0.04 / 200) = 0.0139, so 0.95 at step 440 is within it
    rising = [0.5] * 8 + [0.8, 0.8, 0.95, 0.95, 0.96, 0.9, 0.9, 0.9]
    assert long_steps(_pilot(rising)) == 480
    # still rising at the end: the longest choice
    assert long_steps(_pilot([0.5 + 0.03 * i for i in range(16)])) == 640
    # flat from the start: the shortest
    assert long_steps(_pilot([0.9] * 16)) == 320
    assert long_steps(None) is None
