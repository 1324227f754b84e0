"""The durable spool: segments written, read back, torn, locked, killed mid-write."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import orjson
import pytest

from contracts.errors import UserError
from exnet.settings import load_settings
from producers import Spool, SpooledEvent
from producers.publisher import COMMIT_EVENTS, spool_of
from producers.spool import (
    DAMAGED_DIR,
    RECORDED_INPUTS,
    SegmentWriter,
    read_segment,
    seq_ranges,
)

#: Longest wait for a child process to reach the state a test needs.
CHILD_WAIT_S = 60.0


def _events(count: int, start: int = 0) -> list[SpooledEvent]:
    return [
        SpooledEvent(f"t.exnet.session{i % 2}", f"P-{i:012x}".encode(), b'{"n": %d}' % i)
        for i in range(start, start + count)
    ]


def test_seq_ranges_compress_consecutive_numbers() -> None:
    assert seq_ranges([]) == []
    assert seq_ranges([3]) == [(3, 3)]
    assert seq_ranges([0, 1, 2, 5, 6, 9]) == [(0, 2), (5, 6), (9, 9)]


def test_events_read_back_with_acknowledgements(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    writer = spool.create_writer()
    events = _events(5)
    writer.append_events(0, events[:3])
    writer.append_events(3, events[3:])
    writer.append_acks([(1, 2)])
    writer.close(delete=False)

    (path,) = spool.segment_paths()
    contents = read_segment(path.read_bytes(), path)
    assert contents.events == dict(enumerate(events))
    assert contents.acked == {1, 2}
    assert contents.pending() == [(0, events[0]), (3, events[3]), (4, events[4])]
    assert contents.torn_bytes == 0

    status = spool.status()
    assert (status.pending, status.in_flight, status.waiting_segments) == (3, 0, 1)
    assert status.segments[0].events == 5
    assert not status.segments[0].in_use


def test_a_segment_records_the_files_its_events_came_from_as_text(tmp_path: Path) -> None:
    """A file name with a byte of another encoding than UTF-8 (Python holds it as a lone
    surrogate) is recorded as text, ``\\xe9``: as it was, the header's JSON refused it and
    the publish stopped with a traceback."""
    spool = Spool(tmp_path / "spool")
    latin1 = os.fsdecode(b"/sites/caf\xe9.jsonl")
    writer = spool.create_writer(["/sites/monday.jsonl", latin1, "-"])
    writer.append_events(0, _events(1))
    writer.close(delete=False)
    (path,) = spool.segment_paths()
    inputs = ("/sites/monday.jsonl", "/sites/caf\\xe9.jsonl", "-")
    assert read_segment(path.read_bytes(), path).inputs == inputs
    assert spool.status().segments[0].inputs == inputs

    many = [f"/sites/day-{day}.jsonl" for day in range(RECORDED_INPUTS + 7)]
    writer = spool.create_writer(many)
    writer.close(delete=False)
    path = spool.segment_paths()[-1]
    assert read_segment(path.read_bytes(), path).inputs == (
        *many[:RECORDED_INPUTS],
        "and 7 more files",
    )


def test_a_segment_is_deleted_once_every_event_is_acknowledged(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    writer = spool.create_writer()
    writer.append_events(0, _events(4))
    writer.close(delete=False)
    (path,) = spool.segment_paths()

    with spool.claim(path) as claimed:
        assert claimed is not None
        claimed.acknowledge([(0, 1)])
    assert spool.status().pending == 2  # partly sent: kept, with what was acknowledged

    with spool.claim(path) as claimed:
        assert claimed is not None
        assert [seq for seq, _ in claimed.contents.pending()] == [2, 3]
        claimed.acknowledge([(2, 3)])
    assert spool.segment_paths() == []
    assert spool.status().pending == 0


def test_a_torn_last_record_is_ignored_and_cut_before_new_acknowledgements(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path)
    writer = spool.create_writer()
    writer.append_events(0, _events(3))
    writer.close(delete=False)
    (path,) = spool.segment_paths()
    intact = path.stat().st_size
    with path.open("ab") as handle:  # a record cut short by a crash
        handle.write(b"E\x00\x10\x00\x00\x12\x34\x56\x78partial")

    contents = read_segment(path.read_bytes(), path)
    assert len(contents.events) == 3
    assert contents.torn_bytes == len(b"E\x00\x10\x00\x00\x12\x34\x56\x78partial")

    with spool.claim(path) as claimed:
        assert claimed is not None
        claimed.acknowledge([(0, 0)])
    data = path.read_bytes()
    assert read_segment(data, path).torn_bytes == 0
    assert read_segment(data, path).acked == {0}
    assert len(data) > intact


def _two_records(spool: Spool) -> tuple[Path, list[SpooledEvent], int]:
    """A spooled segment of events 0-2 and 3-5, in two records; and where the second
    record starts."""
    writer = spool.create_writer()
    events = _events(6)
    writer.append_events(0, events[:3])
    second = writer.size
    writer.append_events(3, events[3:])
    writer.close(delete=False)
    (path,) = spool.segment_paths()
    return path, events, second


def _flip(path: Path, at: int) -> bytes:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(data)
    return bytes(data)


def test_a_damaged_last_record_is_never_taken_for_a_torn_one(tmp_path: Path) -> None:
    """Its events may have been reported as spooled: the segment is set aside for a
    person once the readable events are sent, never deleted (it used to be, with every
    event of the damaged record: a site's outside tester found it)."""
    spool = Spool(tmp_path)
    path, events, second = _two_records(spool)
    damaged = _flip(path, path.stat().st_size - 1)  # the last event's value

    contents = read_segment(damaged, path)
    assert contents.events == dict(enumerate(events[:3]))
    assert contents.damaged == [(second, len(damaged) - second)]
    assert contents.torn_bytes == 0
    (status,) = spool.status().segments
    assert (status.pending, status.damaged_bytes, status.damaged_at) == (
        3,
        len(damaged) - second,
        second,
    )

    with spool.claim(path) as claimed:
        assert claimed is not None
        claimed.acknowledge([(0, 2)])  # every readable event sent
    assert spool.segment_paths() == []
    assert claimed.set_aside_to == tmp_path / DAMAGED_DIR / path.name
    assert spool.status().set_aside == (claimed.set_aside_to,)
    assert claimed.set_aside_to.read_bytes().startswith(damaged)  # as found, then the acks


@pytest.mark.parametrize("damage", ["length", "cut inside", "cut before"])
def test_a_finished_segment_whose_last_record_runs_short_is_damaged_not_torn(
    tmp_path: Path, damage: str
) -> None:
    """A segment its publisher closed is sealed: its records were all confirmed as
    spooled, so a last record whose length was damaged, or a file cut short (a copy
    gone wrong), even between two records, is damage: set aside, never deleted. (A
    damaged length or a cut used to be taken for a torn write: the record skipped,
    and the segment deleted once the rest was sent; a site's outside tester lost 600
    events so.)"""
    spool = Spool(tmp_path)
    path, events, second = _two_records(spool)
    size = path.stat().st_size
    data = bytearray(path.read_bytes())
    if damage == "length":  # one flipped bit: the record seems to run past the end
        (length,) = struct.unpack_from("<I", data, second + 1)
        struct.pack_into("<I", data, second + 1, length | 1 << 24)
    elif damage == "cut inside":
        del data[-5:]
    else:  # cut exactly where the last record starts: no record looks damaged
        del data[second:]
    path.write_bytes(data)

    contents = read_segment(bytes(data), path)
    assert contents.events == dict(enumerate(events[:3]))
    assert contents.torn_bytes == 0
    assert contents.damaged == [(second, size - second)]
    with spool.claim(path) as claimed:
        assert claimed is not None
        claimed.acknowledge([(0, 2)])  # every readable event sent
    assert spool.segment_paths() == []
    assert claimed.set_aside_to == tmp_path / DAMAGED_DIR / path.name


def test_a_segment_left_by_a_killed_publisher_has_its_torn_tail_cut_then_is_sealed(
    tmp_path: Path,
) -> None:
    """A segment its writer never closed (killed; or written by an older exnet) may end
    in a torn record, whose events were never confirmed: it is cut, as ever. The first
    flusher to claim the segment seals it, so a cut after that is damage."""
    spool = Spool(tmp_path)
    path, events, second = _two_records(spool)
    data = path.read_bytes()
    path.unlink()
    unsealed = path.with_name(path.name.split(".")[0] + ".spool")  # as a killed writer left it
    unsealed.write_bytes(data[:-5])  # the last record torn

    contents = read_segment(unsealed.read_bytes(), unsealed)
    assert contents.events == dict(enumerate(events[:3]))
    assert (contents.torn_bytes, contents.damaged) == (len(data) - 5 - second, [])
    with spool.claim(unsealed) as claimed:  # Kafka down: nothing acknowledged
        assert claimed is not None
    (sealed,) = spool.segment_paths()
    assert sealed != unsealed
    assert sealed.read_bytes() == data[:second]  # the torn tail cut
    assert spool.status().pending == 3

    sealed.write_bytes(data[: second - 1])  # now a cut loses confirmed events: damage
    contents = read_segment(sealed.read_bytes(), sealed)
    assert (contents.events, contents.torn_bytes) == ({}, 0)
    assert sum(contents.damaged[-1]) == second  # damaged up to the sealed size


def test_a_damaged_segment_with_events_unsent_stays_in_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    path, _, _ = _two_records(spool)
    _flip(path, path.stat().st_size - 1)
    with spool.claim(path) as claimed:  # Kafka down: nothing acknowledged
        assert claimed is not None
    assert spool.segment_paths() == [path]
    assert claimed.set_aside_to is None


def test_records_after_a_damaged_one_are_still_read(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    writer = spool.create_writer()
    events = _events(9)
    for first in (0, 3, 6):
        writer.append_events(first, events[first : first + 3])
    writer.append_acks([(6, 6)])
    writer.close(delete=False)
    (path,) = spool.segment_paths()
    data = path.read_bytes()
    middle = data.index(events[4].value)
    contents = read_segment(_flip(path, middle), path)
    assert sorted(contents.events) == [0, 1, 2, 6, 7, 8]
    assert contents.acked == {6}
    assert len(contents.damaged) == 1


def test_what_follows_a_damaged_length_is_damaged_not_torn(tmp_path: Path) -> None:
    """A record whose length is wrong is read as garbage up to the end: all of that is
    damage, never cut off as a torn tail."""
    spool = Spool(tmp_path)
    path, events, second = _two_records(spool)
    data = bytearray(path.read_bytes())
    data[second + 1 : second + 5] = (7).to_bytes(4, "little")  # the length: 7 bytes
    path.write_bytes(data)

    contents = read_segment(bytes(data), path)
    assert contents.events == dict(enumerate(events[:3]))
    assert contents.torn_bytes == 0
    assert sum(contents.damaged[-1]) == len(data)  # damaged up to the end
    with spool.claim(path) as claimed:
        assert claimed is not None
    assert path.read_bytes() == bytes(data)  # not cut


def test_a_file_that_is_no_segment_is_damaged_whole(tmp_path: Path) -> None:
    path = tmp_path / "seg-x.spool"
    data = b"A\x00\x00\x00\x00\x00\x00\x00\x00"  # acknowledgements before any header
    contents = read_segment(data, path)
    assert contents.damaged == [(0, len(data))]
    assert contents.events == {}


def test_a_segment_of_another_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "seg-x.spool"
    header = orjson.dumps({"format": 99})
    data = b"H" + struct.pack("<II", len(header), zlib.crc32(header)) + header
    with pytest.raises(UserError, match="unknown format 99"):
        read_segment(data, path)


def test_a_live_segment_is_neither_claimed_nor_counted_as_waiting(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    writer = spool.create_writer()  # holds the lock, as a running publisher does
    writer.append_events(0, _events(2))
    (path,) = spool.segment_paths()
    with spool.claim(path) as claimed:
        assert claimed is None
    status = spool.status()
    assert (status.pending, status.in_flight) == (0, 2)
    assert status.segments[0].in_use
    writer.close(delete=False)
    assert spool.status().pending == 2


def test_two_flushers_never_hold_the_same_segment(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    writer = spool.create_writer()
    writer.append_events(0, _events(2))
    writer.close(delete=False)
    (path,) = spool.segment_paths()

    # Another process claims the segment and keeps it while we try.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from producers import Spool
                spool = Spool(Path({str(tmp_path)!r}))
                with spool.claim(Path({str(path)!r})) as claimed:
                    assert claimed is not None
                    print("held", flush=True)
                    sys.stdin.readline()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == b"held"
        with spool.claim(path) as claimed:
            assert claimed is None
        # Within this process, a second claim is refused too.
        holder.stdin.write(b"\n")
        holder.stdin.flush()
        assert holder.wait(timeout=CHILD_WAIT_S) == 0
    finally:
        holder.kill()
    with spool.claim(path) as first:
        assert first is not None
        with spool.claim(path) as second:
            assert second is None
        first.acknowledge([(0, 1)])
    assert spool.segment_paths() == []


def test_a_segment_deleted_by_its_owner_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    writer = spool.create_writer()
    path = writer.path
    writer.close(delete=True)
    with spool.claim(path) as claimed:
        assert claimed is None


def test_kill_9_while_spooling_leaves_a_readable_prefix(tmp_path: Path) -> None:
    """A publisher killed mid-run leaves whole commit groups, in order, nothing torn in."""
    script = textwrap.dedent(
        f"""
        import uuid
        from pathlib import Path
        from producers import Publisher
        from exnet.settings import Settings
        settings = Settings(var_dir=Path({str(tmp_path)!r}))
        template = (
            '{{{{"schema":"session/1","event_id":"{{}}","occurred_at":"2025-03-04T09:15:00Z",'
            '"node_id":"N01","site_id":"N01-S01","participant_id":"P-{{:012x}}",'
            '"session_number":1,"status":"missed","modality":"aerobic","supervised":true}}}}'
        )
        with Publisher(settings, connect=False) as publisher:
            for i in range(10**9):
                value = template.format(uuid.UUID(int=i + 1), i).encode()  # not the nil UUID
                publisher.publish(value)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script])
    spool = Spool(tmp_path / "spool")
    try:
        deadline = time.monotonic() + CHILD_WAIT_S
        while True:
            paths = spool.segment_paths()
            # Counted, not guessed from the size (an event takes ~300 bytes, not 250:
            # on a loaded machine the kill came at 4,000 events).
            if paths and len(read_segment(paths[0].read_bytes(), paths[0]).events) >= (
                3 * COMMIT_EVENTS
            ):
                break
            assert child.poll() is None, "the publishing child died"
            assert time.monotonic() < deadline, "the child spooled too little in time"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    (path,) = spool.segment_paths()
    contents = read_segment(path.read_bytes(), path)
    count = len(contents.events)
    assert count >= 3 * COMMIT_EVENTS
    assert count % COMMIT_EVENTS == 0  # whole commit groups only
    assert sorted(contents.events) == list(range(count))
    for seq, event in contents.events.items():
        document = orjson.loads(event.value)
        assert document["participant_id"] == f"P-{seq:012x}"
        assert event.key == document["participant_id"].encode()
    assert spool.status().pending == count  # the killed owner's lock is gone


def test_a_new_segment_is_never_visible_unlocked(tmp_path: Path) -> None:
    writer = SegmentWriter.create(tmp_path)
    try:
        assert writer.path.name.startswith("seg-")
        assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
        with Spool(tmp_path).claim(writer.path) as claimed:
            assert claimed is None
    finally:
        writer.close(delete=True)
    assert list(tmp_path.iterdir()) == []


def test_one_flusher_at_a_time(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with spool.flushing(wait_s=0) as first:
        assert first
        with spool.flushing(wait_s=0.1) as second:
            assert not second
    with spool.flushing(wait_s=0) as again:
        assert again


def test_the_spool_of_a_relative_var_dir_is_named_by_its_full_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default var_dir is relative to the working directory; the spool's path that
    publish and `exnet spool` print must find the same folder from anywhere."""
    monkeypatch.chdir(tmp_path)
    spool = spool_of(load_settings(var_dir=Path("var")))
    assert spool.directory == tmp_path.resolve() / "var" / "spool"


def _append_record(path: Path, kind: bytes, payload: bytes) -> None:
    """A record as a segment holds it, its checksum right whatever its contents."""
    with path.open("ab") as segment:
        segment.write(kind + struct.pack("<II", len(payload), zlib.crc32(payload)) + payload)


def _segment_of(spool: Spool, count: int) -> tuple[Path, list[SpooledEvent]]:
    writer = spool.create_writer()
    events = _events(count)
    writer.append_events(0, events)
    writer.close(delete=False)
    (path,) = spool.segment_paths()
    return path, events


def test_an_acknowledgement_as_wide_as_a_crafted_record_makes_costs_nothing(
    tmp_path: Path,
) -> None:
    """A 154-byte segment acknowledging (1, 2**62) took `exnet spool status` to 1.2 GB
    and a MemoryError (an outside security review): a range is no longer expanded."""
    spool = Spool(tmp_path)
    path, events = _segment_of(spool, 3)
    _append_record(path, b"A", struct.pack("<QQ", 1, 2**62))
    started = time.perf_counter()
    contents = read_segment(path.read_bytes(), path)
    assert time.perf_counter() - started < 5  # not a timing goal: expanded, it never ends
    assert contents.acked == {1, 2}
    assert contents.pending() == [(0, events[0])]
    assert spool.status().pending == 1


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        (b"E", struct.pack("<QI", 3, 5) + b"\x01\x02"),  # five events announced, none there
        (b"E", struct.pack("<QI", 3, 1) + struct.pack("<BHI", 2, 0, 0) + b"\xff\xfe"),
        (b"A", b"\x00" * 9),  # not a whole range
    ],
)
def test_a_record_whose_checksum_holds_but_contents_do_not_decode_is_damage(
    tmp_path: Path, kind: bytes, payload: bytes
) -> None:
    """Such a record (only written on purpose) stopped every later `exnet publish`,
    `spool status` and `spool flush` with a traceback."""
    spool = Spool(tmp_path)
    path, events = _segment_of(spool, 3)
    before = path.stat().st_size
    _append_record(path, kind, payload)
    contents = read_segment(path.read_bytes(), path)
    assert contents.events == dict(enumerate(events))
    assert contents.damaged == [(before, path.stat().st_size - before)]
    assert spool.status().segments[0].damaged_bytes == path.stat().st_size - before


def test_a_link_named_as_a_segment_is_left_alone(tmp_path: Path) -> None:
    """One made `exnet spool flush` truncate the file it pointed to (an outside review)."""
    spool = Spool(tmp_path / "spool")
    path, _ = _segment_of(spool, 2)
    target = tmp_path / "precious.txt"
    target.write_text("precious\n")
    link = path.with_name("seg-00000000-link.spool")
    link.symlink_to(target)
    with spool.claim(link) as claimed:
        assert claimed is None
    status = spool.status()
    assert [segment.path for segment in status.segments] == [path]
    assert target.read_text() == "precious\n"
