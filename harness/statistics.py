# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""The statistics behind every comparison in examples/RESULTS.md and benchmarks/README.md.

Accuracy on n independent questions has the binomial standard error sqrt(p (1 - p) / n). Two methods trained with
the same seeds see the same data order, so their per-seed accuracies are paired; a paired t-test on the per-seed
differences (n - 1 degrees of freedom) decides whether a gap is clear. With 3 seeds the two-sided 95% critical value
is 4.30, not the normal 1.96: a rule like "|mean| > 2 std / sqrt(n)" calls noise a difference.

Two runs scored on the same questions are also paired question by question: McNemar's exact test asks whether the
questions only one of them answers split unevenly between them (a binomial test on those discordant questions).
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal


class HalfUp(float):
    """A number whose fixed-point formats (`.1f`, `+.1f`, ...) round halves away from zero, the one rounding rule of
    the reports: 1.75 -> 1.8, 3.25 -> 3.3, -11.75 -> -11.8. Python's own rounds an exact binary half to even
    (3.25 -> 3.2) and an inexact one by its binary value (a mean like 88.75 may print 88.7)."""

    def __format__(self, spec: str) -> str:
        match = re.fullmatch(r"([+ ]?)\.(\d+)f", spec)
        if not match:
            return float.__format__(self, spec)
        value = Decimal(repr(round(float(self), 9)))  # drop binary noise first: 88.74999999999999 is 88.75
        text = f"{value.quantize(Decimal(1).scaleb(-int(match.group(2))), rounding=ROUND_HALF_UP):f}"
        if text.startswith("-") and not text.strip("-0."):
            text = text[1:]  # no "-0.0"
        return (match.group(1) + text) if not text.startswith("-") else text


_INTEGRATION_STEPS = 4000  # Simpson steps for the t density; the quantile is then exact to ~1e-6


def binomial_se(accuracy: float, n: int) -> float:
    """Standard error of an accuracy (a fraction) measured on `n` independent questions."""
    return math.sqrt(accuracy * (1.0 - accuracy) / n)


def _t_density(x: float, df: int) -> float:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))


def _t_central_probability(x: float, df: int) -> float:
    """P(|T| < x) for Student's t with `df` degrees of freedom. The substitution x = tan(u) turns the heavy tail
    into a finite smooth interval (df = 1 is the Cauchy distribution), integrated by Simpson's rule."""
    upper = math.atan(x)
    h = upper / _INTEGRATION_STEPS
    total = 0.0
    for i in range(_INTEGRATION_STEPS + 1):
        u = i * h
        weight = 1 if i in (0, _INTEGRATION_STEPS) else (4 if i % 2 else 2)
        total += weight * _t_density(math.tan(u), df) / math.cos(u) ** 2
    return 2.0 * total * h / 3.0


def t_critical(df: int, confidence: float = 0.95) -> float:
    """The two-sided critical value of Student's t: P(|T| < value) = `confidence` with `df` degrees of freedom."""
    if df < 1:
        raise ValueError(f"t_critical needs at least 1 degree of freedom (2 paired values), got df={df}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    low, high = 0.0, 1.0
    while _t_central_probability(high, df) < confidence:
        high *= 2.0
    for _ in range(60):  # bisection: the interval shrinks to ~1e-18 of its start
        middle = (low + high) / 2.0
        if _t_central_probability(middle, df) < confidence:
            low = middle
        else:
            high = middle
    return (low + high) / 2.0


@dataclass(frozen=True)
class PairedComparison:
    """Per-seed differences a - b (in the units given), their mean, the 95% confidence half-width of the mean by a
    paired t-test, and whether the interval excludes 0 ("clear")."""

    differences: tuple[float, ...]
    mean: float
    half_width: float

    @property
    def clear(self) -> bool:
        return abs(self.mean) > self.half_width

    @property
    def p_value(self) -> float:
        """Two-sided p-value of the paired t-test (mean 0), `len(differences) - 1` degrees of freedom."""
        n = len(self.differences)
        spread = statistics.stdev(self.differences)
        if spread == 0:
            return 1.0 if self.mean == 0 else 0.0
        return 1.0 - _t_central_probability(abs(self.mean) / (spread / math.sqrt(n)), n - 1)

    def describe(self) -> str:
        return f"{HalfUp(self.mean):+.1f} ± {HalfUp(self.half_width):.1f}"


def paired_comparison(a: list[float], b: list[float], confidence: float = 0.95) -> PairedComparison:
    """Paired t-test of `a` against `b` (same seeds, same order). Needs at least 2 pairs."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same seeds: {len(a)} values against {len(b)}")
    if len(a) < 2:
        raise ValueError(f"a paired t-test needs at least 2 pairs, got {len(a)}")
    differences = tuple(x - y for x, y in zip(a, b))
    n = len(differences)
    half_width = t_critical(n - 1, confidence) * statistics.stdev(differences) / math.sqrt(n)
    return PairedComparison(differences, statistics.mean(differences), half_width)


def holm(p_values: list[float], alpha: float = 0.05) -> list[bool]:
    """Holm's step-down rule over one family of tests: which hypotheses are rejected (a difference detected) with a
    family-wise error rate of at most `alpha`. The smallest p-value is compared with alpha / m, the next with
    alpha / (m - 1), and so on, stopping at the first that fails."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    for rank, index in enumerate(order):
        if p_values[index] > alpha / (len(p_values) - rank):
            break
        rejected[index] = True
    return rejected


@dataclass(frozen=True)
class McNemar:
    """Questions only `a` answers, only `b` answers, and the exact two-sided p-value of that split under
    "neither is better" (each discordant question equally likely to go either way)."""

    only_a: int
    only_b: int
    p_value: float

    def describe(self) -> str:
        return f"{self.only_a}/{self.only_b}, p {self.p_value:.2f}"


def mcnemar_exact(a_correct: list[bool], b_correct: list[bool]) -> McNemar:
    """McNemar's exact test of two runs' per-question correctness (same questions, same order)."""
    if len(a_correct) != len(b_correct):
        raise ValueError(f"paired answers need the same questions: {len(a_correct)} against {len(b_correct)}")
    only_a = sum(1 for x, y in zip(a_correct, b_correct) if x and not y)
    only_b = sum(1 for x, y in zip(a_correct, b_correct) if y and not x)
    n, k = only_a + only_b, min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n  # P(X <= k), X ~ Binomial(n, 1/2)
    return McNemar(only_a, only_b, min(1.0, 2.0 * tail))
