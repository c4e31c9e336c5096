"""The loop's stop rule and best-iteration choice, as pure functions."""

from __future__ import annotations

import math

import pytest

from stemloop.adapt.quality import best_iteration, delivered_iteration, should_stop
from stemloop.names import PSEUDO_SI_SDR, QUALITY


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


def _history(*pairs: tuple[float, float]) -> list[dict[str, float]]:
    return [{QUALITY: q, PSEUDO_SI_SDR: p} for q, p in pairs]


def test_delivery_skips_iterations_that_lost_the_recordings_own_voice():
    # drama-cs-nl-48k (development set, tuning half): the estimate rose, the truth fell
    # 15.05 -> 14.80 -> 14.64, and the pseudo-reference fell 3.63 -> 1.88 -> 1.83
    history = _history((19.71, 3.63), (19.85, 1.88), (20.04, 1.83))
    assert delivered_iteration(history, None) == 2
    assert delivered_iteration(history, 0.5) == 0
    assert delivered_iteration(history, 2.0) == 2
    # notice-fr-16k: both rose, the truth too (12.33 -> 13.15): the guard changes nothing
    assert delivered_iteration(_history((16.44, 6.08), (17.78, 6.28), (18.17, 6.95)), 0.5) == 2
    # a dip within the guard is allowed; no pseudo-reference (nothing held out): no guard
    assert delivered_iteration(_history((10.0, 5.0), (11.0, 4.6)), 0.5) == 1
    assert delivered_iteration([{QUALITY: 10.0}, {QUALITY: 11.0}], 0.5) == 1
    assert delivered_iteration(_history((10.0, math.nan), (11.0, 1.0)), 0.5) == 1
