"""A deterministic stream of thousands of valid events (with exact duplicates) for fault tests."""

from __future__ import annotations

import random
from typing import Any

from contracts.topics import Topic
from tests.pipeline.events import EventMaker

__all__ = ["participant_events"]

SITES = ("N01-S01", "N01-S02", "N01-S03", "N02-S01", "N02-S02", "N03-S01", "N03-S02", "N03-S03")
ARMS = ("aerobic", "resistance", "combined", "control")
TOPIC_OF = {
    "enrollment": Topic.ENROLLMENT,
    "session": Topic.SESSION,
    "assay": Topic.ASSAY,
    "assessment": Topic.ASSESSMENT,
}


def participant_events(seed: int, participants: int) -> list[tuple[Topic, dict[str, Any]]]:
    """About 15 events per participant, in a shuffled cross-topic order."""
    rng = random.Random(seed)
    make = EventMaker(seed=seed)
    events: list[dict[str, Any]] = []
    for index in range(participants):
        who = f"P-{seed:04x}{index:08x}"
        site = rng.choice(SITES)
        arm = rng.choice(ARMS)
        events.append(make.enrollment(who, site, "screened", day=0))
        events.append(
            make.enrollment(
                who,
                site,
                "randomized",
                day=2,
                modality=arm,
                adjunct=rng.choice(("none", "none", "psychotherapy")),
            )
        )
        if arm != "control":
            for number in range(1, 7):
                status = rng.choice(("attended", "attended", "attended", "missed", "cancelled"))
                events.append(
                    make.session(
                        who,
                        site,
                        number,
                        status,
                        day=2 + number,
                        modality=arm if arm != "control" else "aerobic",
                        duration=float(rng.randint(20, 60)),
                    )
                )
        baseline = rng.randint(10, 27)
        events.append(make.assessment(who, site, "PHQ9", baseline, week=0))
        events.append(make.assessment(who, site, "PHQ9", rng.randint(0, baseline), week=8))
        events.append(
            make.assay(
                who,
                site,
                f"S{seed:04x}{index:06x}",
                "BDNF",
                float(rng.randint(5000, 40000)),
                "pg/mL",
            )
        )
        if rng.random() < 0.2:
            events.append(make.enrollment(who, site, "withdrawn", day=30, reason="other"))
    rng.shuffle(events)
    return [(TOPIC_OF[event["schema"].split("/")[0]], event) for event in events]
