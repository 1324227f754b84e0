"""The aggregation stages alone: aggregate (per participant) then rollup (per view row).

Whatever the arrival order, however often a message is read again, however
contributions are repeated or come late, and with the state split over
several workers, the rows the rollup sends must be the oracle's figures
(:func:`contracts.views.compute_views`).
"""

from __future__ import annotations

import math
import random
import tracemalloc
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from contracts import EventBase, Origin
from contracts.registry import DEMO_REGISTRY, PrimaryEndpoint, load_registry
from contracts.topics import Topic, topic_name
from contracts.validation import Accepted, Validator
from contracts.views import ArmKey, DailyKey, Views, compute_views
from contracts.wire import validated_message
from producers.simulate import MessageKind, SimulationConfig, generate
from streams import aggregate as aggregate_module
from streams.aggregate import AggregateStage, json_value
from streams.rollup import LiveViews, RollupStage
from tests.contracts.test_views import NODES, Make

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
NAMES = {node: f"Node {node}" for node in NODES}


def _json(value: bytes | None) -> Any:
    """A produced message's JSON value (none of these stages sends a tombstone)."""
    assert value is not None
    return orjson.loads(value)


def record(event: EventBase, offset: int = 0) -> Any:
    """The event as the aggregate stage reads it from ``exnet.accepted``."""
    topic = Topic.for_event_type(event.EVENT_TYPE)
    accepted = Accepted(event, topic, Origin(topic_name(topic, ""), 0, offset))
    _, value, headers = validated_message(accepted, accepted.canonical_json(), None)
    return SimpleNamespace(
        key=event.participant_id.encode(), value=value, headers=headers, offset=offset
    )


class Pipeline:
    """Both stages over in-memory tables; the view rows as ReplacingMergeTree keeps them."""

    def __init__(self, workers: int = 1, endpoint: PrimaryEndpoint | None = None) -> None:
        self.aggregate = AggregateStage("c", endpoint)
        self.participants: list[dict[bytes, bytes]] = [{} for _ in range(workers)]
        #: id(record) -> its offset in its worker's partition; each partition's end.
        self.offsets: dict[int, int] = {}
        self.ends = [0] * workers
        self.live = LiveViews()
        self.rollup = RollupStage("v", NAMES, self.live)
        self.contributions_table: dict[bytes, bytes] = {}
        self.generation = 1
        #: Every contribution sent, in order (the contributions partition).
        self.log: list[Any] = []
        self.applied = 0
        #: (table, key bytes) -> the row with the highest version.
        self.rows: dict[tuple[str, bytes], dict[str, Any]] = {}

    def worker_of(self, rec: Any) -> int:
        return hash(rec.key) % len(self.participants)

    def accept(self, batch: Sequence[Any]) -> list[Any]:
        """One batch of accepted events per worker's share; the contributions sent.

        Each worker's records get offsets in the order it first reads them (a Kafka
        partition's order); a record read again keeps its offset (a replay)."""
        sent = []
        for worker, table in enumerate(self.participants):
            mine = []
            for r in batch:
                if self.worker_of(r) != worker:
                    continue
                offset = self.offsets.setdefault(id(r), self.ends[worker])
                if offset == self.ends[worker]:
                    self.ends[worker] += 1
                mine.append(SimpleNamespace(**{**vars(r), "offset": offset}))
            if mine:
                for _, _, key, value, _, _ in self.aggregate(mine, table).outgoing:
                    sent.append(SimpleNamespace(key=key, value=value))
        self.log.extend(sent)
        return sent

    def roll(self, contributions: Sequence[Any]) -> None:
        self.applied += len(contributions)
        out = self.rollup(
            contributions, self.contributions_table, self.generation, len(self.log), NOW
        )
        self.keep(out.outgoing)

    def keep(self, outgoing: Sequence[Any]) -> None:
        """Rows for exnet.views, as the tables keep them (the highest version wins)."""
        for _, _, key, value, headers, _ in outgoing:
            table = dict(headers)["exnet-table"].decode()
            row = _json(value)
            assert key is not None
            held = self.rows.get((table, key))
            if held is None or row["version"] >= held["version"]:
                self.rows[(table, key)] = row

    def views(self) -> Views:
        """The tables as read with FINAL, in the oracle's shape."""
        live = [(t, row) for (t, _), row in self.rows.items() if not row["is_deleted"]]

        def figures(row: dict[str, Any], skip: Iterable[str]) -> dict[str, Any]:
            drop = {"updated_at", "version", "is_deleted", *skip}
            return {k: v for k, v in row.items() if k not in drop}

        network = [row for t, row in live if t == "network_summary"]
        return Views(
            node_summary={
                row["node_id"]: figures(row, ("node_id", "node_name"))
                for t, row in live
                if t == "node_summary"
            },
            network_summary=figures(network[0], ()) if network else {},
            arm_summary={
                ArmKey(row["scope"], row["node_id"], row["modality"], row["adjunct"]): figures(
                    row, ("scope", "node_id", "modality", "adjunct")
                )
                for t, row in sorted(live, key=lambda item: str(item[1]))
                if t == "arm_summary"
            },
            node_daily={
                DailyKey(row["node_id"], date.fromisoformat(row["day"])): figures(
                    row, ("node_id", "day")
                )
                for t, row in live
                if t == "node_daily"
            },
        )


def assert_same(got: Views, want: Views) -> None:
    """Equal figures; minutes to 1e-9 (each participant's minutes are a float sum)."""

    def same(a: dict[str, Any], b: dict[str, Any], where: object) -> None:
        assert a.keys() == b.keys(), where
        for column in a:
            if isinstance(b[column], float):
                assert math.isclose(a[column], b[column], rel_tol=1e-12, abs_tol=1e-9), (
                    where,
                    column,
                    a[column],
                    b[column],
                )
            else:
                assert a[column] == b[column], (where, column, a[column], b[column])

    assert got.node_summary.keys() == want.node_summary.keys()
    for node in want.node_summary:
        same(got.node_summary[node], want.node_summary[node], node)
    same(got.network_summary, want.network_summary, "network")
    assert sorted(got.arm_summary) == sorted(want.arm_summary)
    for arm in want.arm_summary:
        same(got.arm_summary[arm], want.arm_summary[arm], arm)
    assert sorted(got.node_daily) == sorted(want.node_daily)
    for day in want.node_daily:
        same(got.node_daily[day], want.node_daily[day], day)


def run(
    events: Sequence[EventBase],
    batches: Iterable[Sequence[int]],
    workers: int = 1,
    endpoint: PrimaryEndpoint | None = None,
) -> Views:
    """Feed ``events`` in the given batches (indexes into ``events``), each batch's
    contributions straight to the rollup."""
    pipeline = Pipeline(workers, endpoint)
    records = [record(event, offset) for offset, event in enumerate(events)]
    for batch in batches:
        pipeline.roll(pipeline.accept([records[i] for i in batch]))
    return pipeline.views()


# --- arrival orders, by hand ------------------------------------------------------------


def test_a_session_before_its_randomization_counts_in_the_arm() -> None:
    make = Make()
    session = make.session("P-00000000aa", "N01-S01", "attended", day=3, minutes=40.0)
    randomized = make.enrollment("P-00000000aa", "N01-S01", "randomized", day=1, modality="aerobic")
    events = [session, randomized]
    got = run(events, [[0], [1]])
    assert_same(got, compute_views(events, NODES))
    (arm,) = [f for k, f in got.arm_summary.items() if k.scope == "network"]
    assert arm["sessions_attended"] == 1 and arm["exercise_minutes"] == 40.0


def test_a_baseline_rated_after_the_follow_up_still_makes_a_responder() -> None:
    make = Make()
    who = "P-00000000aa"
    events = [
        make.enrollment(who, "N01-S01", "randomized", day=0, modality="aerobic"),
        make.assessment(who, "N01-S01", "HAMD17", 8, week=8),
        make.assessment(who, "N01-S01", "HAMD17", 20, week=0),
    ]
    for order in ([[0], [1], [2]], [[2, 1, 0]], [[1], [0, 2]]):
        got = run(events, order)
        assert_same(got, compute_views(events, NODES))
        (arm,) = [f for k, f in got.arm_summary.items() if k.scope == "network"]
        assert arm["responders"] == 1


def test_a_second_randomization_moves_the_participant_and_empties_the_old_arm() -> None:
    make = Make()
    who = "P-00000000aa"
    events = [
        make.enrollment(who, "N01-S01", "randomized", day=0, modality="aerobic"),
        make.session(who, "N01-S01", "attended", day=2, minutes=30.0),
        make.enrollment(who, "N02-S01", "randomized", day=5, modality="resistance"),
    ]
    pipeline = Pipeline()
    records = [record(event, offset) for offset, event in enumerate(events)]
    pipeline.roll(pipeline.accept(records[:2]))
    assert {k.modality for k in pipeline.views().arm_summary} == {"aerobic"}
    pipeline.roll(pipeline.accept(records[2:]))
    got = pipeline.views()
    assert_same(got, compute_views(events, NODES))
    assert {k.modality for k in got.arm_summary} == {"resistance"}
    # The old arm's rows were sent deleted (ReplacingMergeTree's is_deleted).
    deleted = [row for (t, _), row in pipeline.rows.items() if row["is_deleted"]]
    assert {row["modality"] for row in deleted} == {"aerobic"} and len(deleted) == 2
    # ... and the randomization made a week earlier loses to the later one, whatever the order.
    assert_same(run(events, [[2], [0, 1]]), compute_views(events, NODES))


def test_a_status_and_a_specimen_at_two_nodes_count_once_in_the_network_row() -> None:
    """The network row counts distinct participants per status and distinct specimens,
    whichever node pieces hold them, in any order, and so does a rebuild."""
    make = Make()
    who, other = "P-00000000aa", "P-00000000bb"
    events = [
        make.enrollment(who, "N01-S01", "screened", day=0),
        make.enrollment(who, "N02-S01", "screened", day=1),
        make.assay(who, "N01-S01", "SPC-0000000001"),
        make.assay(who, "N02-S01", "SPC-0000000001"),
        make.enrollment(other, "N02-S01", "screened", day=2),
        make.session(who, "N02-S01", "attended", day=3, minutes=12.5),
    ]
    for order in ([[0], [1], [2], [3], [4], [5]], [[5, 3, 1], [4, 2, 0]], [[1, 3], [0, 2, 4, 5]]):
        pipeline = Pipeline()
        records = [record(e, i) for i, e in enumerate(events)]
        for batch in order:
            pipeline.roll(pipeline.accept([records[i] for i in batch]))
        got = pipeline.views()
        assert_same(got, compute_views(events, NODES))
        network = got.network_summary
        assert (network["screened"], network["specimens"], network["assays"]) == (2, 1, 2)
        pipeline.rollup = RollupStage("v", NAMES)  # a restart: totals from the table alone
        pipeline.generation += 1
        pipeline.roll([])
        assert_same(pipeline.views(), compute_views(events, NODES))


def test_a_window_sends_each_participant_and_each_row_once_with_the_latest_figures(
    simulated: list[EventBase],
) -> None:
    """The agents' windows: batches applied without sending, then one contribution per
    participant and one message per row, whose figures are the oracle's."""
    records = [record(e, i) for i, e in enumerate(simulated)]
    stage = AggregateStage("c")
    table: dict[bytes, bytes] = {}
    touched: dict[bytes, set[str]] = {}
    for at in range(0, len(records), 20):
        result = stage(records[at : at + 20], table, send=False)
        assert not result.outgoing
        for participant, pieces in result.touched.items():
            touched.setdefault(participant, set()).update(pieces)
    contributions = stage.contributions(touched, table)
    keys = [key or b"" for _, _, key, _, _, _ in contributions]
    assert sorted(keys) == sorted({r.key for r in records})  # each participant once

    windowed = Pipeline()
    shares = [SimpleNamespace(key=key, value=value) for _, _, key, value, _, _ in contributions]
    for at in range(0, len(shares), 20):
        applied = windowed.rollup(
            shares[at : at + 20], windowed.contributions_table, 1, at + 20, NOW, send=False
        )
        assert not applied.outgoing
    rows = windowed.rollup.flush(NOW).outgoing
    row_keys = [(dict(h)["exnet-table"], key) for _, _, key, _, h, _ in rows]
    assert len(row_keys) == len(set(row_keys))  # each row once
    for _, _, key, value, headers, _ in rows:
        assert key is not None
        windowed.rows[(dict(headers)["exnet-table"].decode(), key)] = _json(value)
    assert_same(windowed.views(), compute_views(simulated, NODES))
    assert not windowed.rollup.flush(NOW).outgoing  # nothing changed since


def test_an_event_read_twice_counts_once() -> None:
    make = Make()
    who = "P-00000000aa"
    events = [
        make.enrollment(who, "N01-S01", "randomized", day=0, modality="aerobic"),
        make.session(who, "N01-S01", "attended", day=2, minutes=30.0),
        make.assay(who, "N01-S01", "SP-0001"),
    ]
    got = run(events, [[0, 1], [1, 2], [0, 1, 2], [2]])
    assert_same(got, compute_views(events, NODES))
    assert got.network_summary["sessions_attended"] == 1


def test_a_repeated_or_late_contribution_changes_nothing() -> None:
    make = Make()
    who = "P-00000000aa"
    pipeline = Pipeline()
    events = [
        make.enrollment(who, "N01-S01", "randomized", day=0, modality="aerobic"),
        make.session(who, "N01-S01", "attended", day=2, minutes=30.0),
    ]
    records = [record(event, offset) for offset, event in enumerate(events)]
    first = pipeline.accept(records[:1])
    second = pipeline.accept(records[1:])
    pipeline.roll(second)
    pipeline.roll(second)  # repeated
    pipeline.roll(first)  # late: version 1 after version 2
    assert_same(pipeline.views(), compute_views(events, NODES))


def test_a_participants_pieces_hold_their_share_of_each_row() -> None:
    make = Make()
    who = "P-00000000aa"
    events = [
        make.enrollment(who, "N01-S01", "randomized", day=0, modality="aerobic"),
        make.session(who, "N01-S01", "attended", day=2, minutes=30.5),
        make.session(who, "N01-S01", "missed", day=4),
        make.assay(who, "N01-S01", "SP-0001"),
        make.assay(who, "N01-S01", "SP-0001", analyte="IL6"),
    ]
    table: dict[bytes, bytes] = {}
    (message,) = AggregateStage("c")([record(e, i) for i, e in enumerate(events)], table).outgoing
    pieces = _json(message[3])["pieces"]
    assert sorted(pieces) == ["arm", "day|N01|2025-03-03", "day|N01|2025-03-05",
                              "day|N01|2025-03-07", "node|N01"]  # fmt: skip
    node = pieces["node|N01"]
    assert node["reached"] == ["randomized"] and node["v"] == 5  # five events counted
    assert (node["sessions_attended"], node["sessions_missed"]) == (1, 1)
    assert node["exercise_minutes"] == 30.5
    assert (node["specimens"], node["assays"]) == (["SP-0001"], 2)
    arm = pieces["arm"]
    assert (arm["modality"], arm["sessions_attended"], arm["v"]) == ("aerobic", 1, 2)
    # A marker per event counted (its UUID's bytes and offset), in one entry; a running
    # state per node and arm piece; the day pieces of a node in one entry.
    marks = table[f"{who}|m|0".encode()]
    assert [marks[i : i + 16] for i in range(0, len(marks), 24)] == [
        uuid.UUID(e.event_id).bytes for e in events
    ]
    assert [int.from_bytes(marks[i + 16 : i + 24], "big") for i in range(0, len(marks), 24)] == [
        0, 1, 2, 3, 4
    ]  # fmt: skip
    days = orjson.loads(table[f"{who}|days|N01".encode()])
    assert sorted(days) == ["2025-03-03", "2025-03-05", "2025-03-07"]
    assert sorted(table) == sorted(
        f"{who}|{key}".encode() for key in ("m|0", "days|N01", "node|N01", "arm")
    )


def test_markers_past_a_chunk_go_on_in_the_next_and_are_all_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aggregate_module, "MARKS_PER_CHUNK", 2)
    make = Make()
    who = "P-00000000aa"
    events = [make.session(who, "N01-S01", "attended", day=d) for d in range(5)]
    stage = AggregateStage("c")
    table: dict[bytes, bytes] = {}
    stage([record(e, i) for i, e in enumerate(events[:3])], table)
    stage([record(e, 3 + i) for i, e in enumerate(events[3:])], table)
    assert [len(table[f"{who}|m|{k}".encode()]) for k in range(3)] == [48, 48, 24]
    assert f"{who}|m|3".encode() not in table
    # Each event read again from another message (a replay) is found, in any chunk.
    replays = stage([record(e, 10 + i) for i, e in enumerate(events)], table)
    assert replays.new_events == 0
    assert _json(replays.outgoing[0][3])["pieces"]["node|N01"]["v"] == 5


def test_a_chunk_filled_past_the_limit_by_an_earlier_version_is_read_and_left_as_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Chunks held 2,000 markers before 2026-12-02; a deployment's state carries over.
    make = Make()
    who = "P-00000000ab"
    events = [make.session(who, "N01-S01", "attended", day=d) for d in range(6)]
    stage = AggregateStage("c")
    table: dict[bytes, bytes] = {}
    monkeypatch.setattr(aggregate_module, "MARKS_PER_CHUNK", 2_000)
    stage([record(e, i) for i, e in enumerate(events[:4])], table)
    monkeypatch.setattr(aggregate_module, "MARKS_PER_CHUNK", 2)
    earlier = table[f"{who}|m|0".encode()]
    counted = stage([record(e, 10 + i) for i, e in enumerate(events)], table)
    assert counted.new_events == 2  # the four in the big chunk were found
    assert table[f"{who}|m|0".encode()] == earlier  # not rewritten
    assert len(table[f"{who}|m|1".encode()]) == 48
    assert _json(counted.outgoing[0][3])["pieces"]["node|N01"]["v"] == 6


def _earlier_layout(table: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The same state as the layout before markers and days were grouped kept it."""
    earlier = {}
    for key, value in table.items():
        participant, kind, rest = (*key.split(b"|", 2), b"")[:3]
        if kind == b"m":
            for at in range(0, len(value), 24):
                event_id = str(uuid.UUID(bytes=value[at : at + 16])).encode()
                offset = int.from_bytes(value[at + 16 : at + 24], "big")
                earlier[participant + b"|e|" + event_id] = str(offset).encode()
        elif kind == b"days":
            for day, state in orjson.loads(value).items():
                earlier[b"%s|day|%s|%s" % (participant, rest, day.encode())] = json_value(state)
        else:
            earlier[key] = value
    return earlier


def test_the_earlier_tables_layout_carries_over() -> None:
    make = Make()
    who = "P-00000000aa"
    first = make.session(who, "N01-S01", "attended", day=1, minutes=20.0)
    stage = AggregateStage("c")
    table: dict[bytes, bytes] = {}
    stage([record(first, 0)], table)
    earlier = _earlier_layout(table)
    assert f"{who}|day|N01|2025-03-04".encode() in earlier  # the earlier keys
    # A replay of the event counted before is not counted again.
    again = stage([record(first, 5)], earlier)
    assert again.new_events == 0
    assert _json(again.outgoing[0][3])["pieces"]["day|N01|2025-03-04"]["v"] == 1
    # A new event on the same day goes on from the earlier day's state.
    later = make.session(who, "N01-S01", "attended", day=1, minutes=30.0)
    (message,) = stage([record(later, 6)], earlier).outgoing
    pieces = _json(message[3])["pieces"]
    assert pieces["day|N01|2025-03-04"] == {
        "sessions_attended": 2, "exercise_minutes": 50.0, "v": 2
    }  # fmt: skip
    assert pieces["node|N01"]["v"] == 2
    assert orjson.loads(earlier[f"{who}|days|N01".encode()])["2025-03-04"]["n"] == 2


def test_a_pipeline_whose_tables_hold_the_earlier_layout_goes_on_exact() -> None:
    make = Make()
    who = "P-00000000aa"
    events = [
        make.enrollment(who, "N01-S01", "randomized", day=1, modality="aerobic"),
        make.session(who, "N01-S01", "attended", day=1, minutes=20.0),
        make.session(who, "N01-S01", "attended", day=1, minutes=30.0),
    ]
    records = [record(event, offset) for offset, event in enumerate(events)]
    pipeline = Pipeline()
    pipeline.roll(pipeline.accept(records[:2]))
    pipeline.participants[0] = _earlier_layout(pipeline.participants[0])
    pipeline.contributions_table = _earlier_layout(pipeline.contributions_table)
    assert f"{who}|day|N01|2025-03-04".encode() in pipeline.contributions_table
    pipeline.rollup = RollupStage("v", NAMES)  # a restart: totals from the table alone
    pipeline.generation += 1
    pipeline.roll(pipeline.accept(records))  # the first two again (replays), a new one
    assert_same(pipeline.views(), compute_views(events, NODES))
    # The day is now held twice (its own key, and the newer piece grouped): counted once.
    assert f"{who}|days|N01".encode() in pipeline.contributions_table
    pipeline.rollup = RollupStage("v", NAMES)
    pipeline.generation += 1
    pipeline.roll([])
    assert_same(pipeline.views(), compute_views(events, NODES))


def test_a_batch_sends_only_the_pieces_its_events_touch() -> None:
    make = Make()
    who = "P-00000000aa"
    first = [record(make.session(who, "N01-S01", "attended", day=d), d) for d in (1, 2, 3)]
    later = record(make.session(who, "N02-S01", "missed", day=9), 4)
    stage = AggregateStage("c")
    table: dict[bytes, bytes] = {}
    stage(first, table)
    (message,) = stage([later], table).outgoing
    sent = _json(message[3])["pieces"]
    assert sorted(sent) == ["day|N02|2025-03-12", "node|N02"]
    assert sent["node|N02"] == {"sessions_missed": 1, "v": 1}


# --- many participants, any order -------------------------------------------------------


@pytest.fixture(scope="module")
def simulated() -> list[EventBase]:
    registry = load_registry(DEMO_REGISTRY)
    simulation = generate(registry, SimulationConfig(seed=11, participants=60))
    validator = Validator(registry)
    events = []
    for offset, message in enumerate(simulation.messages):
        if message.kind is MessageKind.EVENT:
            outcome = validator.validate_message(
                message.value, message.key, Origin(message.topic.value, 0, offset)
            )
            assert isinstance(outcome, Accepted)
            events.append(outcome.event)
    return events


def _batches(count: int, rng: random.Random, replays: float = 0.0) -> list[list[int]]:
    """Every index in a shuffled order, in batches of 1-80; some batches read twice,
    some with part of an earlier batch again."""
    order = list(range(count))
    rng.shuffle(order)
    batches: list[list[int]] = []
    while order:
        size = rng.randint(1, 80)
        batch, order = order[:size], order[size:]
        batches.append(batch)
        if batches and rng.random() < replays:
            batches.append(list(rng.choice(batches)))
    return batches


@pytest.mark.parametrize(
    ("seed", "endpoint"),
    [
        (1, None),
        (2, None),
        (3, PrimaryEndpoint(instrument="HAMD17", week=4)),
        (4, PrimaryEndpoint(instrument="PHQ9", week=8, response_reduction_pct=30)),
    ],
)
def test_any_order_and_batching_gives_the_oracles_figures(
    simulated: list[EventBase], seed: int, endpoint: PrimaryEndpoint | None
) -> None:
    rng = random.Random(seed)
    want = compute_views(simulated, NODES, endpoint)
    got = run(simulated, _batches(len(simulated), rng, replays=0.2), endpoint=endpoint)
    assert_same(got, want)
    if endpoint is not None:  # the endpoint changes who counts, so the case tests something
        assert want.arm_summary != compute_views(simulated, NODES).arm_summary


def test_several_workers_and_contributions_repeated_late_and_after_a_restart(
    simulated: list[EventBase],
) -> None:
    rng = random.Random(7)
    pipeline = Pipeline(workers=3)
    records = [record(event, offset) for offset, event in enumerate(simulated)]
    pending: list[Any] = []
    for batch in _batches(len(records), rng, replays=0.1):
        pending.extend(pipeline.accept([records[i] for i in batch]))
        if rng.random() < 0.5:
            rng.shuffle(pending)  # contributions of one participant out of order
            pipeline.roll(pending)
            pending = []
        if rng.random() < 0.1:
            # A crash of the rollup: the table survives (its changelog), the totals are
            # rebuilt in the next generation, and an earlier run of contributions is
            # read again.
            pipeline.generation += 1
            start = rng.randrange(len(pipeline.log))
            pipeline.roll(pipeline.log[start:])
    pipeline.roll(pending)
    assert_same(pipeline.views(), compute_views(simulated, NODES))


def test_live_views_hold_the_rows_sent(simulated: list[EventBase]) -> None:
    pipeline = Pipeline()
    pipeline.roll(pipeline.accept([record(e, i) for i, e in enumerate(simulated)]))
    nodes = pipeline.live.rows("node_summary")
    assert nodes is not None
    sent = [row for (t, _), row in sorted(pipeline.rows.items()) if t == "node_summary"]
    # the rows sent, less the columns that only order versions in ClickHouse
    assert nodes == [
        {k: v for k, v in r.items() if k not in ("version", "is_deleted")} for r in sent
    ]
    assert all("version" in r and "is_deleted" in r for r in sent)
    assert [row["node_id"] for row in nodes] == sorted(NODES)
    assert LiveViews().rows("node_summary") is None


def test_a_restarted_rollup_serves_its_tables_figures_before_any_new_contribution(
    simulated: list[EventBase],
) -> None:
    pipeline = Pipeline()
    pipeline.roll(pipeline.accept([record(e, i) for i, e in enumerate(simulated)]))
    live = LiveViews()
    restarted = RollupStage("v", NAMES, live)
    restarted.refresh(pipeline.contributions_table, NOW)

    def figures(rows: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        assert rows is not None
        return [{k: v for k, v in r.items() if k != "updated_at"} for r in rows]

    for view in ("node_summary", "network_summary", "arm_summary", "node_daily"):
        assert figures(live.rows(view)) == figures(pipeline.live.rows(view)), view
    assert all("version" not in row for row in live.rows("node_summary") or [])


@pytest.mark.parametrize("batch_first", [False, True], ids=["refresh_first", "batch_first"])
@pytest.mark.parametrize("rebalanced", [False, True])
def test_a_refreshed_rollup_rebuilds_again_only_after_a_rebalance(
    simulated: list[EventBase], monkeypatch: pytest.MonkeyPatch, rebalanced: bool, batch_first: bool
) -> None:
    """The totals are rebuilt from the table once per generation, by
    :meth:`RollupStage.refresh` or a batch, whichever comes first; again only in another
    generation (after a million events, a rebuild holds the worker's thread for
    seconds). The first batch after a refresh sends every row."""
    records = [record(e, i) for i, e in enumerate(simulated)]
    half = len(records) // 2
    pipeline = Pipeline()
    pipeline.roll(pipeline.accept(records[:half]))
    pipeline.rollup = RollupStage("v", NAMES, pipeline.live)  # a restart
    pipeline.rows.clear()  # what reaches the view tables from here on
    rebuilds = []
    rebuild = pipeline.rollup._rebuild

    def counted(table: dict[bytes, bytes]) -> None:
        rebuilds.append(table)
        rebuild(table)

    monkeypatch.setattr(pipeline.rollup, "_rebuild", counted)
    pipeline.generation += 1
    three_quarters = half + (len(records) - half) // 2
    if batch_first:
        pipeline.roll(pipeline.accept(records[half:three_quarters]))
    pipeline.rollup.refresh(pipeline.contributions_table, NOW, pipeline.generation)
    if rebalanced:
        pipeline.generation += 1
    pipeline.roll(pipeline.accept(records[three_quarters if batch_first else half :]))
    assert len(rebuilds) == 1 + rebalanced
    assert_same(pipeline.views(), compute_views(simulated, NODES))  # every row sent again


def test_the_summaries_hold_every_registered_node_before_any_contribution(
    simulated: list[EventBase],
) -> None:
    """SPEC §4: ``node_summary`` has a row per registered node and ``network_summary``
    one row, zeros before anything is counted (an empty network; a node just added to
    the registry). Sent once a generation at the offset it started reading from: the
    rows of its batches win, and rows sent before hold the same figures."""
    pipeline = Pipeline()
    pipeline.keep(pipeline.rollup.summaries({}, NOW, pipeline.generation, 0))
    empty = pipeline.views()
    assert sorted(empty.node_summary) == sorted(NODES)
    assert all(not any(row.values()) for row in empty.node_summary.values())
    assert empty.network_summary and not any(empty.network_summary.values())

    records = [record(e, i) for i, e in enumerate(simulated)]
    half = len(records) // 2
    pipeline.roll(pipeline.accept(records[:half]))
    before = {key: dict(row) for key, row in pipeline.rows.items()}
    # A restart with one more node registered, before any new contribution.
    pipeline.rollup = RollupStage("v", {**NAMES, "N09": "Node N09"}, pipeline.live)
    pipeline.generation += 1
    summaries = pipeline.rollup.summaries(
        pipeline.contributions_table, NOW, pipeline.generation, len(pipeline.log)
    )
    assert [key for _, _, key, _, _, _ in summaries] == [
        b"network_summary",
        *(f"node_summary|{node}".encode() for node in sorted([*NODES, "N09"])),
    ]
    pipeline.keep(summaries)
    for (table, key), row in pipeline.rows.items():
        if key == b"node_summary|N09":
            keys = ("node_id", "node_name", "updated_at", "version", "is_deleted")
            figures = {k: v for k, v in row.items() if k not in keys}
            assert figures and not any(figures.values())
            assert (row["node_name"], row["version"]) == ("Node N09", len(pipeline.log))
            continue
        drop = ("updated_at", "version")
        held = {k: v for k, v in before[(table, key)].items() if k not in drop}
        assert {k: v for k, v in row.items() if k not in drop} == held, key
    pipeline.roll(pipeline.accept(records[half:]))
    got = pipeline.views()
    assert not any(got.node_summary.pop("N09").values())
    assert_same(got, compute_views(simulated, NODES))


def test_pieces_lost_after_the_tables_write_are_sent_again_by_the_replayed_batch(
    simulated: list[EventBase],
) -> None:
    """A crash after the participants' changelog was acknowledged but before their
    pieces were: the batch is read again, finds its events known, and sends anyway."""
    pipeline = Pipeline()
    records = [record(e, i) for i, e in enumerate(simulated)]
    half = len(records) // 2
    pipeline.roll(pipeline.accept(records[:half]))
    pipeline.accept(records[half:])  # their pieces are lost
    pipeline.roll(pipeline.accept(records[half:]))  # the batch read again
    assert_same(pipeline.views(), compute_views(simulated, NODES))


def test_the_network_share_is_derived_not_stored_so_a_rebuild_cannot_find_it_stale(
    simulated: list[EventBase],
) -> None:
    pipeline = Pipeline()
    pipeline.roll(pipeline.accept([record(e, i) for i, e in enumerate(simulated)]))
    assert not [key for key in pipeline.contributions_table if key.endswith(b"|network")]
    pipeline.rollup = RollupStage("v", NAMES)  # a restart: totals from the table alone
    pipeline.generation += 1
    pipeline.roll([])
    assert_same(pipeline.views(), compute_views(simulated, NODES))


def test_a_crash_that_kept_a_batchs_markers_but_not_its_pieces_loses_nothing() -> None:
    """The changelog may survive a crash in part: the markers (written first), not the
    piece states. The batch read again counts its events in the pieces that missed them."""
    make = Make()
    who = "P-00000000aa"
    first = [record(make.session(who, "N01-S01", "attended", day=1, minutes=20.0), 0)]
    second = [
        record(make.session(who, "N01-S01", "attended", day=1, minutes=30.0), 1),
        record(make.session(who, "N01-S01", "attended", day=5, minutes=40.0), 2),
    ]
    stage = AggregateStage("c")
    table: dict[bytes, bytes] = {}
    stage(first, table)
    before = dict(table)
    stage(second, table)
    # What survived: the first batch whole, and the second batch's markers only.
    recovered = {**before, **{k: v for k, v in table.items() if b"|m|" in k}}
    (message,) = stage(second, recovered).outgoing
    pieces = _json(message[3])["pieces"]
    assert pieces["node|N01"]["sessions_attended"] == 3
    assert pieces["node|N01"]["exercise_minutes"] == 90.0
    assert pieces["day|N01|2025-03-04"]["sessions_attended"] == 2
    assert pieces["day|N01|2025-03-08"] == {
        "sessions_attended": 1,
        "exercise_minutes": 40.0,
        "v": 1,
    }
    assert recovered == table  # the same state as without the crash


def test_a_message_of_another_format_is_skipped_and_counted_not_fatal() -> None:
    make = Make()
    good = record(make.session("P-00000000aa", "N01-S01", "attended", day=1), 1)
    old = SimpleNamespace(key=b"P-00000000aa", value=b"{}", headers=[], offset=0)
    result = AggregateStage("c")([old, good], {})
    assert (result.skipped, result.new_events, len(result.outgoing)) == (1, 1, 1)


def test_an_event_twice_in_one_batch_counts_once() -> None:
    """Deduplicate passes an event on again when it reads its source message again: both
    copies may reach the aggregate in one batch, at two offsets."""
    make = Make()
    session = make.session("P-00000000aa", "N01-S01", "attended", day=1, minutes=20.0)
    (message,) = AggregateStage("c")([record(session, 3), record(session, 7)], {}).outgoing
    pieces = _json(message[3])["pieces"]
    assert pieces["node|N01"] == {"sessions_attended": 1, "exercise_minutes": 20.0, "v": 1}


@pytest.mark.parametrize("sort_keys", [False, True])
def test_table_values_take_their_own_size_in_memory(sort_keys: bool) -> None:
    """orjson returns its 4 KiB write buffer as the bytes object; a table of them held
    ~4 KiB an entry (4.7 GiB after a million events), and the rollup's network pieces
    (sorted keys) 64 MB over the 1M bench's 15,700 participants."""
    tracemalloc.start()
    try:
        values = [
            json_value({"v": n, "sessions_attended": n}, sort_keys=sort_keys) for n in range(1000)
        ]
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held / len(values) < 200  # bytes an entry (orjson's own: ~4,100)
    assert orjson.loads(values[7]) == {"sessions_attended": 7, "v": 7}
    assert values[7].startswith(b'{"sessions_attended"' if sort_keys else b'{"v"')
