"""The invalid-ratio limit stops a misconfigured deployment, and only that: one site's
flood of bad data is that site's, and every other site's events flow."""

from __future__ import annotations

import logging

import pytest

from streams.guard import InvalidRatioExceeded, InvalidRatioGuard

SITES = [f"N01-S{n:02d}" for n in range(1, 9)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guard(window: int = 100, max_ratio: float = 0.5, sites_required: int = 2) -> InvalidRatioGuard:
    return InvalidRatioGuard(max_ratio, window, sites_required=sites_required, clock=Clock())


def test_below_the_window_nothing_trips_even_if_all_are_rejected() -> None:
    guard(window=100).observe({None: (99, 99)})


def test_messages_that_name_no_site_never_trip_it_however_many() -> None:
    # One producer's garbage (empty values, not JSON) names no site of the network:
    # it must not stop every site's events.
    limit = guard(window=100)
    for _ in range(50):
        limit.observe({None: (50, 50)})
    limit.observe({None: (40, 40), "N01-S01": (10, 0)})  # the sites' events still flow


def test_no_site_garbage_beside_most_sites_failing_still_trips_it() -> None:
    limit = guard(window=100)
    with pytest.raises(InvalidRatioExceeded, match=r"of the last 100 messages were rejected") as e:
        limit.observe({None: (40, 40), "N01-S01": (30, 30), "N02-S01": (30, 30)})
    assert "2 of the 2 sites sending have more than 50% of their messages" in str(e.value)
    assert "EXNET_DLQ_MAX_RATIO=50%" in str(e.value)


def test_most_sites_failing_trips_it() -> None:
    """A registry that matches no site: every site's messages are rejected."""
    limit = guard(window=80)
    with pytest.raises(InvalidRatioExceeded, match=r"8 of the 8 sites sending") as e:
        limit.observe(dict.fromkeys(SITES, (10, 10)))
    assert "N01-S01" in str(e.value) and "..." in str(e.value)


def test_one_sites_flood_does_not_trip_it_and_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limit = guard(window=100)
    caplog.set_level(logging.WARNING, "streams.guard")
    for _ in range(50):
        batch: dict[str | None, tuple[int, int]] = dict.fromkeys(SITES[1:], (2, 0))
        batch[SITES[0]] = (200, 200)  # 93% of the window, all rejected
        limit.observe(batch)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1  # once a minute, not per batch
    assert warnings[0].startswith("site N01-S01: ") and "other sites' events flow" in warnings[0]


def test_a_flood_alone_in_the_window_does_not_trip_it() -> None:
    """At start-up a backfill may fill the whole window before any other site is read."""
    limit = guard(window=100)
    for _ in range(10):
        limit.observe({SITES[0]: (100, 100)})


def test_sites_accepted_recently_count_as_sending() -> None:
    clock = Clock()
    limit = InvalidRatioGuard(0.5, 100, sites_required=2, clock=clock)
    limit.observe(dict.fromkeys(SITES, (1, 0)))  # eight healthy sites
    clock.now += 60
    # Three sites flood while the other five are quiet: three of eight is not most.
    for _ in range(5):
        limit.observe(dict.fromkeys(SITES[:3], (100, 100)))
    # Ten minutes on, the quiet sites are forgotten: three of three sending fail.
    clock.now += 601
    with pytest.raises(InvalidRatioExceeded, match=r"3 of the 3 sites sending"):
        limit.observe(dict.fromkeys(SITES[:3], (100, 100)))


def test_half_the_sites_failing_is_not_most() -> None:
    limit = guard(window=80)
    limit.observe({site: (10, 10 if n < 4 else 0) for n, site in enumerate(SITES)})


def test_a_network_of_one_site_trips_on_that_site() -> None:
    limit = guard(window=100, sites_required=1)
    with pytest.raises(InvalidRatioExceeded, match=r"1 of the 1 sites sending"):
        limit.observe({SITES[0]: (100, 100)})


def test_old_batches_leave_the_window() -> None:
    limit = guard(window=100)
    limit.observe({None: (100, 100 - 60)})  # 40% rejected
    for _ in range(10):
        limit.observe({None: (100, 10)})  # healthy traffic pushes the old batch out
    limit.observe({None: (100, 50)})  # 50% is not above 50%


def test_a_ratio_of_one_disables_the_limit() -> None:
    limit = guard(window=10, max_ratio=1.0)
    limit.observe({None: (1000, 1000)})
    limit.observe(dict.fromkeys(SITES, (1000, 1000)))
