"""The publisher's durable local spool: a write-ahead journal of events for Kafka.

Every event a :class:`~producers.publisher.Publisher` accepts is appended
here, and the append is fsynced, *before* the event is handed to the Kafka
producer. When Kafka acknowledges it, an acknowledgement record is appended.
So at any instant, even after ``kill -9`` or a power cut, an accepted event is
either acknowledged by Kafka or in the spool (or both, for the moment between
Kafka's acknowledgement and its record here: that window is the only source of
duplicates, which downstream deduplication removes by ``event_id``).

Layout: one *segment* file per publisher (``<var_dir>/spool/seg-*.spool``),
appended to by exactly one process, which holds an exclusive ``flock`` on it
for as long as it writes. A segment whose events are all acknowledged is
deleted by its owner. A segment left behind, unlocked, holds events Kafka never
acknowledged: those are the *spooled* events that ``exnet spool flush`` (or the
next ``exnet publish``) sends. Its owner leaves it *sealed*: fsynced, then renamed
``seg-*.sealed-<bytes>.spool``, saying that its first ``<bytes>`` bytes are whole
records (the size is in the name, where no damage to the file, a cut included, can
erase it). A segment never sealed (its owner was killed, or it was written by an
exnet before seals) is sealed by the first flusher that claims it. A flusher
takes the same exclusive lock before it reads a segment, so a flusher never
touches a segment a running publisher still owns; and a flusher holds
``flush.lock`` for its whole pass, so two flushers never run at once (each
segment is sent once, oldest first).

File format (little-endian), a sequence of records, each
``kind:u8 length:u32 crc32:u32 payload[length]``:

- ``H`` header, first record: JSON ``{"format": 1, "created_at", "pid", "host"}``,
  and ``"inputs"``, the names of the files the run that wrote it published (absolute
  paths; ``-`` for standard input; the first 50, then how many more), when it was
  given them;
- ``E`` events: ``first_seq:u64 count:u32`` then per event
  ``topic_len:u8 key_len:u16 value_len:u32 topic key value``; the events are
  numbered ``first_seq``, ``first_seq + 1``... within the segment;
- ``A`` acknowledgements: pairs ``first:u64 last:u64`` of inclusive sequence ranges.

A record torn by a crash can only be the last one, cut short, of a segment not
sealed, or after the sealed bytes (a flusher's acknowledgements); readers ignore
it, and a flusher cuts it (its events were never handed to Kafka, nor reported as
spooled, because both wait for the fsync; a lost acknowledgement only means a
duplicate). Anything else that cannot be read was damaged after it was written (a
disk fault, a copy gone wrong), and is never taken for a torn record, because the
events it held may have been reported as spooled: a record whose checksum fails
or of an unknown kind, a sealed record that runs past the end (a damaged length,
or the file cut short), and the sealed bytes missing from a file cut between two
records. Readers skip it and go on; a flusher sends the segment's readable events
and then sets it aside under ``<spool>/damaged/`` rather than deleting it, for a
person to look at (the events in the damaged bytes must be published again).
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import logging
import os
import re
import socket
import struct
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, NamedTuple
from uuid import uuid4

import orjson

from contracts.errors import UserError

__all__ = [
    "DAMAGED_DIR",
    "RECORDED_INPUTS",
    "SEGMENT_GLOB",
    "ClaimedSegment",
    "SegmentContents",
    "SegmentWriter",
    "Spool",
    "SpoolStatus",
    "SpoolWriteError",
    "SpooledEvent",
    "read_segment",
    "seq_ranges",
]

log = logging.getLogger(__name__)

#: Version of the file format above; readers refuse other versions.
FORMAT_VERSION: Final = 1
#: Finished segments; temporary names (being created) start with ``.tmp-`` instead.
SEGMENT_GLOB: Final = "seg-*.spool"
#: A sealed segment's name ends so, with the bytes it held when it was sealed.
_SEALED_NAME: Final = re.compile(r"\.sealed-(\d+)\.spool$")
#: The file whose lock a flusher holds for a whole pass (never deleted).
FLUSH_LOCK_NAME: Final = "flush.lock"
#: The folder (in the spool) where damaged segments are set aside once their readable
#: events are sent; no flusher reads it.
DAMAGED_DIR: Final = "damaged"

_RECORD = struct.Struct("<cII")  # kind, payload length, crc32 of payload
_BATCH = struct.Struct("<QI")  # first sequence number, event count
_EVENT = struct.Struct("<BHI")  # topic, key and value lengths
_RANGE = struct.Struct("<QQ")  # first and last sequence number, inclusive
_HEADER, _EVENTS, _ACKS = b"H", b"E", b"A"

#: A topic name is at most 249 bytes in Kafka; a key here is a participant_id.
_MAX_TOPIC_BYTES: Final = 255
_MAX_KEY_BYTES: Final = 0xFFFF
#: A flusher that finds a segment locked retries this often, this long apart:
#: ``exnet spool status`` holds a shared lock for a few microseconds while it
#: reads, which must not make a concurrent flush skip the segment.
_LOCK_RETRIES: Final = 5
_LOCK_RETRY_S: Final = 0.05


class SpoolWriteError(UserError):
    """The disk refused a write to the spool (full, read-only, failing).

    ``remedy``: what would put it right, in words a site's operator acts on.
    """

    def __init__(self, message: str, remedy: str) -> None:
        super().__init__(message)
        self.remedy = remedy

    def __reduce__(self) -> tuple[type[SpoolWriteError], tuple[str, str]]:
        return type(self), (str(self), self.remedy)  # both arguments, for pickle and copy

    @classmethod
    def refused(cls, exc: OSError, directory: Path) -> SpoolWriteError:
        """The error for ``exc``, an ``OSError`` writing the spool in ``directory``, its
        remedy told by the error number: a full disk is not a wrong folder."""
        message = f"cannot write the spool in {directory}: {exc.strerror or exc}"
        number = exc.errno
        if number in (errno.ENOSPC, errno.EDQUOT):
            remedy = "free some space"
        elif number == errno.EFBIG:
            remedy = "raise the limit on a file's size this user runs under (ulimit -f)"
        elif number in (errno.EACCES, errno.EPERM):
            remedy = f"let this user create and write {directory}"
        elif number == errno.EROFS:
            remedy = (
                f"the file system of {directory} is read-only: set EXNET_VAR_DIR to a writable one"
            )
        elif number in (errno.ENOTDIR, errno.ENOENT, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP):
            remedy = f"check EXNET_VAR_DIR, under which the spool is ({directory})"
        else:  # EIO, EMFILE...: the error itself says what is wrong
            remedy = f"put right what the system said of {directory}"
        return cls(message, remedy)


class SpooledEvent(NamedTuple):
    """One Kafka message as the publisher would send it: physical topic, key, value."""

    topic: str
    key: bytes
    value: bytes


def seq_ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Inclusive ``(first, last)`` ranges covering ``seqs`` (ascending input)."""
    ranges: list[tuple[int, int]] = []
    for seq in seqs:
        if ranges and ranges[-1][1] == seq - 1:
            ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    return ranges


def _record(kind: bytes, payload: bytes) -> bytes:
    return _RECORD.pack(kind, len(payload), zlib.crc32(payload)) + payload


def _encode_events(first_seq: int, events: Sequence[SpooledEvent]) -> bytes:
    parts = [_BATCH.pack(first_seq, len(events))]
    append = parts.append
    pack = _EVENT.pack
    for topic, key, value in events:
        topic_bytes = topic.encode()
        if len(topic_bytes) > _MAX_TOPIC_BYTES or len(key) > _MAX_KEY_BYTES:
            raise ValueError(f"topic or key too long for the spool: {topic!r}")
        append(pack(len(topic_bytes), len(key), len(value)))
        append(topic_bytes)
        append(key)
        append(value)
    return _record(_EVENTS, b"".join(parts))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _sealed_size(path: Path) -> int | None:
    """The bytes the segment ``path`` held when it was sealed; None: never sealed."""
    match = _SEALED_NAME.search(path.name)
    return int(match[1]) if match else None


#: File names a segment's header records at most (each segment repeats them: a run over
#: every file of a large folder would otherwise write the whole list again and again).
RECORDED_INPUTS: Final = 50


def _recorded(inputs: Sequence[str]) -> list[str]:
    """``inputs`` as a header records them: the first :data:`RECORDED_INPUTS`, then how
    many more, each name as text (:func:`_printable`)."""
    names = [_printable(name) for name in inputs[:RECORDED_INPUTS]]
    if len(inputs) > RECORDED_INPUTS:
        names.append(f"and {len(inputs) - RECORDED_INPUTS} more files")
    return names


def _printable(name: str) -> str:
    """A file name as UTF-8 text: bytes of another encoding that the file system gave
    (Python holds them as lone surrogates) written as ``\\xe9``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _fsync_dir(directory: Path) -> None:
    """Make a created, renamed or deleted directory entry durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SegmentWriter:
    """An open segment that this process alone appends to, under an exclusive lock.

    Not thread-safe: one writer per publisher, used from one thread.
    """

    def __init__(self, path: Path, fd: int, size: int, *, seal_on_close: bool = False) -> None:
        self.path = path
        self._fd: int | None = fd
        #: Bytes in the file (valid records only).
        self.size = size
        #: Whether :meth:`close` seals a segment it leaves behind (the owner's writer).
        self._seal_on_close = seal_on_close

    @classmethod
    def create(cls, directory: Path, inputs: Sequence[str] = ()) -> SegmentWriter:
        """A new, empty segment, locked, durable in ``directory`` when this returns.
        ``inputs``: the files the events will come from, recorded in the header, so
        that a segment later found damaged can name what to publish again.

        It is written under a temporary name and renamed once locked, so a
        flusher never sees (and never deletes) a segment that nobody locks yet.
        """
        directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        name = f"seg-{stamp}-{os.getpid()}-{uuid4().hex[:8]}.spool"
        temporary = directory / f".tmp-{name}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            header = orjson.dumps(
                {
                    "format": FORMAT_VERSION,
                    "created_at": datetime.now(UTC).isoformat(),
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    **({"inputs": _recorded(inputs)} if inputs else {}),
                }
            )
            data = _record(_HEADER, header)
            _write_all(fd, data)
            os.fdatasync(fd)
            final = directory / name
            os.rename(temporary, final)
            _fsync_dir(directory)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        return cls(final, fd, len(data), seal_on_close=True)

    @property
    def closed(self) -> bool:
        return self._fd is None

    def _require_fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"spool segment {self.path} is closed")
        return self._fd

    def append_events(self, first_seq: int, events: Sequence[SpooledEvent]) -> None:
        """Append events numbered from ``first_seq``; durable (fsynced) when this returns.

        Raises :class:`SpoolWriteError` when the disk refuses the write (full, read-only,
        failing); the file is then as it was before the call.
        """
        if events:
            self._append(_encode_events(first_seq, events), sync=True)

    def append_acks(self, ranges: Sequence[tuple[int, int]]) -> None:
        """Record that Kafka acknowledged these events.

        Not fsynced: after a process crash the page cache still holds it; after a
        power cut a lost acknowledgement only means those events are sent again
        (a duplicate, which downstream deduplication drops). For the same reason a
        write the disk refuses is logged, not raised.
        """
        if not ranges:
            return
        data = _record(_ACKS, b"".join(_RANGE.pack(first, last) for first, last in ranges))
        try:
            self._append(data, sync=False)
        except SpoolWriteError as exc:
            log.warning("%s; Kafka's acknowledgement is not recorded (sent again later)", exc)

    def _append(self, data: bytes, *, sync: bool) -> None:
        fd = self._require_fd()
        try:
            _write_all(fd, data)
            if sync:
                os.fdatasync(fd)
        except OSError as exc:
            # No part of the record may stay: records appended later would follow it,
            # and readers would take it for damage.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self.size)
            raise SpoolWriteError.refused(exc, self.path.parent) from exc
        self.size += len(data)

    def sync(self) -> None:
        os.fdatasync(self._require_fd())

    def seal(self) -> None:
        """Say in the segment's name that its :attr:`size` bytes are whole records (see
        the module docstring): from then on a record there that runs past the end is
        damage, not a torn write. Fsynced first; :attr:`path` is then the new name.

        Call it only once no record is being appended, under the lock. A seal the disk
        refuses is logged: the segment stays unsealed, read as before seals existed.
        """
        fd = self._require_fd()
        if _sealed_size(self.path) is not None:
            return
        sealed = self.path.with_name(
            f"{self.path.name.removesuffix('.spool')}.sealed-{self.size}.spool"
        )
        try:
            os.fdatasync(fd)
            os.rename(self.path, sealed)  # locked: a flusher waiting for it finds it gone
            self.path = sealed
            _fsync_dir(sealed.parent)
        except OSError as exc:
            log.warning(
                "cannot seal the spool segment %s (%s): a cut of its end would go unnoticed",
                self.path,
                exc.strerror or exc,
            )

    def close(self, *, delete: bool) -> None:
        """Release the segment: delete it (every event acknowledged) or leave it spooled.

        A segment left behind is fsynced first, so what it says survives a crash, and
        sealed by its owner's writer (:meth:`seal`).
        """
        fd = self._fd
        if fd is None:
            return
        try:
            if delete:
                self.path.unlink(missing_ok=True)
                _fsync_dir(self.path.parent)
            elif self._seal_on_close:
                self.seal()
            else:
                os.fdatasync(fd)
        finally:
            self._fd = None
            os.close(fd)  # releases the lock, after the unlink: no one reads a dead segment


@dataclass(slots=True)
class SegmentContents:
    """What a segment says: its events, which were acknowledged, what was unreadable."""

    header: dict[str, object]
    events: dict[int, SpooledEvent] = field(default_factory=dict)
    acked: set[int] = field(default_factory=set)
    #: Bytes at the end that did not form a whole record (a torn write).
    torn_bytes: int = 0
    #: Bytes up to where the next record is to be appended (a torn tail is cut there).
    valid_bytes: int = 0
    #: (byte offset, length) of each stretch that could not be read: a record whose
    #: checksum failed or of an unknown kind, what follows a damaged length, a sealed
    #: record cut short, and sealed bytes missing at the end (offset: the file's size).
    damaged: list[tuple[int, int]] = field(default_factory=list)

    @property
    def damaged_bytes(self) -> int:
        return sum(length for _, length in self.damaged)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The files the segment's publisher read (its header's ``inputs``; () when it
        recorded none, as before 2026-12-05, or when the header is unreadable)."""
        names = self.header.get("inputs")
        if isinstance(names, list) and all(isinstance(name, str) for name in names):
            return tuple(names)
        return ()

    def pending(self) -> list[tuple[int, SpooledEvent]]:
        """Events Kafka has not acknowledged, in the order they were spooled."""
        return [(seq, event) for seq, event in sorted(self.events.items()) if seq not in self.acked]

    @property
    def pending_count(self) -> int:
        return sum(1 for seq in self.events if seq not in self.acked)


def _decode_events(payload: bytes, into: dict[int, SpooledEvent]) -> None:
    first_seq, count = _BATCH.unpack_from(payload, 0)
    offset = _BATCH.size
    unpack = _EVENT.unpack_from
    for index in range(count):
        topic_len, key_len, value_len = unpack(payload, offset)
        offset += _EVENT.size
        topic = payload[offset : offset + topic_len].decode()
        offset += topic_len
        key = payload[offset : offset + key_len]
        offset += key_len
        value = payload[offset : offset + value_len]
        offset += value_len
        into[first_seq + index] = SpooledEvent(topic, key, value)


def _decode_acks(payload: bytes, into: list[tuple[int, int]]) -> None:
    into.extend(_RANGE.iter_unpack(payload))


def _acknowledged(events: Iterable[int], ranges: list[tuple[int, int]]) -> set[int]:
    """The sequence numbers of ``events`` that ``ranges`` (first, last) cover: a range is
    never expanded, so one as wide as a crafted record may make (2**62) costs nothing."""
    starts: list[int] = []
    ends: list[int] = []
    for first, last in sorted(ranges):
        if ends and first <= ends[-1] + 1:
            ends[-1] = max(ends[-1], last)
        else:
            starts.append(first)
            ends.append(last)
    covered = set()
    for seq in events:
        at = bisect.bisect_right(starts, seq) - 1
        if at >= 0 and seq <= ends[at]:
            covered.add(seq)
    return covered


def read_segment(data: bytes, path: Path) -> SegmentContents:
    """Decode a segment's bytes: its intact records, a torn last record skipped, and
    where it is damaged (:attr:`SegmentContents.damaged`; skipped, not an error).
    ``path`` names the segment: whether it is sealed, and how many bytes it held then.

    Raises :class:`UserError` only for a segment of another format version (written
    by another version of exnet).
    """
    sealed = _sealed_size(path)
    offset = 0
    header: dict[str, object] | None = None
    events: dict[int, SpooledEvent] = {}
    acks: list[tuple[int, int]] = []
    damaged: list[tuple[int, int]] = []
    while offset < len(data):
        end = offset + _RECORD.size
        if end <= len(data):
            kind, length, crc = _RECORD.unpack_from(data, offset)
            end += length
        if end > len(data):  # cut short
            # Torn only where an append may have been under way (see the module
            # docstring); after damage its length may be garbage.
            if damaged or (sealed is not None and offset < sealed):
                damaged.append((offset, len(data) - offset))
                offset = len(data)
            break
        payload = data[offset + _RECORD.size : end]
        if zlib.crc32(payload) != crc or kind not in (_HEADER, _EVENTS, _ACKS):
            damaged.append((offset, end - offset))
        elif kind == _HEADER and offset == 0:
            header = _decoded_header(payload)
            if header is None:
                damaged.append((offset, end - offset))
            elif header.get("format") != FORMAT_VERSION:
                raise UserError(f"spool segment {path} has unknown format {header.get('format')}")
        elif kind in (_EVENTS, _ACKS) and offset:
            # A record whose checksum holds but whose contents do not decode (written
            # so on purpose: no torn or flipped write does that) is damage too; it used
            # to stop every later `exnet publish` with a traceback.
            batch: dict[int, SpooledEvent] = {}
            ranges: list[tuple[int, int]] = []
            try:
                if kind == _EVENTS:
                    _decode_events(payload, batch)
                else:
                    _decode_acks(payload, ranges)
            except (struct.error, ValueError):  # UnicodeDecodeError is a ValueError
                damaged.append((offset, end - offset))
            else:
                events.update(batch)
                acks.extend(ranges)
        else:  # a header after the start, or events before a header
            damaged.append((offset, end - offset))
        offset = end
    if sealed is not None and len(data) < sealed:  # cut short: sealed records are missing
        damaged.append((len(data), sealed - len(data)))
    if header is None and not damaged:
        # Creation itself was torn (header never fully written): an empty segment.
        header = {"format": FORMAT_VERSION}
    acked = _acknowledged(events, acks)
    return SegmentContents(
        header or {}, events, acked, len(data) - offset, offset, _merged(damaged)
    )


def _decoded_header(payload: bytes) -> dict[str, object] | None:
    """A segment header's JSON object; None when it is none."""
    try:
        header = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return header if isinstance(header, dict) else None


def _merged(stretches: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent (offset, length) stretches as one."""
    merged: list[tuple[int, int]] = []
    for offset, length in stretches:
        if merged and sum(merged[-1]) == offset:
            merged[-1] = (merged[-1][0], merged[-1][1] + length)
        else:
            merged.append((offset, length))
    return merged


def _read_fd(fd: int) -> bytes:
    chunks = []
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


class ClaimedSegment:
    """A spooled segment this process has locked to send: read it, acknowledge, release."""

    def __init__(self, path: Path, fd: int, contents: SegmentContents) -> None:
        self.contents = contents
        if contents.torn_bytes:
            # Cut the torn tail so that acknowledgements append after intact records.
            os.ftruncate(fd, contents.valid_bytes)
        self.writer = SegmentWriter(path, fd, contents.valid_bytes)
        # Its writer is gone (the lock says so): what it holds now is final. Sealed, a
        # cut after this is damage (a segment left by a killed publisher, or by an
        # exnet before seals, was never sealed).
        self.writer.seal()
        #: The segment's name, sealed.
        self.path = self.writer.path
        #: Where :meth:`release` set the segment aside (damaged, all else sent), if it did.
        self.set_aside_to: Path | None = None

    def acknowledge(self, ranges: Sequence[tuple[int, int]]) -> None:
        self.writer.append_acks(ranges)
        for first, last in ranges:
            self.contents.acked.update(range(first, last + 1))

    def release(self) -> None:
        """Once every readable event is acknowledged, delete the segment, or set it aside
        under ``damaged/`` if some of it could not be read; else keep it spooled."""
        if self.contents.pending_count or not self.contents.damaged:
            self.writer.close(delete=self.contents.pending_count == 0)
            return
        aside = self.path.parent / DAMAGED_DIR
        aside.mkdir(exist_ok=True)
        target = aside / self.path.name
        os.rename(self.path, target)  # still locked: no flusher reads it meanwhile
        _fsync_dir(aside)
        _fsync_dir(self.path.parent)
        self.set_aside_to = target
        self.writer.close(delete=False)


@dataclass(frozen=True, slots=True)
class SegmentStatus:
    path: Path
    created_at: str | None
    events: int
    pending: int
    size: int
    in_use: bool
    #: The topics its pending events are for, sorted.
    topics: tuple[str, ...] = ()
    #: Bytes that could not be read (:attr:`SegmentContents.damaged`), and the first's
    #: offset.
    damaged_bytes: int = 0
    damaged_at: int | None = None
    #: The files its publisher read (its header's ``inputs``), if it recorded them.
    inputs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SpoolStatus:
    """What waits in the spool, for ``exnet spool status``."""

    directory: Path
    segments: tuple[SegmentStatus, ...]
    #: Damaged segments a flusher set aside (``damaged/``), oldest first.
    set_aside: tuple[Path, ...] = ()

    @property
    def pending(self) -> int:
        """Events waiting to be sent (in segments no running publisher owns)."""
        return sum(seg.pending for seg in self.segments if not seg.in_use)

    @property
    def in_flight(self) -> int:
        """Unacknowledged events in segments a running publisher still owns."""
        return sum(seg.pending for seg in self.segments if seg.in_use)

    @property
    def waiting_segments(self) -> int:
        return sum(1 for seg in self.segments if not seg.in_use and seg.pending)

    @property
    def size(self) -> int:
        return sum(seg.size for seg in self.segments)


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not deleted or replaced)."""
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)


#: How a segment is opened: never through a symbolic link. One named like a segment
#: made `exnet spool flush` truncate the file it pointed to (an outside review).
_NO_LINK: Final = os.O_NOFOLLOW


def _open_segment(path: Path, flags: int) -> int | None:
    """``path`` opened with ``flags``; None when it is gone, or a symbolic link (not a
    segment exnet wrote: left alone, with a warning)."""
    try:
        return os.open(path, flags | _NO_LINK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        log.warning("%s is a symbolic link, not a spool segment: left alone", path)
        return None


def _open_listed(path: Path) -> tuple[Path, int] | None:
    """The segment ``path`` open for reading, under its sealed name if its owner (or
    a flusher) sealed it since it was listed; None when it is gone (deleted)."""
    fd = _open_segment(path, os.O_RDONLY)
    if fd is not None:
        return path, fd
    if _sealed_size(path) is None:
        for sealed in path.parent.glob(f"{path.name.removesuffix('.spool')}.sealed-*.spool"):
            fd = _open_segment(sealed, os.O_RDONLY)
            if fd is not None:
                return sealed, fd
    return None


def _try_lock(fd: int, operation: int, retries: int) -> bool:
    for attempt in range(retries):
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
        except BlockingIOError:
            if attempt + 1 < retries:
                time.sleep(_LOCK_RETRY_S)
            continue
        return True
    return False


class Spool:
    """The spool directory: where segments are created, inspected and claimed."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def segment_paths(self) -> list[Path]:
        """Every finished segment, oldest first (names start with their creation time)."""
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(SEGMENT_GLOB))

    def create_writer(self, inputs: Sequence[str] = ()) -> SegmentWriter:
        """A new segment (:meth:`SegmentWriter.create`). Raises :class:`SpoolWriteError`."""
        try:
            return SegmentWriter.create(self.directory, inputs)
        except OSError as exc:
            raise SpoolWriteError.refused(exc, self.directory) from None

    def status(self) -> SpoolStatus:
        """Count the spooled events, without sending anything.

        Reads each segment under a shared lock held for the read only; a
        segment exclusively locked by a running publisher is read without a
        lock (appends only ever add whole records after the ones read) and
        reported as in use.
        """
        segments = []
        for listed in self.segment_paths():
            opened = _open_listed(listed)
            if opened is None:
                continue  # deleted meanwhile: its events were all acknowledged
            path, fd = opened
            try:
                in_use = not _try_lock(fd, fcntl.LOCK_SH, retries=1)
                data = _read_fd(fd)
            finally:
                os.close(fd)
            contents = read_segment(data, path)
            created = contents.header.get("created_at")
            segments.append(
                SegmentStatus(
                    path=path,
                    created_at=created if isinstance(created, str) else None,
                    events=len(contents.events),
                    pending=contents.pending_count,
                    size=len(data),
                    in_use=in_use,
                    topics=tuple(sorted({event.topic for _, event in contents.pending()})),
                    damaged_bytes=contents.damaged_bytes,
                    damaged_at=contents.damaged[0][0] if contents.damaged else None,
                    inputs=contents.inputs,
                )
            )
        aside = self.directory / DAMAGED_DIR
        set_aside = tuple(sorted(aside.glob(SEGMENT_GLOB))) if aside.is_dir() else ()
        return SpoolStatus(self.directory, tuple(segments), set_aside)

    @contextlib.contextmanager
    def flushing(self, wait_s: float) -> Iterator[bool]:
        """Hold the spool's flush lock: one flusher at a time, oldest segment first.

        Yields False when another process still holds it after ``wait_s``
        seconds (0: do not wait). Segments stay individually locked as well,
        so a running publisher's own segment is never sent by a flusher.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / FLUSH_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(_LOCK_RETRY_S)
                    continue
                break
            yield True
        finally:
            os.close(fd)  # releases the lock

    @contextlib.contextmanager
    def claim(self, path: Path) -> Iterator[ClaimedSegment | None]:
        """Lock one segment for sending; None when another process holds it or it is gone.

        The caller sends ``contents.pending()``, calls :meth:`ClaimedSegment.acknowledge`
        for what Kafka acknowledged; on exit the segment is deleted when nothing
        is pending any more, else left (with its acknowledgements) for later.
        """
        fd = _open_segment(path, os.O_RDWR | os.O_APPEND)
        if fd is None:
            yield None
            return
        if not _try_lock(fd, fcntl.LOCK_EX, retries=_LOCK_RETRIES) or not _same_file(fd, path):
            os.close(fd)
            yield None
            return
        try:
            contents = read_segment(_read_fd(fd), path)
            claimed = ClaimedSegment(path, fd, contents)
        except BaseException:
            os.close(fd)
            raise
        try:
            yield claimed
        finally:
            claimed.release()
