"""The loop's stop rule and best-iteration choice, as pure functions."""

from __future__ import annotations

import math

import pytest

from stemloop.adapt.quality import best_iteration, should_stop


@pytest.mark.parametrize("history,patience,expected", [
    ([5.0], 1, False),                        # only the general model: always try once
    ([5.0, 6.0], 1, False),                   # improving
    ([5.0, 6.0, 6.05], 1, True),              # gain below min_delta
    ([5.0, 6.0, 5.0], 1, True),               # regression
    ([5.0, 6.0, 5.0], 2, False),              # patience 2: one bad iteration is allowed
    ([5.0, 6.0, 5.0, 5.9], 2, True),          # two without beating 6.0 + 0.1
    ([5.0, 6.0, 5.0, 6.2], 2, False),         # the second one beat it
    ([5.0, math.nan], 1, True),               # a failed score is no improvement
])
def test_should_stop_on_plateau(history, patience, expected):
    assert should_stop(history, min_delta=0.1, patience=patience, max_iterations=10) is expected


def test_should_stop_at_max_iterations_even_while_improving():
    assert should_stop([1.0, 2.0, 3.0], 0.1, 1, max_iterations=3) is False
    assert should_stop([1.0, 2.0, 3.0, 4.0], 0.1, 1, max_iterations=3) is True


def test_best_iteration_is_not_the_last():
    assert best_iteration([5.0, 6.0, 5.5]) == 1
    assert best_iteration([5.0, 5.0]) == 0
    assert best_iteration([math.nan, -1.0]) == 1
    with pytest.raises(ValueError):
        best_iteration([])
