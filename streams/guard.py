"""A limit on the share of rejected messages (cf. Arroyo's DlqLimit).

A bad deploy (wrong registry, wrong topic prefix, a contract change the sites
have not made) would otherwise pour every event into the dead-letter topic and
commit past it. Past the limit the worker stops before committing the batch,
so the messages are still there once the deployment is fixed.
"""

from __future__ import annotations

from collections import deque

from contracts.errors import ExnetError

__all__ = ["InvalidRatioExceeded", "InvalidRatioGuard"]


class InvalidRatioExceeded(ExnetError):
    """Too many of the recent messages were rejected: the deployment looks misconfigured."""


class InvalidRatioGuard:
    """Watches the rejected share over (at least) the last ``window`` messages."""

    def __init__(self, max_ratio: float, window: int) -> None:
        self._max_ratio = max_ratio
        self._window = window
        self._batches: deque[tuple[int, int]] = deque()
        self._total = 0
        self._rejected = 0

    def observe(self, total: int, rejected: int) -> None:
        """Record a batch; raise :class:`InvalidRatioExceeded` when past the limit."""
        self._batches.append((total, rejected))
        self._total += total
        self._rejected += rejected
        while self._batches and self._total - self._batches[0][0] >= self._window:
            old_total, old_rejected = self._batches.popleft()
            self._total -= old_total
            self._rejected -= old_rejected
        if self._max_ratio >= 1.0 or self._total < self._window:
            return
        ratio = self._rejected / self._total
        if ratio > self._max_ratio:
            raise InvalidRatioExceeded(
                f"{self._rejected} of the last {self._total} messages were rejected "
                f"({ratio:.0%} > EXNET_DLQ_MAX_RATIO={self._max_ratio:.0%}); stopping before "
                "committing them. Check the registry, topic prefix and contracts, then restart; "
                "the messages are still in Kafka."
            )
