# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""harness.training.StepTimer: a Trainer step's duration and its phases, from the Trainer's callback events."""

import time

from harness.training import StepTimer


def test_phases_follow_the_trainer_events_and_sum_to_the_step():
    timer = StepTimer()
    waits = {"forward_backward_clip": 0.03, "optimizer": 0.02, "after_optimizer": 0.01}
    timer.on_step_begin(None, None, None)
    time.sleep(waits["forward_backward_clip"])
    timer.on_pre_optimizer_step(None, None, None)
    time.sleep(waits["optimizer"])
    timer.on_optimizer_step(None, None, None)
    time.sleep(waits["after_optimizer"])
    timer.on_step_end(None, None, None)
    phases = timer.median_phases()
    assert all(phases[name] >= wait for name, wait in waits.items())
    assert abs(sum(phases.values()) - timer.durations[0]) < 1e-9  # consecutive marks: nothing between phases is lost

    # a step without the optimizer events (skipped) counts in the durations but not in the phases
    timer.on_step_begin(None, None, None)
    timer.on_step_end(None, None, None)
    assert len(timer.durations) == 2 and all(len(values) == 1 for values in timer.phases.values())
    assert StepTimer().median_phases() == dict.fromkeys(StepTimer.PHASES)
