"""The stream transport: which offsets it commits, and that the app selects it."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import faust
import pytest
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams.transport import (
    SCHEME,
    BatchMessage,
    TopicBatch,
    Transport,
    commit_end,
    register,
)


@dataclass
class _Batch:
    first_offset: int
    offset: int
    done: bool = False
    fetched_at: float = field(default_factory=time.monotonic)
    warnings: int = 0
    generation_id: int = 1
    tracked: bool = False  # taken from its stream's buffer by an agent
    taken: bool = False  # admitted to its agent


def test_nothing_is_committed_before_the_first_batch_is_done() -> None:
    chain = deque([_Batch(0, 9), _Batch(10, 19, done=True)])
    assert commit_end(chain) is None
    assert len(chain) == 2  # nothing forgotten


def test_the_end_of_the_done_prefix_is_committed() -> None:
    chain = deque([_Batch(0, 9, True), _Batch(10, 19, True), _Batch(20, 29), _Batch(30, 39, True)])
    assert commit_end(chain) == 20
    # the batch not done blocks what follows it, however many are done
    assert commit_end(chain) is None
    chain[0].done = True
    assert commit_end(chain) == 40
    assert not chain


def test_batches_need_not_be_contiguous_in_offsets() -> None:
    # Kafka's offsets may skip (transaction markers, compaction): fetch order is the chain.
    chain = deque([_Batch(0, 9, True), _Batch(15, 19, True)])
    assert commit_end(chain) == 20


def test_the_scheme_selects_the_transport() -> None:
    register(TRANSPORTS)
    register(TRANSPORTS)  # idempotent
    assert TRANSPORTS.by_url(f"{SCHEME}://127.0.0.1:9092") is Transport
    app = faust.App("exnet-test-transport", broker=f"{SCHEME}://127.0.0.1:9092")
    assert type(app.transport) is Transport
    assert type(app.consumer).__module__ == "streams.transport"
    assert type(app.producer).__module__ == "streams.transport"


@dataclass
class _Record:
    offset: int
    timestamp: int | None = None
    timestamp_type: int = 0


class _Consumer:
    """The transport's consumer with its seeks recorded instead of sent to Kafka."""

    def __init__(self) -> None:
        app = faust.App(f"exnet-test-{id(self)}", broker=f"{SCHEME}://127.0.0.1:9092")
        register(TRANSPORTS)
        consumer: Any = app.consumer
        self.seeks: list[tuple[Any, int]] = []

        async def seek(tp: Any, offset: int) -> None:
            self.seeks.append((tp, offset))

        consumer.seek = seek
        self.consumer = consumer

    def fetch(self, tp: Any, *offsets: int) -> list[int]:
        fresh = asyncio.run(self.consumer._in_sequence(tp, [_Record(o) for o in offsets]))
        return [record.offset for record in fresh]


TP0 = TP("exnet.session", 0)


def test_a_fetch_from_before_a_seek_is_not_delivered_after_it() -> None:
    # Sought to 100; a fetch answered before the seek arrives with 150-152: delivering
    # it would let a commit jump 100-149. It is dropped and 100 read again.
    harness = _Consumer()
    harness.consumer._next[TP0] = 100
    assert harness.fetch(TP0, 150, 151, 152) == []
    assert harness.seeks == [(TP0, 100)]
    assert harness.fetch(TP0, 100, 101) == [100, 101]
    assert harness.consumer._next[TP0] == 102


def test_offsets_kafka_skips_are_delivered_once_read_again() -> None:
    # Transaction markers or compaction: reading again from 100 gives 150 again.
    harness = _Consumer()
    harness.consumer._next[TP0] = 100
    assert harness.fetch(TP0, 150, 151) == []
    assert harness.fetch(TP0, 150, 151) == [150, 151]
    assert harness.seeks == [(TP0, 100)]
    assert harness.consumer._next[TP0] == 152


def test_records_delivered_since_the_seek_are_not_delivered_twice() -> None:
    harness = _Consumer()
    harness.consumer._next[TP0] = 100
    assert harness.fetch(TP0, 95, 96, 99) == []
    assert harness.fetch(TP0, 98, 99, 100, 101) == [100, 101]
    assert harness.seeks == []


def test_no_partition_is_taken_out_of_the_fetch_set_under_buffer_pressure() -> None:
    # Faust's way (out until a pressure-drop callback puts it back) can leave a
    # partition unfetched; a full buffer blocks the fetch loop instead.
    consumer: Any = _Consumer().consumer
    consumer._set_active_tps({TP0})
    consumer.on_buffer_full(TP0)
    assert TP0 in consumer._get_active_partitions()


class _Positions:
    """Stands for the consumer's thread: the fetch positions it reports."""

    def __init__(self) -> None:
        self.at: dict[Any, int] = {}

    async def positions(self, partitions: Any) -> dict[Any, int | None]:
        return {tp: self.at.get(tp) for tp in partitions}


def _tail_harness(delivered_to: int, position: int) -> tuple[_Consumer, _Positions]:
    harness = _Consumer()
    consumer = harness.consumer
    thread = _Positions()
    thread.at[TP0] = position
    consumer._thread = thread
    consumer.assignment = lambda: {TP0}
    consumer._next[TP0] = delivered_to
    return harness, thread


def test_a_transaction_marker_after_the_last_record_is_committed_past() -> None:
    # A site's transactional producer: records 0-9, then its commit marker at 10. The
    # fetch position is 11 and no record will ever come for offset 10.
    harness, _ = _tail_harness(delivered_to=10, position=11)
    consumer = harness.consumer
    consumer._chains[TP0] = deque([_Batch(0, 9, done=True)])
    asyncio.run(consumer._read_skipped_again())
    assert harness.seeks == [(TP0, 10)]  # first: read again, it may be a dropped record
    assert consumer._new_offset(TP0) == 10  # nothing past what was delivered, yet
    asyncio.run(consumer._read_skipped_again())  # read again: nothing, position 11 again
    assert harness.seeks == [(TP0, 10)]
    assert consumer._next[TP0] == 11
    assert consumer._new_offset(TP0) == 11
    assert consumer._new_offset(TP0) is None  # committed once


def test_records_dropped_here_are_read_again_not_committed_past() -> None:
    harness, _ = _tail_harness(delivered_to=10, position=15)
    consumer = harness.consumer
    asyncio.run(consumer._read_skipped_again())
    consumer._dropped.add(TP0)  # the records read again were dropped once more
    asyncio.run(consumer._read_skipped_again())
    assert harness.seeks == [(TP0, 10), (TP0, 10)]
    assert consumer._next[TP0] == 10 and consumer._new_offset(TP0) is None


def test_records_delivered_when_read_again_end_the_check() -> None:
    harness, thread = _tail_harness(delivered_to=10, position=15)
    consumer = harness.consumer
    asyncio.run(consumer._read_skipped_again())
    assert harness.fetch(TP0, 10, 11, 12, 13, 14) == [10, 11, 12, 13, 14]
    assert TP0 not in consumer._tail_checks
    thread.at[TP0] = 15
    asyncio.run(consumer._read_skipped_again())
    assert harness.seeks == [(TP0, 10)] and consumer._next[TP0] == 15


def test_the_gap_waits_for_the_batches_before_it() -> None:
    harness, _ = _tail_harness(delivered_to=10, position=11)
    consumer = harness.consumer
    consumer._chains[TP0] = deque([_Batch(0, 9)])
    asyncio.run(consumer._read_skipped_again())
    asyncio.run(consumer._read_skipped_again())
    assert consumer._new_offset(TP0) is None  # batch 0-9 is not done
    consumer._chains[TP0][0].done = True
    assert consumer._new_offset(TP0) == 11


def _seek_harness(
    monkeypatch: pytest.MonkeyPatch, committed: int | None
) -> tuple[_Consumer, list[dict[Any, int]]]:
    """A consumer of TP0 in generation 1, whose seek to the committed offsets finds
    ``committed`` (None: nothing committed; the partition's beginning is 0)."""
    harness = _Consumer()
    consumer = harness.consumer

    async def faust_seek(self: Any) -> None:  # Faust's: reads Kafka's committed offsets
        self._committed_offset[TP0] = committed

    async def earliest(*partitions: Any) -> dict[Any, int]:
        return dict.fromkeys(partitions, 0)

    seek_waits: list[dict[Any, int]] = []

    async def seek_wait(partitions: Any) -> None:
        seek_waits.append(dict(partitions))

    monkeypatch.setattr(faust_aiokafka.Consumer, "perform_seek", faust_seek)
    consumer.assignment = lambda: {TP0}
    consumer.earliest_offsets = earliest
    consumer.seek_wait = seek_wait
    consumer.app.consumer_generation_id = 1
    consumer.flow_active = True
    return harness, seek_waits


def _deliver(harness: _Consumer, first: int, last: int, *, done: bool) -> None:
    """Delivers offsets first..last as one batch of generation 1."""
    assert harness.fetch(TP0, *range(first, last + 1)) == list(range(first, last + 1))
    harness.consumer._chains[TP0].append(_Batch(first, last, done=done))


@pytest.mark.parametrize("committed", [None, 0])
def test_batches_whose_commit_is_on_its_way_at_the_seek_are_not_read_again(
    monkeypatch: pytest.MonkeyPatch, committed: int | None
) -> None:
    # A start with a backlog: the worker delivers and finishes 0-19 and sends their
    # commit; Faust's seek to the committed offsets reads Kafka before that commit
    # landed (an outside tester's 3-broker TLS cluster, 2026-12-03: a tenth to a
    # half of each start's backlog counted twice, and on exnet.accepted twice).
    harness, seek_waits = _seek_harness(monkeypatch, committed)
    consumer = harness.consumer
    consumer._next[TP0] = 0
    _deliver(harness, 0, 9, done=True)
    _deliver(harness, 10, 19, done=True)
    assert consumer._new_offset(TP0) == 20  # sent, not landed
    asyncio.run(consumer.perform_seek())
    assert consumer._next[TP0] == 20
    assert harness.fetch(TP0, *range(0, 25)) == [20, 21, 22, 23, 24]  # not 0-19 again
    assert seek_waits == [{TP0: 20}]
    assert consumer.started_at(TP0, 1) == 0  # the generation still began at 0


def test_a_batch_not_done_after_a_released_one_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    harness, seek_waits = _seek_harness(monkeypatch, committed=None)
    consumer = harness.consumer
    consumer._next[TP0] = 0
    _deliver(harness, 0, 9, done=True)
    assert consumer._new_offset(TP0) == 10
    _deliver(harness, 10, 19, done=False)  # taken by its agent, not done yet
    asyncio.run(consumer.perform_seek())
    assert consumer._next[TP0] == 20 and len(consumer._chains[TP0]) == 1
    assert harness.fetch(TP0, *range(0, 22)) == [20, 21]
    consumer._chains[TP0][0].done = True
    assert consumer._new_offset(TP0) == 20


@pytest.mark.parametrize("released", ["before the rebalance", "after it"])
def test_batches_of_an_earlier_generation_are_read_again(
    monkeypatch: pytest.MonkeyPatch, released: str
) -> None:
    # Released before: another worker may have held the partition since. Done after
    # (its outputs acknowledged late): the recovery may have laid a changelog without
    # its writes over the table.
    harness, _ = _seek_harness(monkeypatch, committed=None)
    consumer = harness.consumer
    consumer._next[TP0] = 0
    _deliver(harness, 0, 9, done=True)
    if released == "after it":
        consumer.app.consumer_generation_id = 2
    assert consumer._new_offset(TP0) == 10
    consumer.app.consumer_generation_id = 2
    asyncio.run(consumer.perform_seek())
    assert consumer._next[TP0] == 0


def test_the_generation_s_start_is_recorded_under_the_generation_sought(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A rebalance overtakes the seek while it reads the committed offsets: the starts
    # found are generation 1's, not generation 2's (whose own seek is still to come).
    harness, _ = _seek_harness(monkeypatch, committed=None)
    consumer = harness.consumer

    async def overtaken(self: Any) -> None:
        self._committed_offset[TP0] = None
        self.app.consumer_generation_id = 2

    monkeypatch.setattr(faust_aiokafka.Consumer, "perform_seek", overtaken)
    asyncio.run(consumer.perform_seek())
    assert consumer.started_at(TP0, 1) == 0
    assert consumer.started_at(TP0, 2) is None


def test_no_batch_is_delivered_before_the_generation_s_seek(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Faust resumes the stream partitions, then seeks them to the committed offsets.
    # A fetch before that seek began past the committed 125 (125-144 dropped on the
    # way): delivered, 145-149 would be processed before the 125-144 the seek reads.
    harness, _ = _seek_harness(monkeypatch, committed=125)
    consumer = harness.consumer
    consumer.highwater = lambda tp: 200
    fetched: list[dict[TP, list[_Record]]] = [{TP0: [_Record(o) for o in range(145, 150)]}]

    async def next_records(timeout: float) -> tuple[dict[TP, list[_Record]], None]:
        return fetched.pop(0), None

    consumer._wait_next_records = next_records

    async def fetch_round() -> list[int]:
        return [
            o.offset
            for _, unit in [i async for i in consumer.getmany(1.0)]
            for batch in unit.batches
            for o in batch.records
        ]

    assert asyncio.run(fetch_round()) == []
    assert TP0 in consumer._dropped and not consumer._chains[TP0]
    asyncio.run(consumer.perform_seek())
    assert consumer._next[TP0] == 125
    fetched.append({TP0: [_Record(o) for o in range(125, 130)]})
    assert asyncio.run(fetch_round()) == [125, 126, 127, 128, 129]


TPV = TP("exnet.validated", 4)


def test_a_fetch_reaches_the_agents_as_one_message_per_topic() -> None:
    # Faust's per-message cost once per topic of a fetch, not once per partition: at a
    # steady 5,000 events/s a fetch named 36 partitions, and the stream hops' p50 fell
    # from 0.21-0.57 s to 0.11-0.14 s once they were grouped (2026-12-04).
    harness = _Consumer()
    consumer = harness.consumer
    consumer.app.consumer_generation_id = 1
    consumer.flow_active = True
    consumer._generation_start = (1, {})  # this generation's seek is done
    consumer.highwater = lambda tp: 100
    fetched = {
        TP0: [_Record(o) for o in (3, 4)],
        TPV: [_Record(7)],
        TP1: [_Record(o) for o in (8, 9, 10)],
    }

    async def next_records(timeout: float) -> tuple[dict[TP, list[_Record]], None]:
        return fetched, None

    consumer._wait_next_records = next_records

    async def fetch_round() -> list[tuple[TP, Any]]:
        return [item async for item in consumer.getmany(1.0)]

    delivered = asyncio.run(fetch_round())
    assert [(tp, type(unit)) for tp, unit in delivered] == [
        (TP0, TopicBatch),
        (TPV, TopicBatch),
    ]
    session, validated = (unit for _, unit in delivered)
    assert [(b.tp, [r.offset for r in b.records]) for b in session.batches] == [
        (TP0, [3, 4]),
        (TP1, [8, 9, 10]),
    ]
    assert [b.tp for b in validated.batches] == [TPV]
    # Each batch is its own partition's, in that partition's chain, admitted, settled
    # and committed on its own.
    assert list(consumer._chains[TP1]) == [session.batches[1]]
    taken_at = time.monotonic()
    assert asyncio.run(consumer.admit(session.batches[1]))
    assert TP1 in consumer._acked  # Faust commits only partitions it has acks for
    # Faust's check that each partition's stream keeps up sees this one taken.
    assert consumer.app.monitor.stream_inbound_time[TP1] >= taken_at
    assert TP0 not in consumer.app.monitor.stream_inbound_time  # not admitted yet
    check = inspect.getsource(faust_aiokafka.AIOKafkaConsumerThread.verify_event_path)
    assert "monitor.stream_inbound_time.get(tp)" in check  # what the check reads
    session.batches[1].done = True
    assert consumer._new_offset(TP1) == 11
    assert consumer._new_offset(TP0) is None  # its batch is not done


def _delivered(harness: _Consumer, first: int, last: int) -> BatchMessage:
    """Offsets first..last of TP0 delivered in sequence, as one batch in its chain."""
    records = [_Record(o) for o in range(first, last + 1)]
    assert harness.fetch(TP0, first, last) == [first, last]
    batch = BatchMessage(TP0, records, 1)
    harness.consumer._chains[TP0].append(batch)
    return batch


def test_batches_are_admitted_to_their_agent_in_fetch_order() -> None:
    harness = _Consumer()
    harness.consumer._next[TP0] = 0
    first, second = _delivered(harness, 0, 9), _delivered(harness, 10, 19)
    assert asyncio.run(harness.consumer.admit(first))
    assert asyncio.run(harness.consumer.admit(second))
    assert harness.seeks == []


def test_a_batch_that_overtakes_one_dropped_on_its_way_is_skipped_and_both_read_again() -> None:
    # A soak of the SIGTERM test, 2026-12-04: a worker's first batch of a partition
    # never reached its agent, the next ones did; the aggregate then took the first
    # one's records, read after them, for counted (the node view 5 participants short).
    harness = _Consumer()
    consumer = harness.consumer
    consumer._next[TP0] = 131
    dropped, overtaking = _delivered(harness, 131, 149), _delivered(harness, 150, 201)
    assert not asyncio.run(consumer.admit(overtaking))
    assert harness.seeks == [(TP0, 131)]
    assert not consumer._chains[TP0] and consumer._next[TP0] == 131
    # Taken late, the dropped one is no longer the chain's: it comes again with the rest.
    assert not asyncio.run(consumer.admit(dropped))
    assert harness.seeks == [(TP0, 131)]
    again = _delivered(harness, 131, 149)
    assert asyncio.run(consumer.admit(again))


def _stale_chains(harness: _Consumer, *partitions: TP) -> Any:
    """A consumer holding, for each of ``partitions``, a batch fetched long ago that no
    stream took, with flow on (as during a table recovery after a rebalance)."""
    consumer = harness.consumer
    consumer.flow_active = True
    consumer.app.flow_control.resume()
    consumer._positions_checked = time.monotonic()  # no position check this round
    long_ago = time.monotonic() - 60
    for tp in partitions:
        consumer._next[tp] = 10
        consumer._chains[tp].append(_Batch(0, 9, fetched_at=long_ago))
    return consumer


TP1 = TP("exnet.session", 1)


def test_a_revoked_partition_s_batches_are_not_read_again_here() -> None:
    # aiokafka raises IllegalStateError for a seek of a partition not assigned: out of
    # the fetch loop, it would stop the worker.
    harness = _Consumer()
    consumer = _stale_chains(harness, TP0)
    revoked: list[set[TP]] = []

    async def app_revoke(partitions: set[TP]) -> None:  # the app's part: streams, commit
        revoked.append(set(partitions))

    consumer._on_partitions_revoked = app_revoke
    asyncio.run(consumer.on_partitions_revoked({TP0}))
    consumer.assignment = set
    asyncio.run(consumer._read_lost_again())
    assert revoked == [{TP0}] and harness.seeks == []
    assert TP0 not in consumer._chains and TP0 not in consumer._next


def test_a_batch_is_read_again_only_on_a_partition_still_assigned() -> None:
    harness = _Consumer()
    consumer = _stale_chains(harness, TP0, TP1)
    consumer.assignment = lambda: {TP1}
    asyncio.run(consumer._read_lost_again())
    assert harness.seeks == [(TP1, 0)]


def test_a_seek_that_clears_the_chains_meanwhile_ends_the_round() -> None:
    # perform_seek (a rebalance's) runs while this loop awaits its seek, and clears
    # every chain: the partitions still to go are no longer this loop's to read again.
    harness = _Consumer()
    consumer = _stale_chains(harness, TP0, TP1)
    consumer.assignment = lambda: {TP0, TP1}

    async def seek_then_rebalance(tp: Any, offset: int) -> None:
        harness.seeks.append((tp, offset))
        consumer._chains.clear()

    consumer.seek = seek_then_rebalance
    asyncio.run(consumer._read_lost_again())
    assert len(harness.seeks) == 1


def test_a_failed_seek_while_flow_is_off_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    # As Faust's own getmany: a rebalance that overtakes this seek has its own to come.
    consumer: Any = _Consumer().consumer
    consumer.flow_active = False

    async def fetched(timeout: float) -> tuple[dict[TP, list[_Record]], None]:
        return {TP0: [_Record(5)]}, None

    async def seek_overtaken() -> None:
        raise RuntimeError("No current assignment for partition exnet.session-0")

    consumer._wait_next_records = fetched
    consumer.perform_seek = seek_overtaken

    async def fetch_round() -> list[Any]:
        return [item async for item in consumer.getmany(1.0)]

    with caplog.at_level(logging.WARNING):
        assert asyncio.run(fetch_round()) == []
    assert "No current assignment" in caplog.text


async def _commit_while(stop: str) -> tuple[bool, bool]:
    """Commit through a consumer thread that never takes a call (it is not running),
    stopping it as ``stop`` says; the result, and whether the thread was asked."""
    app = faust.App("exnet-test-commit", broker=f"{SCHEME}://127.0.0.1:9092")
    register(TRANSPORTS)
    consumer: Any = app.consumer
    thread = consumer._thread
    if stop == "before":
        thread._crash(RuntimeError("an agent failed"))  # what mode does to every child
    commit = asyncio.ensure_future(thread.commit({TP0: 5}))
    if stop == "meanwhile":
        await asyncio.sleep(0.2)
        assert not commit.done()  # waiting for the thread
        thread.set_shutdown()  # what the thread does as it ends
    did_commit = await asyncio.wait_for(commit, timeout=5)
    return did_commit, thread._method_queue is not None  # made at the first call


def test_a_commit_the_stopped_consumer_thread_never_takes_is_not_waited_for() -> None:
    # exnet up hung in its final commit after the invalid-ratio guard crashed it.
    assert asyncio.run(_commit_while("meanwhile")) == (False, True)


def test_a_crashed_consumer_thread_is_not_asked_to_commit() -> None:
    assert asyncio.run(_commit_while("before")) == (False, False)


def test_a_seek_reaches_aiokafka_only_in_the_consumer_s_thread() -> None:
    """aiokafka's seek, called from the app's thread, raced its fetched_records in the
    consumer's thread (a KeyError that crashed a worker in CI, 2026-12-03)."""
    app = faust.App("exnet-test-seek", broker=f"{SCHEME}://127.0.0.1:9092")
    register(TRANSPORTS)
    consumer: Any = app.consumer
    thread = consumer._thread
    seeks: list[tuple[Any, int]] = []
    calls: list[Any] = []

    class _Aiokafka:
        def seek(self, partition: Any, offset: int) -> None:
            assert calls, "seek called outside the consumer's thread"
            seeks.append((partition, offset))

    async def call_thread(method: Any, *args: Any) -> Any:  # what the thread's loop does
        calls.append(method)
        return method(*args)

    thread._ensure_consumer = _Aiokafka
    thread.call_thread = call_thread
    asyncio.run(consumer.seek(TP0, 42))
    assert seeks == [(TP0, 42)] and len(calls) == 1
    assert consumer._read_offset.get(TP0) == 42  # Faust's own bookkeeping still done


def test_a_seek_the_stopped_consumer_thread_never_takes_is_not_waited_for() -> None:
    async def seek_while_stopping() -> bool:
        app = faust.App("exnet-test-seek-stop", broker=f"{SCHEME}://127.0.0.1:9092")
        register(TRANSPORTS)
        consumer: Any = app.consumer
        thread = consumer._thread
        thread._ensure_consumer = lambda: type("Aiokafka", (), {"seek": None})()
        seek = asyncio.ensure_future(consumer.seek(TP0, 7))
        await asyncio.sleep(0.2)
        waiting = not seek.done()  # for the thread, which is not running
        thread.set_shutdown()  # what the thread does as it ends
        await asyncio.wait_for(seek, timeout=5)
        return waiting

    assert asyncio.run(seek_while_stopping())


def test_the_start_and_stop_overrides_still_replace_what_faust_and_mode_sleep_in() -> None:
    """TableManager.on_start and Worker._sentinel_task stand in for library methods that
    sleep a fixed second; an upgrade that renamed or reshaped them would leave the
    override unused or out of step, silently. Read the libraries' own code."""
    import inspect

    import mode
    from faust.tables import TableManager as FaustTableManager

    from streams.transport import TableManager, Worker

    faust_start = inspect.getsource(FaustTableManager.on_start)
    assert "await self.sleep(1.0)" in faust_start
    assert "await self._update_channels()" in faust_start
    assert "await self.recovery.start()" in faust_start
    ours = inspect.getsource(TableManager.on_start)
    assert "sleep" not in ours and "_update_channels" in ours and "recovery.start" in ours

    assert "_sentinel_task" in vars(mode.Worker)
    assert "asyncio.sleep(1.0)" in inspect.getsource(mode.Worker._sentinel_task)
    assert "_sentinel_task" in inspect.getsource(mode.Worker._shutdown_loop)
    assert issubclass(Worker, faust.Worker) and "_sentinel_task" in vars(Worker)


def test_the_stream_check_leaves_the_tables_changelog_partitions_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Faust's check that each partition's stream keeps up logged a dozen ERROR lines
    per changelog partition at every check from 5 minutes after a start (no stream
    reads a changelog after recovery); input partitions are still checked."""
    app = faust.App("exnet-test-verify", broker=f"{SCHEME}://127.0.0.1:9092")
    register(TRANSPORTS)
    app.Table("seen", partitions=1)
    thread: Any = cast(Any, app.consumer)._thread
    checked: list[TP] = []
    monkeypatch.setattr(
        faust_aiokafka.AIOKafkaConsumerThread,
        "verify_event_path",
        lambda self, now, tp: checked.append(tp),
    )
    changelog = TP("exnet-test-verify-seen-changelog", 0)
    assert changelog.topic in app.tables.changelog_topics
    thread.verify_event_path(0.0, changelog)
    thread.verify_event_path(0.0, TP0)
    assert checked == [TP0]


class _Event:
    """What current_batch reads of Faust's current event (weakly referenced)."""

    def __init__(self, message: Any) -> None:
        self.message = message


def _batch_table(app_id: str, partitions: int) -> Any:
    """A BatchTable ``seen`` of ``partitions`` in a Faust app of the transport."""
    from streams.transport import BatchTable

    register(TRANSPORTS)
    app = faust.App(
        app_id, broker=f"{SCHEME}://127.0.0.1:9092", store="memory://", Table=BatchTable
    )
    return app.Table("seen", partitions=partitions, default=None)


@contextlib.contextmanager
def _current(message: Any) -> Iterator[None]:
    """``message`` as Faust's current event's, as inside an agent."""
    import weakref

    from faust.streams import _current_event

    event = _Event(message)
    token = _current_event.set(weakref.ref(cast(Any, event)))
    try:
        yield
    finally:
        _current_event.reset(token)


_RECORD = SimpleNamespace(offset=7, timestamp=1_000, timestamp_type=0)


def test_a_table_write_reaches_faust_s_store_and_the_batch_s_changelog() -> None:
    """BatchTable reads and writes the memory store's dict directly (mode's layers cost
    more than the stages' work): what it writes is what Faust's own Mapping sees, and
    the batch being processed carries it to the changelog."""
    table = _batch_table("exnet-test-table", 2)
    batch = BatchMessage(TP("exnet.validated", 1), [_RECORD], generation_id=3)
    with _current(batch):
        table[b"k"] = b"v1"
        table[b"k"] = b"v2"

    assert table.get(b"k") == b"v2"
    assert table.get(b"missing") is None
    assert table.get(b"missing", b"d") == b"d"
    assert dict(table.items()) == {b"k": b"v2"}  # Faust's own view of its store
    assert b"k" in table and table[b"k"] == b"v2"
    changelog = "exnet-test-table-seen-changelog"
    assert batch.changelog == [
        (changelog, 1, b"k", b"v1", [], None),
        (changelog, 1, b"k", b"v2", [], None),
    ]


def test_a_table_write_goes_with_the_partition_batch_being_processed() -> None:
    """In a message of several partitions' batches, a write goes to the changelog of
    the batch the agent processes, in that batch's partition."""
    table = _batch_table("exnet-test-table-unit", 3)
    one, two = (BatchMessage(TP("exnet.validated", p), [_RECORD], generation_id=3) for p in (0, 2))
    unit = TopicBatch([one, two])
    with _current(unit):
        for batch in unit.processing([one, two]):
            table[b"k%d" % batch.partition] = b"v"
        assert unit.current is None  # only while the agent works on one
        with pytest.raises(RuntimeError, match="not inside an agent"):
            table[b"outside"] = b"v"
    changelog = "exnet-test-table-unit-seen-changelog"
    assert one.changelog == [(changelog, 0, b"k0", b"v", [], None)]
    assert two.changelog == [(changelog, 2, b"k2", b"v", [], None)]


def test_the_table_s_shortcut_still_matches_what_faust_and_mode_do() -> None:
    """BatchTable.__setitem__ does what mode's ManagedUserDict.__setitem__ does (the
    key-set hook, then the store), and keeps the memory store's dict, which Faust
    creates once and only updates in place: an upgrade that changed either would
    leave the shortcut out of step, silently. Read the libraries' own code."""
    import inspect

    from faust.stores.memory import Store
    from mode.utils.collections import ManagedUserDict

    setitem = inspect.getsource(ManagedUserDict.__setitem__)
    assert "self.on_key_set(key, value)" in setitem
    assert "self.data[key] = value" in setitem
    store = inspect.getsource(Store)
    assert store.count("self.data:") + store.count("self.data =") == 1
    assert "self.data: MutableMapping = {}" in inspect.getsource(Store.__post_init__)


class _Owner:
    """What :meth:`Transport._create_topic` uses of the Faust service declaring a topic."""

    def __init__(self) -> None:
        self.should_stop = False
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


class _Client:
    def __init__(self) -> None:
        self.refreshed = 0

    async def force_metadata_update(self) -> bool:
        self.refreshed += 1
        return True


def _declare(monkeypatch: pytest.MonkeyPatch, failures: list[Exception], owner: _Owner) -> int:
    """Declare a topic through :class:`Transport` while Faust's own declaration raises
    ``failures`` in turn, then succeeds; how many times Faust's was called."""
    calls = 0

    async def faust_declare(self: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if failures:
            raise failures.pop(0)

    monkeypatch.setattr(faust_aiokafka.Transport, "_create_topic", faust_declare)
    transport = Transport.__new__(Transport)  # the method uses no state of its own
    try:
        asyncio.run(transport._create_topic(owner, _Client(), "t", 1, 1))
    finally:
        monkeypatch.undo()
    return calls


def test_a_declaration_kafka_fails_for_a_dead_broker_is_asked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A worker started right after a broker's kill -9 exited 1: Faust sent its leader
    # topic's declaration to the dead broker (NodeNotReadyError).
    from aiokafka.errors import KafkaConnectionError, NodeNotReadyError

    owner = _Owner()
    failures: list[Exception] = [NodeNotReadyError("node 1"), KafkaConnectionError("refused")]
    assert _declare(monkeypatch, failures, owner) == 3
    assert len(owner.slept) == 2


def test_a_refused_declaration_or_a_stopping_worker_is_not_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aiokafka.errors import NodeNotReadyError, TopicAuthorizationFailedError

    with pytest.raises(TopicAuthorizationFailedError):
        _declare(monkeypatch, [TopicAuthorizationFailedError("acl")], _Owner())
    stopping = _Owner()
    stopping.should_stop = True
    with pytest.raises(NodeNotReadyError):
        _declare(monkeypatch, [NodeNotReadyError("node 1")], stopping)
    assert stopping.slept == []


def test_a_consumer_that_does_not_close_in_time_is_one_warning_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # After the coordinator's broker died, a SIGTERM ended with mode's ERROR "Error
    # while stopping child <ConsumerThread>: TimeoutError()" and its traceback.
    async def stop() -> None:
        app = faust.App("exnet-test-stop", broker=f"{SCHEME}://127.0.0.1:9092")
        register(TRANSPORTS)
        consumer: Any = app.consumer
        thread = consumer._thread
        thread.shutdown_timeout = 0.1
        thread._started.set()  # as if started; its loop never reports the shutdown
        await thread.stop()

    with caplog.at_level(logging.WARNING):
        asyncio.run(stop())
    assert [(r.name, r.levelno) for r in caplog.records] == [("streams.transport", logging.WARNING)]
    assert "did not close within 0.1 s" in caplog.records[0].getMessage()


def test_a_consumer_close_that_fails_is_one_warning_and_the_stop_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # With the broker down, aiokafka's close awaited a fetch cancelled while it waited to
    # retry: the CancelledError ended the thread ("Exception in thread") before it
    # reported its shutdown, and a SIGTERM waited 10 s.
    async def failing_close(self: Any) -> None:
        raise asyncio.CancelledError

    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "on_thread_stop", failing_close)

    async def stop() -> None:
        app = faust.App("exnet-test-close", broker=f"{SCHEME}://127.0.0.1:9092")
        register(TRANSPORTS)
        consumer: Any = app.consumer
        await consumer._thread.on_thread_stop()

    with caplog.at_level(logging.WARNING):
        asyncio.run(stop())
    assert [r.getMessage() for r in caplog.records] == [
        "the Kafka consumer's close failed (CancelledError()); stopping without it"
    ]

    async def slow_close(self: Any) -> None:
        await asyncio.sleep(10)

    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "on_thread_stop", slow_close)

    async def cancelled_meanwhile() -> None:  # a cancellation of the stop itself stays one
        app = faust.App("exnet-test-close", broker=f"{SCHEME}://127.0.0.1:9092")
        consumer: Any = app.consumer
        task = asyncio.ensure_future(consumer._thread.on_thread_stop())
        await asyncio.sleep(0.05)  # the close is under way
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancelled_meanwhile())


def test_a_seek_while_a_batch_is_handed_over_does_not_drop_the_batches_it_reads() -> None:
    # Faust's fetch loop sets a partition's read offset to a message's offset after
    # awaiting its hand-over, and drops any later message below it. A seek back
    # that lands during that await (a rebalance's seek to the committed offsets on
    # the recovery's task, an agent's Consumer.admit) was overwritten so: the batch
    # it read again, ending below the one handed over, never reached an agent. One
    # way a soak of the SIGTERM test saw batches lost on their way (2026-12-04).
    consumer = _Consumer().consumer
    handed_over, read_again = (
        BatchMessage(TP0, [_Record(o) for o in range(first, last + 1)], 1)
        for first, last in ((100, 144), (100, 124))
    )
    fetcher = SimpleNamespace(_stopped=threading.Event())  # Faust's Fetcher service
    delivered: list[tuple[int, int]] = []

    async def getmany(timeout: float) -> Any:
        yield TP0, handed_over
        yield TP0, read_again
        fetcher._stopped.set()  # one fetch round

    async def callback(message: BatchMessage) -> None:
        delivered.append((message.first_offset, message.offset))
        if message is handed_over:
            await consumer.seek(TP0, 100)  # the seek back, meanwhile
            consumer._read_offset[TP0] = 100  # what Faust's seek sets

    consumer.getmany = getmany
    consumer.callback = callback
    consumer.loop.run_until_complete(consumer._drain_messages(fetcher))  # the loop it is on
    assert delivered == [(100, 144), (100, 124)]


def test_the_tables_changelog_partitions_keep_faust_s_read_offsets() -> None:
    # Recovery reads changelogs through Faust's own loop and bookkeeping.
    app = faust.App("exnet-test-read-offsets", broker=f"{SCHEME}://127.0.0.1:9092")
    register(TRANSPORTS)
    app.Table("seen", partitions=1)
    consumer: Any = app.consumer
    changelog = TP("exnet-test-read-offsets-seen-changelog", 0)
    consumer._read_offset[changelog] = consumer._read_offset[TP0] = 7
    assert consumer._read_offset[changelog] == 7
    assert consumer._read_offset[TP0] is None  # the fetch loop never drops a stream batch
