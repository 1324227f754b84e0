"""The invalid-ratio limit stops a misconfigured deployment, and only that."""

from __future__ import annotations

import pytest

from streams.guard import InvalidRatioExceeded, InvalidRatioGuard


def test_below_the_window_nothing_trips_even_if_all_are_rejected() -> None:
    guard = InvalidRatioGuard(max_ratio=0.5, window=100)
    guard.observe(99, 99)


def test_past_the_ratio_over_a_full_window_it_trips_with_a_clear_message() -> None:
    guard = InvalidRatioGuard(max_ratio=0.5, window=100)
    guard.observe(50, 10)
    with pytest.raises(InvalidRatioExceeded, match=r"of the last 100 messages were rejected"):
        guard.observe(50, 45)


def test_old_batches_leave_the_window() -> None:
    guard = InvalidRatioGuard(max_ratio=0.5, window=100)
    guard.observe(100, 100 - 60)  # 40% rejected
    for _ in range(10):
        guard.observe(100, 10)  # healthy traffic pushes the old batch out
    guard.observe(100, 50)  # 50% is not above 50%


def test_a_ratio_of_one_disables_the_limit() -> None:
    guard = InvalidRatioGuard(max_ratio=1.0, window=10)
    guard.observe(1000, 1000)
