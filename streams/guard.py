"""A limit on rejected messages that stops a misconfigured deployment, not one site's bad data
(cf. Arroyo's DlqLimit).

A bad deploy (a registry that matches no site, the wrong topic prefix, a
contract change the sites have not made) pours every site's events into the
dead-letter topic and would commit past them. The guard stops the worker
before committing the batch, so the messages are still in Kafka once the
deployment is fixed.

One site's flood of bad events (a backfill with a broken column) is not a bad
deploy: it is rejected as usual, counted per site
(``exnet_site_events_rejected_total``, alert ``ExnetSiteRejectingMost``), and
every other site's events flow. So the guard trips only when, over the last
``window`` messages,

1. more than ``max_ratio`` of them were rejected, and
2. the rejections are spread: more than ``max_ratio`` of each of at least
   ``sites_required`` sites' messages were rejected, and those failing sites are
   more than half of the sites known to be sending (those in the window, and
   those whose events were accepted within the last ``memory_s`` seconds).

Messages that name no site (empty, not JSON, no ``site_id``) never trip it,
however many: they come from no site of the network, so a single producer
anywhere could otherwise stop every site's events with a few thousand of them
(an outside test did, with 2,100 empty messages). They are rejected and counted
like any others, and ``ExnetDeadLetterRatioHigh`` alerts on their share.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping

from contracts.errors import ExnetError

__all__ = ["InvalidRatioExceeded", "InvalidRatioGuard", "SiteCounts"]

log = logging.getLogger(__name__)

#: One batch's messages by the site they name (None: none) -> (received, rejected).
SiteCounts = Mapping[str | None, tuple[int, int]]

#: Seconds a site that had events accepted counts as sending, after its last one.
MEMORY_S = 600.0
#: Seconds between warnings about one failing site.
WARN_EVERY_S = 60.0
#: Rejections of one site in the window before it is warned about (a stray bad
#: message is the rejection's business, not an operator's).
WARN_AT_LEAST = 20


class InvalidRatioExceeded(ExnetError):
    """Most recent messages were rejected, across most sites: the deployment looks misconfigured."""


class InvalidRatioGuard:
    """Watches the rejected share, by site, over (at least) the last ``window`` messages.

    ``sites_required``: the fewest failing sites that can mean a bad deploy
    (``min(2, registered sites)``: one site alone is that site's data, unless
    the network has one site). ``clock``: monotonic seconds (for the tests).
    """

    def __init__(
        self,
        max_ratio: float,
        window: int,
        sites_required: int = 2,
        memory_s: float = MEMORY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_ratio = max_ratio
        self._window = window
        self._sites_required = max(1, sites_required)
        self._memory_s = memory_s
        self._clock = clock
        self._batches: deque[SiteCounts] = deque()
        self._received: Counter[str | None] = Counter()
        self._rejected: Counter[str | None] = Counter()
        self._total = 0
        #: site -> when its events were last accepted.
        self._accepted_at: dict[str, float] = {}
        self._warned_at: dict[str, float] = {}

    def observe(self, batch: SiteCounts) -> None:
        """Record a batch; raise :class:`InvalidRatioExceeded` when past the limit."""
        now = self._clock()
        self._add(batch, 1)
        self._batches.append(batch)
        for site, (received, rejected) in batch.items():
            if site is not None and received > rejected:
                self._accepted_at[site] = now
        while self._batches and self._total - _size(self._batches[0]) >= self._window:
            self._add(self._batches.popleft(), -1)
        if self._max_ratio >= 1.0 or self._total < self._window:
            return
        rejected = sum(self._rejected.values())
        failing = sorted(
            site
            for site, count in self._rejected.items()
            if site is not None and count > self._max_ratio * self._received[site]
        )
        self._warn(failing, now)
        if rejected <= self._max_ratio * self._total:
            return
        for site in [s for s, t in self._accepted_at.items() if now - t > self._memory_s]:
            del self._accepted_at[site]
        sending = {s for s in self._received if s is not None} | set(self._accepted_at)
        if len(failing) < self._sites_required or 2 * len(failing) <= len(sending):
            return  # one site's (or a few sites', or no site's) bad data: rejected, counted
        spread = (
            f"{len(failing)} of the {len(sending)} sites sending have more than "
            f"{self._max_ratio:.0%} of their messages rejected "
            f"({', '.join(failing[:5])}{', ...' if len(failing) > 5 else ''})"
        )
        raise InvalidRatioExceeded(
            f"{rejected} of the last {self._total} messages were rejected "
            f"({rejected / self._total:.0%} > EXNET_DLQ_MAX_RATIO={self._max_ratio:.0%}), and "
            f"{spread}; stopping before committing them. Check the registry, topic prefix "
            "and contracts, then restart; the messages are still in Kafka."
        )

    def _add(self, batch: SiteCounts, sign: int) -> None:
        for site, (received, rejected) in batch.items():
            self._received[site] += sign * received
            self._rejected[site] += sign * rejected
            self._total += sign * received
            if sign < 0 and self._received[site] == 0:
                del self._received[site], self._rejected[site]

    def _warn(self, failing: list[str], now: float) -> None:
        if len(self._warned_at) > 1_000:  # unregistered site ids are unbounded: forget old ones
            self._warned_at = {s: t for s, t in self._warned_at.items() if now - t < WARN_EVERY_S}
        for site in failing:
            if self._rejected[site] < WARN_AT_LEAST:
                continue
            if now - self._warned_at.get(site, -WARN_EVERY_S) >= WARN_EVERY_S:
                self._warned_at[site] = now
                log.warning(
                    "site %s: %d of its last %d messages were rejected; they go to the "
                    "dead-letter topic while the other sites' events flow",
                    site,
                    self._rejected[site],
                    self._received[site],
                )


def _size(batch: SiteCounts) -> int:
    return sum(received for received, _ in batch.values())
