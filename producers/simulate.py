"""A seeded, realistic network of sites publishing events: the demo's and benchmarks' source.

:func:`generate` is pure: the same registry, configuration and seed give the
same messages, byte for byte. It follows each participant through the trial
(screened -> consented -> randomized -> withdrawn or completed), with ~3
exercise sessions a week for 12 weeks (none in the control arm), depression
ratings (PHQ-9, HAM-D) at weeks 0, 4, 8 and 12 that improve more in the
exercise arms, and biomarker assays at baseline, mid-programme, post and
around single exercise bouts, reported by each node's labs in mixed units.
Every timestamp lies between :data:`STUDY_START` and :data:`STUDY_ANCHOR`, in
the past, in each site's local time: its registry ``timezone`` (daylight saving
included), or a fixed UTC offset per node for a site the registry gives none.

On request it mixes in deliberately invalid messages (one reason each),
exact duplicates (byte-identical or reformatted) and conflicting duplicates
(same ``event_id``, other content), always after their original in the same
partition. :class:`SimulationResult` states what the pipeline must make of
them: accepted events per type, duplicates, rejections per reason, and the
figures the analytics views must show (computed by the views' one oracle,
:func:`contracts.views.compute_views`, from the events it generated).

:func:`simulate` writes the messages to a JSON Lines file or publishes them
with a plain Kafka producer: invalid messages must reach Kafka, so this
bypasses the validating :class:`~producers.Publisher`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, get_args
from zoneinfo import ZoneInfo

import orjson
from kafka import KafkaProducer
from kafka.errors import KafkaError

from contracts import (
    ANALYTE_UNITS,
    CANONICAL_UNIT,
    INSTRUMENT_MAX,
    MAX_MESSAGE_BYTES,
    SCHEMAS,
    EventBase,
    NetworkRegistry,
    Reason,
    Topic,
    load_registry,
    topic_name,
)
from contracts.enrollment import Adjunct, AgeBand, Arm, Sex, WithdrawalReason
from contracts.errors import RecoverableError, UserError
from contracts.session import AdverseEvent
from contracts.views import Views, compute_views
from exnet.settings import Settings
from producers.publisher import FLUSH_TIMEOUT_S, producer_config, require_input_topics

__all__ = [
    "DEFAULT_INVALID_KINDS",
    "DEFAULT_PARTICIPANTS",
    "DEFAULT_SEED",
    "INVALID_KINDS",
    "STUDY_ANCHOR",
    "STUDY_START",
    "MessageKind",
    "SimMessage",
    "Simulation",
    "SimulationConfig",
    "SimulationResult",
    "generate",
    "simulate",
]

log = logging.getLogger(__name__)

DEFAULT_SEED: Final = 42
#: ~15k events: a demo in seconds. ``participants=1500`` gives ~100k events.
DEFAULT_PARTICIPANTS: Final = 200

#: The study's fixed calendar: output never depends on the clock, and every
#: ``occurred_at`` is long past (never ``future_timestamp``).
STUDY_START: Final = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday
STUDY_ANCHOR: Final = datetime(2026, 1, 5, tzinfo=UTC)
#: Enrolment closes this long before the anchor, so that every programme
#: (~3 weeks to randomize, 12 weeks of sessions, post assays) ends before it.
_ENROLMENT_TAIL: Final = timedelta(weeks=19)
PROGRAMME_WEEKS: Final = 12
SESSIONS_PER_WEEK: Final = 3
ASSESSMENT_WEEKS: Final = (0, 4, 8, 12)
#: A timestamp far in the future, for the opt-in ``future_timestamp`` messages.
_FAR_FUTURE: Final = datetime(2099, 1, 1, 9, 0, tzinfo=UTC)


# A kind of deliberately invalid message is the reason it must be rejected with:
# a :class:`~contracts.Reason`. :data:`INVALID_KINDS` lists those it can make.

#: Included unless asked otherwise; future timestamps and oversized messages are opt-in.
DEFAULT_INVALID_KINDS: Final[tuple[Reason, ...]] = (
    Reason.MALFORMED_JSON,
    Reason.UNKNOWN_SCHEMA,
    Reason.INVALID_FIELD,
    Reason.KEY_MISMATCH,
    Reason.UNKNOWN_SITE,
)


class MessageKind(StrEnum):
    EVENT = "event"  # an original, valid event: accepted
    DUPLICATE = "duplicate"  # same event again, same content: dropped as a duplicate
    CONFLICT = "conflict"  # same event_id, other content: conflicting_duplicate
    INVALID = "invalid"  # rejected with ``expected``


@dataclass(frozen=True, slots=True)
class SimMessage:
    """One Kafka message to produce: logical topic, key, value, and its expected fate."""

    topic: Topic
    key: bytes | None
    value: bytes
    kind: MessageKind
    #: The rejection reason the pipeline must give it (None: accepted or duplicate).
    expected: Reason | None = None


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    seed: int = DEFAULT_SEED
    participants: int = DEFAULT_PARTICIPANTS
    #: Invalid messages, as a share of the generated (valid) events.
    invalid_share: float = 0.0
    #: Exact duplicates (half byte-identical, half reformatted), as a share of the events.
    duplicate_share: float = 0.0
    #: Same event_id with other content, as a share of the events.
    conflict_share: float = 0.0
    #: The reasons the invalid messages must be rejected with (of :data:`INVALID_KINDS`).
    invalid_kinds: tuple[Reason, ...] = DEFAULT_INVALID_KINDS
    #: Messages will be written without keys (a file): no ``key_mismatch`` cases.
    keyless: bool = False

    def __post_init__(self) -> None:
        if self.participants < 0:
            raise UserError("the number of participants cannot be negative")
        for name in ("invalid_share", "duplicate_share", "conflict_share"):
            share = getattr(self, name)
            if not 0.0 <= share <= 1.0:
                raise UserError(f"{name.replace('_', '-')} must lie between 0 and 1, not {share}")
        unknown = [str(kind) for kind in self.invalid_kinds if kind not in INVALID_KINDS]
        if unknown:
            raise UserError(
                f"cannot make invalid messages of kind {', '.join(unknown)} "
                f"(only {', '.join(INVALID_KINDS)})"
            )
        if self.invalid_share > 0 and not self.usable_invalid_kinds:
            raise UserError("no kind of invalid message is left to generate")

    @property
    def usable_invalid_kinds(self) -> tuple[Reason, ...]:
        if self.keyless:
            return tuple(k for k in self.invalid_kinds if k is not Reason.KEY_MISMATCH)
        return self.invalid_kinds


@dataclass(frozen=True)
class SimulationResult:
    """What was produced and what the pipeline must make of it.

    ``events`` (per event type) is the number of accepted rows expected in the
    fact tables; ``duplicates`` the messages dropped as exact duplicates;
    ``rejected`` the messages rejected, per reason (conflicting duplicates
    included). ``views`` holds the figures every analytics view must show
    (``node_summary`` with a row per registered node).
    """

    seed: int
    participants: int
    messages: int
    #: Messages per logical topic, every kind included.
    per_topic: dict[str, int]
    events: dict[str, int]
    duplicates: dict[str, int]
    rejected: dict[str, int]
    views: Views
    keyless: bool = False
    #: Physical topics, when published; the file, when written.
    destination: str = ""

    @property
    def accepted(self) -> int:
        return sum(self.events.values())

    @property
    def duplicate_total(self) -> int:
        return sum(self.duplicates.values())

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the views as ``network``, ``nodes`` and ``arms`` (network scope,
        keyed ``"modality/adjunct"``)."""
        arms = {
            f"{key.modality}/{key.adjunct}": figures
            for key, figures in self.views.arm_summary.items()
            if key.scope == "network"
        }
        return {
            "seed": self.seed,
            "participants": self.participants,
            "messages": self.messages,
            "accepted": self.accepted,
            "per_topic": self.per_topic,
            "events": self.events,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "network": self.views.network_summary,
            "nodes": self.views.node_summary,
            "arms": dict(sorted(arms.items())),
            "keyless": self.keyless,
            "destination": self.destination,
        }


@dataclass(frozen=True, slots=True)
class Simulation:
    messages: list[SimMessage]
    result: SimulationResult


# --- the network's character, drawn once per seed ---------------------------


#: Fixed UTC offsets (hours) the nodes' sites report in when the registry gives a site
#: no ``timezone`` (and the offsets a reformatted duplicate may take); 0 is written ``Z``.
_NODE_OFFSETS: Final = (1, -5, 0, 9, -3, 2, -8, 10)

#: Values are the contracts' (their enums, in their order); these tables only weigh them.
_ARMS: Final[tuple[Arm, ...]] = get_args(Arm)
_NO_ADJUNCT: Final[Adjunct] = "none"
#: Some exercise-arm participants get an adjunct on top.
_ADJUNCTS: Final[tuple[Adjunct, ...]] = tuple(a for a in get_args(Adjunct) if a != _NO_ADJUNCT)
_AGE_BANDS: Final[tuple[AgeBand, ...]] = get_args(AgeBand)
_AGE_WEIGHTS: Final[dict[AgeBand, int]] = {
    "18-24": 14,
    "25-34": 24,
    "35-44": 22,
    "45-54": 18,
    "55-64": 14,
    "65+": 8,
}
_SEXES: Final[tuple[Sex, ...]] = get_args(Sex)
_SEX_WEIGHTS: Final[dict[Sex, int]] = {"female": 62, "male": 36, "intersex": 1, "unknown": 1}
_AE_WITHDRAWAL: Final[WithdrawalReason] = "adverse_event"
#: Withdrawals for other reasons than an adverse event (those follow a severe one).
_WITHDRAWAL_REASONS: Final[tuple[WithdrawalReason, ...]] = tuple(
    r for r in get_args(WithdrawalReason) if r != _AE_WITHDRAWAL
)
_WITHDRAWAL_WEIGHTS: Final[dict[WithdrawalReason, int]] = {
    "lost_to_follow_up": 40,
    "participant_choice": 38,
    "investigator_decision": 10,
    "other": 12,
}
_AE_SEVERITY: Final[tuple[AdverseEvent, ...]] = get_args(AdverseEvent)
_AE_WEIGHTS: Final[dict[AdverseEvent, int]] = {
    "mild": 70,
    "moderate": 22,
    "severe": 6,
    "serious": 2,
}

#: Mean share of the baseline score lost by week 12, per arm (plus an adjunct bonus).
_IMPROVEMENT: Final = {"aerobic": 0.46, "resistance": 0.42, "combined": 0.50, "control": 0.20}
_ADJUNCT_BONUS: Final = {
    "none": 0.0,
    "psychotherapy": 0.08,
    "pharmacotherapy": 0.08,
    "nutrition_counseling": 0.03,
    "brain_stimulation": 0.06,
}

#: Attended-session shapes per session modality: duration (min), %HRmax, RPE:
#: (mean, sd, low, high) each.
_SESSION_SHAPE: Final = {
    "aerobic": ((40.0, 5.0, 30.0, 50.0), (72.0, 5.0, 60.0, 85.0), (13.0, 1.4)),
    "resistance": ((45.0, 6.0, 30.0, 60.0), (60.0, 5.0, 45.0, 75.0), (14.0, 1.5)),
    "combined": ((55.0, 7.0, 40.0, 75.0), (67.0, 5.0, 55.0, 82.0), (13.5, 1.4)),
}

#: Biomarkers at rest, in the canonical unit: specimen type, median, log-sd,
#: lower limit of quantification, and the relative change after 12 weeks of
#: exercise (control: a tenth of it).
_ANALYTES: Final = {
    "BDNF": ("serum", 22.0, 0.35, 0.05, 0.12),  # ng/mL
    "IL6": ("serum", 1.8, 0.6, 0.3, -0.10),  # pg/mL
    "TNFA": ("serum", 1.3, 0.5, 0.2, -0.08),  # pg/mL
    "CRP": ("serum", 2.0, 0.9, 0.1, -0.12),  # mg/L
    "kynurenine": ("serum", 1900.0, 0.25, 50.0, -0.05),  # nmol/L
    "norepinephrine": ("plasma", 320.0, 0.35, 10.0, 0.05),  # pg/mL
    "serotonin": ("whole_blood", 150.0, 0.35, 5.0, 0.05),  # ng/mL
    "cortisol": ("saliva", 12.0, 0.5, 0.5, -0.05),  # nmol/L
}
#: Specimen type -> the analytes measured in it (one specimen per type and timepoint).
_PANELS: Final = {
    specimen_type: tuple(a for a, spec in _ANALYTES.items() if spec[0] == specimen_type)
    for specimen_type in dict.fromkeys(spec[0] for spec in _ANALYTES.values())
}
#: Measured right before and after one exercise bout (acute_pre / acute_post):
#: analyte -> relative rise after the bout (IL-6 is the classic exercise myokine).
_ACUTE_RISE: Final = {"BDNF": 0.25, "IL6": 0.9, "norepinephrine": 0.6, "cortisol": 0.15}
#: Sessions (by number) around which exercise-arm participants give acute samples.
_ACUTE_SESSIONS: Final = (1, 12, 24, 36)
#: Share of planned specimens actually collected (missed draws, too little sample).
_COLLECTED: Final = 0.93


def _uuid(rng: random.Random) -> str:
    """A random (version 4) UUID drawn from ``rng``: reproducible by seed."""
    bits = rng.getrandbits(128) & ~(0xF << 76) & ~(0x3 << 62) | (0x4 << 76) | (0x2 << 62)
    text = f"{bits:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _clip(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


def _sig(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant digits (as labs report)."""
    if value == 0:
        return 0.0
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


@dataclass(slots=True)
class _Site:
    node_id: str
    site_id: str
    zone: tzinfo  # the registry's timezone, or the node's fixed offset
    attendance: float  # probability a session is attended, at week 1
    supervised: float  # probability an attended session is supervised
    weight: float  # share of recruitment
    millis: bool  # reports milliseconds


@dataclass(slots=True)
class _Lab:
    lab_id: str
    unit: dict[str, str]  # analyte -> the lab's usual unit


@dataclass(slots=True)
class _Event:
    """A generated valid event before rendering: fields in canonical order."""

    topic: Topic
    at: datetime
    fields: dict[str, Any]
    site: _Site

    @property
    def participant(self) -> str:
        return str(self.fields["participant_id"])


class _Generator:
    def __init__(self, registry: NetworkRegistry, config: SimulationConfig) -> None:
        self.config = config
        self.registry = registry
        self.rng = random.Random(config.seed)  # noqa: S311  (a seeded simulation, not secrets)
        self.events: list[_Event] = []
        self.participant_ids: list[str] = []
        self._used_ids: set[str] = set()
        rng = self.rng
        self.sites: list[_Site] = []
        self.labs: dict[str, _Lab] = {}
        for index, node in enumerate(registry.nodes):
            hours = _NODE_OFFSETS[index % len(_NODE_OFFSETS)]
            node_offset = timezone(timedelta(hours=hours))
            for site in node.sites:
                self.sites.append(
                    _Site(
                        node_id=node.id,
                        site_id=site.id,
                        zone=ZoneInfo(site.timezone) if site.timezone else node_offset,
                        attendance=rng.uniform(0.76, 0.88),
                        supervised=rng.uniform(0.5, 0.95),
                        weight=rng.uniform(0.6, 1.6),
                        millis=rng.random() < 0.3,
                    )
                )
            self.labs[node.id] = _Lab(
                lab_id=f"{node.id}-BIOLAB",
                unit={
                    analyte: (
                        CANONICAL_UNIT[analyte]
                        if rng.random() < 0.6
                        else next(u for u in units if u != CANONICAL_UNIT[analyte])
                    )
                    for analyte, units in ANALYTE_UNITS.items()
                },
            )
        if not self.sites and config.participants:
            raise UserError("the network registry lists no sites to simulate")

    # -- helpers ---------------------------------------------------------------
    def unique(self, make: Callable[[], str]) -> str:
        while True:
            candidate = make()
            if candidate not in self._used_ids:
                self._used_ids.add(candidate)
                return candidate

    def emit(self, topic: Topic, at: datetime, site: _Site, pid: str, **fields: Any) -> None:
        if at >= STUDY_ANCHOR:
            raise AssertionError(f"a simulated event lies after the anchor: {at}")
        envelope = {
            "schema": f"{topic.event_type}/1",
            "event_id": _uuid(self.rng),
            "occurred_at": at,
            "node_id": site.node_id,
            "site_id": site.site_id,
            "participant_id": pid,
        }
        self.events.append(_Event(topic, at, envelope | fields, site))

    def local_day_time(self, day: datetime, site: _Site, start_h: float, end_h: float) -> datetime:
        """A moment between ``start_h`` and ``end_h`` local time on ``day`` (UTC midnight)."""
        hours = self.rng.uniform(start_h, end_h)
        local = (day + timedelta(hours=hours)).replace(tzinfo=site.zone)
        at = local.astimezone(UTC)
        return at.replace(microsecond=self.rng.randrange(0, 1000) * 1000 if site.millis else 0)

    # -- one participant -------------------------------------------------------
    def participant(self) -> None:
        rng = self.rng
        site = rng.choices(self.sites, weights=[s.weight for s in self.sites])[0]
        pid = self.unique(lambda: f"P-{rng.getrandbits(48):012x}")
        self.participant_ids.append(pid)
        age_band = rng.choices(_AGE_BANDS, weights=[_AGE_WEIGHTS[b] for b in _AGE_BANDS])[0]
        sex = rng.choices(_SEXES, weights=[_SEX_WEIGHTS[s] for s in _SEXES])[0]
        window = (STUDY_ANCHOR - _ENROLMENT_TAIL - STUDY_START).days
        day = STUDY_START + timedelta(days=rng.randrange(window))
        demo = {"age_band": age_band, "sex": sex}

        self.emit(
            Topic.ENROLLMENT,
            self.local_day_time(day, site, 8, 17),
            site,
            pid,
            status="screened",
            **demo,
        )
        if rng.random() >= 0.9:
            return  # screen failure
        day += timedelta(days=rng.randint(1, 12))
        self.emit(
            Topic.ENROLLMENT,
            self.local_day_time(day, site, 8, 17),
            site,
            pid,
            status="consented",
            **demo,
        )
        if rng.random() >= 0.95:
            return  # consented, never randomized
        day += timedelta(days=rng.randint(1, 9))
        arm = rng.choice(_ARMS)
        adjunct = _NO_ADJUNCT
        if arm != "control" and rng.random() < 0.22:
            adjunct = rng.choice(_ADJUNCTS)
        randomized_at = self.local_day_time(day, site, 9, 12)
        # Baseline work-up the same morning, before randomization is recorded.
        self.specimens(site, pid, "baseline", randomized_at - timedelta(hours=1), arm, 0.0)
        scores = self.baseline_scores()
        improvement = _clip(
            rng.gauss(_IMPROVEMENT[arm] + _ADJUNCT_BONUS[adjunct], 0.2), -0.25, 0.95
        )
        self.assessments(site, pid, 0, randomized_at - timedelta(minutes=30), scores, 0.0)
        self.emit(
            Topic.ENROLLMENT,
            randomized_at,
            site,
            pid,
            status="randomized",
            modality=arm,
            adjunct=adjunct,
            **demo,
        )

        # Who withdraws, and when (after which week's sessions).
        withdraw_p = 0.20 if arm == "control" else 0.13
        withdraw_week = rng.randint(1, PROGRAMME_WEEKS) if rng.random() < withdraw_p else None
        adherence = rng.gauss(0.0, 0.07)
        start = day + timedelta(days=1)
        session_number = 0
        withdrawn_at: datetime | None = None
        reason: str | None = None
        for week in range(1, PROGRAMME_WEEKS + 1):
            week_day = start + timedelta(weeks=week - 1)
            if arm != "control":
                for slot in range(SESSIONS_PER_WEEK):
                    session_number += 1
                    at = self.local_day_time(week_day + timedelta(days=2 * slot), site, 7, 19)
                    severity = self.session(site, pid, arm, session_number, week, at, adherence)
                    if severity in ("severe", "serious") and rng.random() < 0.5:
                        withdrawn_at, reason = (
                            at + timedelta(days=rng.randint(1, 3)),
                            _AE_WITHDRAWAL,
                        )
                        break
            if withdrawn_at is None and week == withdraw_week:
                withdrawn_at = self.local_day_time(week_day + timedelta(days=6), site, 9, 17)
                weights = [_WITHDRAWAL_WEIGHTS[r] for r in _WITHDRAWAL_REASONS]
                reason = rng.choices(_WITHDRAWAL_REASONS, weights=weights)[0]
            if withdrawn_at is not None:
                break
            if week in ASSESSMENT_WEEKS:
                at = self.local_day_time(
                    start + timedelta(weeks=week, days=rng.randint(0, 2)), site, 9, 17
                )
                self.assessments(site, pid, week, at, scores, improvement * (week / 12) ** 0.7)
            if week == PROGRAMME_WEEKS // 2:
                at = self.local_day_time(week_day + timedelta(days=6), site, 8, 10)
                self.specimens(site, pid, "mid", at, arm, 0.5)
        if withdrawn_at is not None:
            self.emit(
                Topic.ENROLLMENT,
                withdrawn_at,
                site,
                pid,
                status="withdrawn",
                adjunct=adjunct,
                reason=reason,
                **demo,
            )
            return
        end = start + timedelta(weeks=PROGRAMME_WEEKS, days=rng.randint(2, 6))
        self.specimens(site, pid, "post", self.local_day_time(end, site, 8, 10), arm, 1.0)
        self.emit(
            Topic.ENROLLMENT,
            self.local_day_time(end, site, 11, 16),
            site,
            pid,
            status="completed",
            adjunct=adjunct,
            **demo,
        )

    def baseline_scores(self) -> dict[str, float]:
        phq9 = _clip(self.rng.gauss(16.0, 3.5), 10, 27)
        hamd = _clip(phq9 * 1.25 + self.rng.gauss(1.0, 2.5), 14, 40)
        return {"PHQ9": phq9, "HAMD17": hamd}

    def assessments(
        self,
        site: _Site,
        pid: str,
        week: int,
        at: datetime,
        baseline: dict[str, float],
        gain: float,
    ) -> None:
        for offset_min, instrument in enumerate(("PHQ9", "HAMD17")):
            share = gain + (self.rng.gauss(0.0, 0.07) if week else 0.0)
            score = round(_clip(baseline[instrument] * (1 - share), 0, INSTRUMENT_MAX[instrument]))
            self.emit(
                Topic.ASSESSMENT,
                at + timedelta(minutes=20 * offset_min),
                site,
                pid,
                instrument=instrument,
                score=score,
                week=week,
            )

    def session(
        self,
        site: _Site,
        pid: str,
        arm: str,
        number: int,
        week: int,
        at: datetime,
        adherence: float,
    ) -> str | None:
        rng = self.rng
        if arm == "combined":
            modality = "combined" if rng.random() < 0.6 else ("aerobic", "resistance")[number % 2]
        else:
            modality = arm
        attend_p = _clip(site.attendance + adherence - 0.006 * (week - 1), 0.3, 0.98)
        if rng.random() < attend_p:
            status = "attended"
        else:
            status = "cancelled" if rng.random() < 0.3 else "missed"
        fields: dict[str, Any] = {
            "session_number": number,
            "status": status,
            "modality": modality,
            "supervised": rng.random() < site.supervised,
        }
        severity: str | None = None
        if status == "attended":
            (d_mean, d_sd, d_lo, d_hi), (h_mean, h_sd, h_lo, h_hi), (r_mean, r_sd) = _SESSION_SHAPE[
                modality
            ]
            fields["duration_min"] = round(_clip(rng.gauss(d_mean, d_sd), d_lo, d_hi), 1)
            if rng.random() < 0.93:  # some sessions without a heart-rate monitor
                fields["mean_hr_pct_max"] = round(_clip(rng.gauss(h_mean, h_sd), h_lo, h_hi), 1)
            fields["rpe"] = int(_clip(round(rng.gauss(r_mean, r_sd)), 6, 20))
            if rng.random() < 0.012:
                weights = [_AE_WEIGHTS[s] for s in _AE_SEVERITY]
                severity = rng.choices(_AE_SEVERITY, weights=weights)[0]
                fields["adverse_event"] = severity
            if number in _ACUTE_SESSIONS:
                self.acute_specimens(site, pid, at, float(fields["duration_min"]))
        self.emit(Topic.SESSION, at, site, pid, **fields)
        return severity

    def specimen_id(self, site: _Site) -> str:
        return self.unique(lambda: f"{site.node_id}-SP-{self.rng.getrandbits(40):010x}")

    def assay(
        self,
        site: _Site,
        pid: str,
        at: datetime,
        specimen_id: str,
        specimen_type: str,
        timepoint: str,
        analyte: str,
        canonical: float,
    ) -> None:
        rng = self.rng
        lab = self.labs[site.node_id]
        unit = lab.unit[analyte]
        if rng.random() < 0.15:  # another kit, another unit
            unit = rng.choice(list(ANALYTE_UNITS[analyte]))
        lloq = _ANALYTES[analyte][3]
        below = canonical < lloq
        value = _sig((lloq if below else canonical) / ANALYTE_UNITS[analyte][unit])
        # Labs run specimens in monthly batches, some weeks after collection.
        measured = min(at + timedelta(days=rng.randint(7, 40)), STUDY_ANCHOR - timedelta(hours=1))
        fields: dict[str, Any] = {
            "specimen_id": specimen_id,
            "specimen_type": specimen_type,
            "timepoint": timepoint,
            "analyte": analyte,
            "value": value,
            "unit": unit,
            "lab_id": lab.lab_id,
            "batch_id": f"{site.node_id}-{measured.year}{measured.month:02d}-B{rng.randint(1, 4)}",
        }
        if below or rng.random() < 0.5:
            fields["below_lloq"] = below
        self.emit(Topic.ASSAY, measured, site, pid, **fields)

    def collect(
        self, site: _Site, pid: str, timepoint: str, at: datetime, levels: dict[str, float]
    ) -> None:
        """One specimen per type at ``at``, each assayed for its analytes in ``levels``."""
        for specimen_type, panel in _PANELS.items():
            analytes = [analyte for analyte in panel if analyte in levels]
            if not analytes or self.rng.random() >= _COLLECTED:
                continue
            specimen_id = self.specimen_id(site)
            for analyte in analytes:
                self.assay(
                    site, pid, at, specimen_id, specimen_type, timepoint, analyte, levels[analyte]
                )

    def resting_level(self, analyte: str) -> float:
        _type, median, log_sd, _lloq, _effect = _ANALYTES[analyte]
        return median * math.exp(self.rng.gauss(0.0, log_sd))

    def specimens(
        self, site: _Site, pid: str, timepoint: str, at: datetime, arm: str, progress: float
    ) -> None:
        """Resting specimens; ``progress`` 0..1 through the programme scales the training effect."""
        damping = 0.1 if arm == "control" else 1.0
        levels = {
            analyte: self.resting_level(analyte) * (1 + spec[4] * progress * damping)
            for analyte, spec in _ANALYTES.items()
        }
        self.collect(site, pid, timepoint, at, levels)

    def acute_specimens(self, site: _Site, pid: str, at: datetime, minutes: float) -> None:
        """Samples right before and after one bout of exercise."""
        rng = self.rng
        rest = {analyte: self.resting_level(analyte) for analyte in _ACUTE_RISE}
        after = {
            analyte: level * (1 + _ACUTE_RISE[analyte] * _clip(rng.gauss(1.0, 0.3), 0.0, 2.0))
            for analyte, level in rest.items()
        }
        self.collect(site, pid, "acute_pre", at - timedelta(minutes=10), rest)
        self.collect(site, pid, "acute_post", at + timedelta(minutes=minutes + 5), after)


# --- rendering ----------------------------------------------------------------


def _timestamp(at: datetime | str, offset: tzinfo, millis: bool) -> str:
    """``at`` in the site's local time, as a UTC offset (``Z`` for UTC); a string is
    passed through as it is."""
    if isinstance(at, str):
        return at
    text = at.astimezone(offset).isoformat(timespec="milliseconds" if millis else "seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


#: Optional fields a site may send as an explicit null instead of leaving out.
_NULLABLE: Final = {
    "enrollment/1": ("modality", "reason", "age_band", "sex"),
    "session/1": ("duration_min", "mean_hr_pct_max", "rpe", "adverse_event"),
    "assay/1": ("batch_id",),
    "assessment/1": (),
}
#: Fields with a default a site may leave out.
_DEFAULTS: Final = {"adjunct": "none", "below_lloq": False}


def _render(
    fields: dict[str, Any], rng: random.Random, offset: tzinfo, millis: bool, *, loose: bool
) -> bytes:
    """One event as a JSON line.

    ``loose`` renders the same content another way, as other site software
    would: shuffled keys, explicit nulls, defaults left out, spaced separators.
    """
    doc = dict(fields)
    doc["occurred_at"] = _timestamp(doc["occurred_at"], offset, millis)
    if not loose:
        return orjson.dumps(doc)
    for name in _NULLABLE.get(str(doc.get("schema")), ()):
        if name not in doc and rng.random() < 0.5:
            doc[name] = None
    for name, default in _DEFAULTS.items():
        if doc.get(name, ...) == default and rng.random() < 0.5:
            del doc[name]
    items = list(doc.items())
    rng.shuffle(items)
    return json.dumps(dict(items), ensure_ascii=False).encode()


class _Messages:
    """Builds the message list: originals in time order, the extras placed among them."""

    def __init__(self, gen: _Generator) -> None:
        self.gen = gen
        self.rng = gen.rng
        #: (position, tie-break, message); originals sit at integer positions.
        self.slots: list[tuple[float, int, SimMessage]] = []
        self.originals: list[tuple[_Event, bytes]] = []

    def add(self, position: float, message: SimMessage) -> None:
        self.slots.append((position, len(self.slots), message))

    def build_originals(self) -> None:
        rng = self.rng
        events = sorted(self.gen.events, key=lambda e: e.at)
        for index, event in enumerate(events):
            site = event.site
            offset = site.zone if rng.random() < 0.85 else UTC
            value = _render(event.fields, rng, offset, site.millis, loose=rng.random() < 0.25)
            self.originals.append((event, value))
            key = event.participant.encode()
            self.add(index, SimMessage(event.topic, key, value, MessageKind.EVENT))

    def later_position(self, index: int) -> float:
        """A place after original ``index`` (so a re-send follows its original)."""
        return self.rng.uniform(index + 0.5, len(self.originals) + 0.5)

    def duplicates(self, chosen: Sequence[int]) -> None:
        rng = self.rng
        for index in chosen:
            event, value = self.originals[index]
            if rng.random() >= 0.5:
                hours = rng.choice(
                    [
                        h
                        for h in _NODE_OFFSETS
                        if timedelta(hours=h) != event.at.astimezone(event.site.zone).utcoffset()
                    ]
                )
                offset = timezone(timedelta(hours=hours))
                value = _render(event.fields, rng, offset, event.site.millis, loose=True)
            message = SimMessage(
                event.topic, event.participant.encode(), value, MessageKind.DUPLICATE
            )
            self.add(self.later_position(index), message)

    def conflicts(self, chosen: Sequence[int]) -> None:
        rng = self.rng
        for index in chosen:
            event, _value = self.originals[index]
            fields = _conflicting(event.fields, rng)
            value = _render(
                fields, rng, event.site.zone, event.site.millis, loose=rng.random() < 0.3
            )
            message = SimMessage(
                event.topic,
                event.participant.encode(),
                value,
                MessageKind.CONFLICT,
                Reason.CONFLICTING_DUPLICATE,
            )
            self.add(self.later_position(index), message)

    def invalid(self, count: int, kinds: Sequence[Reason]) -> None:
        rng = self.rng
        for number in range(count):
            kind = kinds[number % len(kinds)]
            index = rng.randrange(len(self.originals))
            event, _value = self.originals[index]
            fields = dict(event.fields)
            fields["event_id"] = _uuid(rng)
            key, value = _INVALID_MAKERS[kind](fields, event, self.gen)
            message = SimMessage(event.topic, key, value, MessageKind.INVALID, kind)
            self.add(rng.uniform(0, len(self.originals)), message)

    def ordered(self) -> list[SimMessage]:
        self.slots.sort(key=lambda slot: (slot[0], slot[1]))
        return [message for _position, _tie, message in self.slots]


def _conflicting(fields: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The same event_id with different, still valid, content."""
    changed = dict(fields)
    schema = changed["schema"]
    if schema == "session/1" and changed["status"] == "attended":
        changed["duration_min"] = round(float(changed["duration_min"]) + rng.choice((-5, 5, 10)), 1)
    elif schema == "assessment/1":
        top = INSTRUMENT_MAX[changed["instrument"]]
        score = int(changed["score"])
        changed["score"] = score + 2 if score + 2 <= top else score - 2
    elif schema == "assay/1":
        changed["value"] = _sig(float(changed["value"]) * 1.07)
    elif schema == "enrollment/1":
        bands = [band for band in _AGE_BANDS if band != changed.get("age_band")]
        changed["age_band"] = rng.choice(bands)
    else:
        changed["occurred_at"] = changed["occurred_at"] - timedelta(minutes=7)
    return changed


def _unregistered_site(gen: _Generator, event: _Event, rng: random.Random) -> tuple[str, str]:
    """A (node_id, site_id) pair, well-formed, that the registry refuses."""
    node_ids = [node.id for node in gen.registry.nodes]
    choice = rng.randrange(3)
    if choice == 0 or len(node_ids) < 2:  # a site nobody registered, under a real node
        for n in range(99, 0, -1):
            site_id = f"{event.site.node_id}-S{n:02d}"
            if gen.registry.site_problem(event.site.node_id, site_id) is not None:
                return event.site.node_id, site_id
    if choice == 1:  # a node nobody registered
        for n in range(99, 0, -1):
            node_id = f"N{n:02d}X"
            if node_id not in node_ids:
                return node_id, f"{node_id}-S01"
    # a real site, claimed by another real node
    other = rng.choice([n for n in node_ids if n != event.site.node_id])
    return other, event.site.site_id


# --- invalid messages, one maker per reason ----------------------------------------
#
# Each takes a valid event's fields (with a fresh event_id), the event and the
# generator, and returns the message's key and value, which the validator must
# reject with that reason.

_Invalid = tuple[bytes | None, bytes]


def _as_site(doc: dict[str, Any], event: _Event, rng: random.Random) -> bytes:
    """``doc`` rendered as the event's site would, now and then loosely."""
    site = event.site
    return _render(doc, rng, site.zone, site.millis, loose=rng.random() < 0.3)


def _too_large(fields: dict[str, Any], event: _Event, gen: _Generator) -> _Invalid:
    """A well-formed event padded with whitespace past the limit."""
    value = _as_site(fields, event, gen.rng)
    return event.participant.encode(), value[:-1] + b" " * MAX_MESSAGE_BYTES + b"}"


def _malformed_json(fields: dict[str, Any], event: _Event, gen: _Generator) -> _Invalid:
    rng = gen.rng
    value = _as_site(fields, event, rng)
    variant = rng.randrange(4)
    if variant == 0:  # cut short, as by a crashed writer
        value = value[: max(1, len(value) // 2)]
    elif variant == 1:  # an array, not an object
        value = b"[" + value + b"]"
    elif variant == 2:  # not UTF-8 (a Latin-1 byte inside a string)
        value = value.replace(b'"schema"', b'"sch\xe9ma"', 1)
    else:  # Python's repr instead of JSON
        value = repr({k: str(v) for k, v in fields.items()}).encode()
    return event.participant.encode(), value


def _unknown_schema(fields: dict[str, Any], event: _Event, gen: _Generator) -> _Invalid:
    doc = dict(fields)
    if gen.rng.random() < 0.5:
        doc["schema"] = f"{event.topic.event_type}/9"
    else:
        del doc["schema"]
    return event.participant.encode(), _as_site(doc, event, gen.rng)


def _invalid_field(fields: dict[str, Any], event: _Event, gen: _Generator) -> _Invalid:
    rng = gen.rng
    key = event.participant.encode()
    doc = dict(fields)
    variant = rng.randrange(4)
    if variant == 0:  # free text that could carry identifiers
        doc["patient_name"] = "Jane Doe"
    elif variant == 1:  # a naive timestamp (no UTC offset)
        local = doc["occurred_at"].astimezone(event.site.zone).replace(tzinfo=None)
        doc["occurred_at"] = local.isoformat(timespec="seconds")
    elif variant == 2:  # a value out of range, per type
        schema = doc["schema"]
        if schema == "session/1":
            doc["rpe"] = 25
        elif schema == "assay/1":
            doc["unit"] = next(
                u for u in ("mg/L", "ug/dL", "pg/mL") if u not in ANALYTE_UNITS[doc["analyte"]]
            )
        elif schema == "assessment/1":
            doc["score"] = INSTRUMENT_MAX[doc["instrument"]] + 5
        else:
            doc["status"] = "enrolled"
    else:  # a record number instead of the pseudonym
        doc["participant_id"] = f"MRN-{rng.randrange(10**6, 10**7)}"
        key = str(doc["participant_id"]).encode()
    return key, _as_site(doc, event, rng)


def _key_mismatch(fields: dict[str, Any], event: _Event, gen: _Generator) -> _Invalid:
    wrong = gen.rng.choice(gen.participant_ids)
    if wrong == event.participant:  # a lone participant: borrow a pseudonym
        wrong = "P-000000000000" if wrong != "P-000000000000" else "P-111111111111"
    return wrong.encode(), _as_site(fields, event, gen.rng)


def _unknown_site(fields: dict[str, Any], event: _Event, gen: _Generator) -> _Invalid:
    node_id, site_id = _unregistered_site(gen, event, gen.rng)
    doc = fields | {"node_id": node_id, "site_id": site_id}
    return event.participant.encode(), _as_site(doc, event, gen.rng)


def _future_timestamp(fields: dict[str, Any], event: _Event, gen: _Generator) -> _Invalid:
    doc = fields | {"occurred_at": _FAR_FUTURE}
    return event.participant.encode(), _as_site(doc, event, gen.rng)


#: reason -> how to make a message rejected with it. (``conflicting_duplicate``
#: needs an accepted original: ``conflict_share`` makes those.)
_INVALID_MAKERS: Final[dict[Reason, Callable[[dict[str, Any], _Event, _Generator], _Invalid]]] = {
    Reason.TOO_LARGE: _too_large,
    Reason.MALFORMED_JSON: _malformed_json,
    Reason.UNKNOWN_SCHEMA: _unknown_schema,
    Reason.INVALID_FIELD: _invalid_field,
    Reason.KEY_MISMATCH: _key_mismatch,
    Reason.UNKNOWN_SITE: _unknown_site,
    Reason.FUTURE_TIMESTAMP: _future_timestamp,
}
#: The kinds of invalid message the simulator makes, in the order checks run.
INVALID_KINDS: Final[tuple[Reason, ...]] = tuple(r for r in Reason if r in _INVALID_MAKERS)


def _accepted_events(events: Sequence[_Event]) -> list[EventBase]:
    """The generated events as the contracts' models: what the pipeline accepts."""
    return [SCHEMAS[str(e.fields["schema"])][1].model_validate(e.fields) for e in events]


def generate(registry: NetworkRegistry, config: SimulationConfig) -> Simulation:
    """Every message of one simulated network, with the outcome each must have. Pure."""
    gen = _Generator(registry, config)
    for _ in range(config.participants):
        gen.participant()
    messages = _Messages(gen)
    messages.build_originals()
    n = len(messages.originals)
    rng = gen.rng
    n_dup = min(n, round(config.duplicate_share * n))
    n_conflict = min(n - n_dup, round(config.conflict_share * n))
    picked = rng.sample(range(n), n_dup + n_conflict) if n else []
    messages.duplicates(sorted(picked[:n_dup]))
    messages.conflicts(sorted(picked[n_dup:]))
    if n:
        messages.invalid(round(config.invalid_share * n), config.usable_invalid_kinds)
    ordered = messages.ordered()

    per_topic: Counter[str] = Counter()
    events: Counter[str] = Counter()
    duplicates: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    for message in ordered:
        per_topic[message.topic.value] += 1
        if message.kind is MessageKind.EVENT:
            events[str(message.topic.event_type)] += 1
        elif message.kind is MessageKind.DUPLICATE:
            duplicates[str(message.topic.event_type)] += 1
        elif message.expected is not None:
            rejected[message.expected.value] += 1
    views = compute_views(
        _accepted_events(gen.events),
        (node.id for node in registry.nodes),
        registry.primary_endpoint,
    )
    result = SimulationResult(
        seed=config.seed,
        participants=config.participants,
        messages=len(ordered),
        per_topic=dict(sorted(per_topic.items())),
        events=dict(sorted(events.items())),
        duplicates=dict(sorted(duplicates.items())),
        rejected=dict(sorted(rejected.items())),
        views=views,
        keyless=config.keyless,
    )
    return Simulation(ordered, result)


def simulate(
    settings: Settings,
    *,
    seed: int = DEFAULT_SEED,
    participants: int = DEFAULT_PARTICIPANTS,
    invalid_share: float = 0.0,
    duplicate_share: float = 0.0,
    conflict_share: float = 0.0,
    invalid_kinds: Sequence[Reason] | None = None,
    out: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SimulationResult:
    """Generate a network (registry: ``settings.registry_path``) and publish or write it.

    With ``out``, writes one message value per line (no keys, so no
    ``key_mismatch`` cases) and sends nothing. Otherwise publishes every
    message, keyed as generated, to the physical topics under
    ``settings.topic_prefix``, and returns once Kafka acknowledged all of them;
    raises :class:`~contracts.errors.UserError` when Kafka cannot be reached and
    :class:`~contracts.errors.RecoverableError` when some were not acknowledged.
    ``progress(done, total)`` is called now and then.
    """
    config = SimulationConfig(
        seed=seed,
        participants=participants,
        invalid_share=invalid_share,
        duplicate_share=duplicate_share,
        conflict_share=conflict_share,
        invalid_kinds=tuple(invalid_kinds) if invalid_kinds is not None else DEFAULT_INVALID_KINDS,
        keyless=out is not None,
    )
    simulation = generate(load_registry(settings.registry_path), config)
    messages = simulation.messages
    if out is not None:
        _write(out, messages, progress)
        destination = str(out)
    else:
        _publish(settings, messages, progress)
        destination = settings.topic_prefix + "exnet.*"
    return dataclasses.replace(simulation.result, destination=destination)


_PROGRESS_EVERY: Final = 2_000
#: How long a send may wait for a topic's metadata, ms. The site publisher waits
#: 5 s, then spools; the simulator has no spool, and when a broker of a cluster died
#: under it, the partitions' new leaders took longer than that to be known: it gave
#: up after a few messages.
SIMULATOR_MAX_BLOCK_MS: Final = 60_000


def _write(
    out: Path, messages: Sequence[SimMessage], progress: Callable[[int, int], None] | None
) -> None:
    try:
        with out.open("wb") as handle:
            for done, message in enumerate(messages, 1):
                handle.write(message.value + b"\n")
                if progress is not None and done % _PROGRESS_EVERY == 0:
                    progress(done, len(messages))
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    if progress is not None:
        progress(len(messages), len(messages))


def _publish(
    settings: Settings, messages: Sequence[SimMessage], progress: Callable[[int, int], None] | None
) -> None:
    try:
        producer = KafkaProducer(
            **{
                **producer_config(settings, "exnet-simulator"),
                "max_block_ms": SIMULATOR_MAX_BLOCK_MS,
            }
        )
    except KafkaError as exc:
        raise UserError(f"Kafka at {settings.kafka_bootstrap} is unreachable: {exc}") from None
    require_input_topics(settings, producer)
    topics = {topic: topic_name(topic, settings.topic_prefix) for topic in Topic}
    futures = []
    try:
        send = producer.send
        for done, message in enumerate(messages, 1):
            futures.append(send(topics[message.topic], value=message.value, key=message.key))
            if progress is not None and done % _PROGRESS_EVERY == 0:
                progress(done, len(messages))
        producer.flush(timeout=FLUSH_TIMEOUT_S)
    except KafkaError as exc:
        raise RecoverableError(f"publishing the simulation failed: {exc}") from None
    finally:
        producer.close(timeout=5)
    failed = [future for future in futures if not future.succeeded()]
    if failed:
        raise RecoverableError(
            f"{len(failed)} of {len(messages)} simulated messages were not acknowledged by Kafka "
            f"(first: {failed[0].exception})"
        )
    if progress is not None:
        progress(len(messages), len(messages))
