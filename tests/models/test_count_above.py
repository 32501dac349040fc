"""count_above's tie rule: equal vectors tie however a matrix product rounds their scores."""

from __future__ import annotations

import numpy as np

from onevec.models.ranking import count_above

NO_SKIP = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))


def _priorities(values: list[int]) -> object:
    table = np.asarray(values, dtype=np.int64)
    return lambda columns: table[columns]


def test_scores_a_few_ulp_apart_tie_and_priority_decides() -> None:
    """A BLAS kernel can round the score of one of two equal vectors an ulp apart (by the
    column it sits in); both must count as tied with the target, whichever side they land."""
    target = np.float32(0.7)
    up, down = np.nextafter(target, np.float32(1)), np.nextafter(target, np.float32(0))
    block = np.array([[up, down, target, np.float32(0.9), np.float32(0.1)]], dtype=np.float32)
    # Priorities: the first two outrank the target, the third does not.
    above = count_above(block, np.array([target]), np.array([5]), _priorities([9, 9, 1, 0, 0]), NO_SKIP)
    assert above.tolist() == [3]  # 0.9, and the two tied ones with the higher priority
    above = count_above(block, np.array([target]), np.array([5]), _priorities([1, 1, 1, 0, 0]), NO_SKIP)
    assert above.tolist() == [1]  # only 0.9: the near-equal ones lose the tie


def test_distinct_small_scores_stay_apart() -> None:
    """The tolerance is relative: a baseline's small exact scores (a decayed count of 1e-7
    against none) are not merged into ties."""
    block = np.array([[0.0, 1e-7, 2e-7]])  # column 1 is the target itself: skipped, as callers do
    target = (np.array([0]), np.array([1]))
    above = count_above(block, np.array([1e-7]), np.array([0]), _priorities([9, 9, 9]), target)
    assert above.tolist() == [1]  # only 2e-7; the zero is below, whatever its priority
