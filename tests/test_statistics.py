# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""harness.statistics against published values and hand-computed tests."""

import math

import pytest

from harness.statistics import binomial_se, mcnemar_exact, paired_comparison, t_critical


@pytest.mark.parametrize(
    "df, expected",
    # two-sided 95% values of Student's t from the standard tables (e.g. NIST/SEMATECH e-Handbook, Table 1.3.6.7.2)
    [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (9, 2.262), (30, 2.042)],
)
def test_t_critical_matches_published_table(df, expected):
    assert t_critical(df) == pytest.approx(expected, abs=1e-3)


def test_t_critical_other_confidence_and_bad_input():
    assert t_critical(5, confidence=0.99) == pytest.approx(4.032, abs=1e-3)  # the same table's 99% column
    with pytest.raises(ValueError, match="df=0"):
        t_critical(0)
    with pytest.raises(ValueError, match="confidence"):
        t_critical(3, confidence=1.0)


def test_binomial_se_by_hand():
    assert binomial_se(0.9, 400) == pytest.approx(0.015)  # sqrt(0.09 / 400)
    assert binomial_se(0.5, 100) == pytest.approx(0.05)


def test_paired_comparison_within_noise_and_clear():
    # differences 1, 2, 3: mean 2, std 1, half-width 4.303 / sqrt(3) = 2.484 > 2: not clear
    noisy = paired_comparison([71.0, 72.0, 73.0], [70.0, 70.0, 70.0])
    assert noisy.differences == (1.0, 2.0, 3.0)
    assert noisy.mean == pytest.approx(2.0)
    assert noisy.half_width == pytest.approx(4.303 / math.sqrt(3), abs=1e-3)
    assert not noisy.clear
    # differences 4.9, 5.0, 5.1: std 0.1, half-width 0.248 < 5: clear
    steady = paired_comparison([74.9, 75.0, 75.1], [70.0, 70.0, 70.0])
    assert steady.clear and steady.describe() == "+5.0 ± 0.2"


def test_paired_comparison_needs_matching_pairs():
    with pytest.raises(ValueError, match="same seeds"):
        paired_comparison([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least 2 pairs"):
        paired_comparison([1.0], [1.0])


def test_mcnemar_exact_by_hand():
    # 6 questions only a answers, 1 only b, 3 both, 2 neither: P(X <= 1 | n=7) = 8 / 128, two-sided 0.125
    a = [True] * 6 + [False] + [True] * 3 + [False] * 2
    b = [False] * 6 + [True] + [True] * 3 + [False] * 2
    test = mcnemar_exact(a, b)
    assert (test.only_a, test.only_b) == (6, 1) and test.p_value == pytest.approx(0.125)
    assert test.describe() == "6/1, p 0.12"
    # 10 against 0: 2 / 1024, the textbook clear case (p < 0.05)
    assert mcnemar_exact([True] * 10, [False] * 10).p_value == pytest.approx(2 / 1024)
    # no discordant question, or an even split: p = 1
    assert mcnemar_exact([True, False], [True, False]).p_value == 1.0
    assert mcnemar_exact([True, False], [False, True]).p_value == 1.0
    with pytest.raises(ValueError, match="same questions"):
        mcnemar_exact([True], [True, False])


def test_correctness_text_round_trips_and_rejects_other_characters():
    from harness.evaluation import correctness_from_text, correctness_text

    text = correctness_text([{"correct": True}, {"correct": False}, {"correct": True}])
    assert text == "101" and correctness_from_text(text) == [True, False, True]
    with pytest.raises(ValueError, match=r"only '0' and '1', got \['2', 'x'\]"):
        correctness_from_text("10x2")


def test_halfup_rounds_every_half_away_from_zero_whatever_its_binary_value():
    from harness.statistics import HalfUp

    # Python's own format gives 1.8, 3.2 and -11.8 here: halves to even, so neighbouring tables disagreed
    assert [format(HalfUp(v), "+.1f") for v in (1.75, 3.25, -11.75, -3.25)] == ["+1.8", "+3.3", "-11.8", "-3.3"]
    assert format(HalfUp(100 * 0.8875), ".1f") == "88.8"  # 88.74999999999999 in binary
    assert format(HalfUp(-0.04), "+.1f") == "+0.0" and format(HalfUp(2), ".2f") == "2.00"


def test_the_paired_t_p_value_matches_the_interval_and_a_published_value():
    from harness.statistics import paired_comparison

    # differences 1, 2, 3: mean 2, sd 1, t = 2 * sqrt(3) = 3.464 with 2 df; two-sided p = 0.0742 (t tables)
    test = paired_comparison([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert abs(test.p_value - 0.0742) < 5e-4 and not test.clear
    clear = paired_comparison([5.0, 5.2, 4.9, 5.1], [0.0, 0.0, 0.0, 0.0])
    assert clear.clear and clear.p_value < 0.05


def test_holm_steps_down_and_stops_at_the_first_failure():
    from harness.statistics import holm

    # m = 3: 0.01 <= 0.05/3, 0.02 <= 0.05/2, 0.04 <= 0.05/1: all rejected
    assert holm([0.04, 0.01, 0.02]) == [True, True, True]
    # 0.03 > 0.05/2 stops the procedure: 0.045 is not rejected although it is below 0.05
    assert holm([0.01, 0.03, 0.045]) == [True, False, False]
    assert holm([0.2]) == [False] and holm([0.04]) == [True]
