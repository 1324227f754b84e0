"""`exnet publish FILE...` and `exnet spool flush|status`: a site's tool.

Options -> settings -> publisher -> run. Every line is checked against the
contracts before it is sent; what Kafka does not acknowledge waits in the
spool (``<var_dir>/spool``) for the next run or "exnet spool flush".
"""

from __future__ import annotations

import logging
import os
import select
import shlex
import signal
import sys
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Annotated, Final

import orjson
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from contracts import Reason, Rejected
from contracts.errors import UserError
from contracts.validation import MAX_MESSAGE_BYTES
from exnet.settings import Settings, load_settings
from producers import (
    Checker,
    FlushSummary,
    Publisher,
    PublishSummary,
    SpoolWriteError,
    flush_spool,
    spool_of,
)
from producers.publisher import COMMIT_EVENTS

__all__ = [
    "EXIT_DAMAGED",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_SPOOLED",
    "register",
]

#: Every line valid and every event acknowledged by Kafka.
EXIT_OK: Final = 0
#: At least one line was invalid (reported on stderr, not sent).
EXIT_INVALID: Final = 1
#: No line invalid, but some events wait in the spool (Kafka unreachable).
EXIT_SPOOLED: Final = 3
#: A damaged spool file was set aside: events stored in its damaged bytes were not
#: sent and must be published again (the message says which run's).
EXIT_DAMAGED: Final = 4
#: A usage error, or the spool could not be written (what `exnet` exits with for a
#: UserError).
EXIT_USAGE: Final = 2
#: Stopped by SIGTERM or Ctrl-C (what was read is sent or spooled).
EXIT_INTERRUPTED: Final = 130

#: Name shown for standard input in reports.
STDIN_NAME: Final = "<stdin>"
#: Refresh the progress bar every this many lines (a refresh costs ~50 us).
_PROGRESS_EVERY: Final = 1_000
#: Standard input: seconds between checks for a stop while no input comes, and bytes
#: taken at a time.
_STDIN_STOP_CHECK_S: Final = 0.2
_STDIN_READ_BYTES: Final = 1 << 16

#: What a blank line may hold: JSON's whitespace only (RFC 8259 §2). Python's
#: ``bytes.strip()`` also strips vertical tab and form feed, which a JSON parser
#: refuses: a line of them, sent as it is, would be a malformed message.
_JSON_WHITESPACE: Final = b" \t\r\n"


_PUBLISH_HELP = f"""Publish events from JSON Lines files ("-" for standard input) to Kafka.

Every line is one event, checked against the contracts (and the network
registry when EXNET_REGISTRY names one). Invalid lines are reported on stderr
as "FILE:LINE: reason: field.path: message" ("FILE:LINE: reason: message" for a
line too large or not JSON) and not sent; blank lines are skipped. Valid lines
are sent as they are (same bytes), keyed by participant_id, to their event
type's topic.

Events Kafka does not acknowledge (broker down) are kept in the spool under
EXNET_VAR_DIR/spool and sent at the start of the next run or by
"exnet spool flush". Nothing is lost.

With --check, the lines are only checked: the same report, nothing sent or
spooled, no Kafka needed; exit status {EXIT_OK} when every line is valid.

Exit status: {EXIT_OK} every event sent; {EXIT_INVALID} some line was invalid;
{EXIT_SPOOLED} nothing invalid but some events were spooled; {EXIT_DAMAGED} a damaged
spool file from an earlier run was set aside (the message says which files to
publish again); 2 a usage error (such as a missing file), Kafka answering without
the input topics (a wrong EXNET_TOPIC_PREFIX, or `exnet init` never run: nothing
is read or spooled), or the spool could not be written (a full disk: the message
says what was sent and where it stopped);
{EXIT_INTERRUPTED} stopped by SIGTERM or Ctrl-C, after sending or spooling every
line read (a second signal stops at once: what Kafka has not acknowledged yet stays
spooled, for `exnet spool flush` or the next run).
"""


@dataclass(slots=True)
class _LineCounts:
    read: int = 0
    blank: int = 0
    #: The file and line being read.
    at: tuple[str, int] = ("", 0)
    #: The file and line of the latest valid events, oldest first: enough to name the
    #: first event the publisher had not saved yet (it saves them in groups of at most
    #: COMMIT_EVENTS, across files) when the spool refuses a write.
    valid_at: deque[tuple[str, int]] = field(default_factory=lambda: deque(maxlen=COMMIT_EVENTS))


def _quiet_kafka_logs() -> None:
    # kafka-python logs every failed connection attempt at ERROR; the
    # publisher says once, in its own words, that Kafka is unreachable.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _report_rejection(console: Console, name: str, line: int, outcome: Rejected) -> None:
    reason = outcome.reason.value
    for issue in outcome.issues or ():
        if issue.path:
            text = f"{name}:{line}: {reason}: {issue.path}: {_one_line(issue.message)}"
        else:
            text = f"{name}:{line}: {reason}: {_one_line(issue.message)}"
        console.print(text, markup=False, highlight=False, soft_wrap=True, emoji=False)


def _report_too_large(console: Console, name: str, line: int, size: int) -> None:
    """A line too long to keep whole (:data:`_LINE_KEPT`), of ``size`` bytes."""
    text = (
        f"{name}:{line}: {Reason.TOO_LARGE.value}: {size} bytes is over the limit of "
        f"{MAX_MESSAGE_BYTES} bytes"
    )
    console.print(text, markup=False, highlight=False, soft_wrap=True, emoji=False)


def _check_readable(files: list[str]) -> None:
    """Fail before anything is sent when a named file cannot be read."""
    for name in files:
        if name == "-":
            continue
        path = Path(name)
        if not path.exists():
            raise UserError(f"{name}: no such file")
        if path.is_dir():
            raise UserError(f"{name}: is a directory, not a JSON Lines file")
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise UserError(f"{name}: cannot read it: {exc.strerror or exc}") from None


@contextmanager
def _open_input(name: str) -> Iterator[IO[bytes]]:
    if name == "-":
        yield sys.stdin.buffer
        return
    try:
        handle = Path(name).open("rb")  # noqa: SIM115  (closed below; yielded while open)
    except OSError as exc:
        raise UserError(f"{name}: cannot read it: {exc.strerror or exc}") from None
    with handle:
        yield handle


#: Bytes of a line kept in memory: enough to tell any line over SPEC's limit (with its
#: line end) is ``too_large``; the rest of a longer line is read and counted, not kept
#: (a 300 MB file with no line break took 676 MB, a site's outside tester saw).
_LINE_KEPT: Final = MAX_MESSAGE_BYTES + 3


#: What follows a UTF-16LE file's last line end (``\n\x00``) when cut at ``\n``.
_UTF16LE_END: Final = b"\x00"


def _file_lines(stream: IO[bytes]) -> Iterator[tuple[bytes, int]]:
    """Each line of ``stream`` (with its ``\n``; the last may lack it), cut to
    :data:`_LINE_KEPT` bytes, and its whole length without its line end.

    A UTF-16LE file (each of its lines rejected: not UTF-8) has as many lines as
    its text: the NUL byte after its last ``\n``, that line end's second byte, is
    not one more (a 2-line file was reported as 3). Only after a line holding NUL
    bytes, which no UTF-8 JSON line does: elsewhere a lone NUL is a line, invalid."""
    wide = False  # the line before held a NUL byte
    while line := stream.readline(_LINE_KEPT):
        if wide and line == _UTF16LE_END:  # at the end: readline stops only there
            return
        wide = b"\x00" in line
        size, last = len(line), line
        if size == _LINE_KEPT and not line.endswith(b"\n"):
            while rest := stream.readline(_LINE_KEPT):  # the rest, counted, dropped
                size, last = size + len(rest), rest
                if rest.endswith(b"\n"):
                    break
        yield line, size - _ending(last)


def _ending(piece: bytes) -> int:
    """Bytes of the line end (``\n``, ``\r\n``) that ``piece``, a line's last, ends with."""
    return len(piece) - len(piece.rstrip(b"\r\n"))


def _stdin_lines(stream: IO[bytes], stop: StopFlag) -> Iterator[tuple[bytes, int]]:
    """The lines of standard input (each with its ``\\n``; the last may lack it) until
    its end, or until ``stop`` is requested, even while no input comes.

    Why not iterate it: a read blocked on an idle pipe (``tail -F log | exnet publish
    -``) is resumed after a signal's handler runs (PEP 475), so a service manager's
    SIGTERM waited for the next line, for good on a quiet export. Lines are cut
    here from what the pipe holds. Every whole line taken from the pipe is given,
    the stop or not (the pipe cannot give them back); a partial line when the stop
    comes is not a line. Lines are cut and measured as :func:`_file_lines` does.
    """
    try:
        descriptor = stream.fileno()
    except (OSError, ValueError):  # not a file descriptor (a test's BytesIO): no wait
        for line in _file_lines(stream):
            if stop.requested:
                return
            yield line
        return
    pieces: list[bytes] = []  # the line being read, up to _LINE_KEPT bytes
    kept = size = 0  # of the line being read
    wide = False  # the last whole line held a NUL byte
    while not stop.requested:
        ready, _, _ = select.select([descriptor], [], [], _STDIN_STOP_CHECK_S)
        if not ready:
            continue
        chunk = os.read(descriptor, _STDIN_READ_BYTES)
        if not chunk:
            if size and not (wide and pieces == [_UTF16LE_END]):  # as in _file_lines
                yield b"".join(pieces), size - _ending(pieces[-1])
            return
        start = 0
        while start < len(chunk):
            end = chunk.find(b"\n", start)
            stop_at = len(chunk) if end == -1 else end + 1
            piece = chunk[start:stop_at]
            if kept < _LINE_KEPT:
                pieces.append(piece[: _LINE_KEPT - kept])
                kept += len(pieces[-1])
            size += len(piece)
            start = stop_at
            if end != -1:
                whole = b"".join(pieces)
                wide = b"\x00" in whole
                yield whole, size - _ending(piece)
                pieces.clear()
                kept = size = 0


def _publish_stream(
    publisher: Publisher | Checker,
    stream: IO[bytes],
    name: str,
    counts: _LineCounts,
    errors: Console,
    progress: Progress | None,
    task: TaskID | None,
    stop: StopFlag,
) -> None:
    publish = publisher.publish
    from_stdin = name == STDIN_NAME
    lines = _stdin_lines(stream, stop) if from_stdin else _file_lines(stream)
    first: bytes | None = None  # this input's first line with content, when it was refused
    read_here = 0
    try:
        for number, (raw, size) in enumerate(lines, 1):
            if stop.requested and not from_stdin:  # stdin's lines end by themselves
                return
            counts.at = (name, number)
            line = raw.rstrip(b"\r\n")
            if progress is not None and task is not None and number % _PROGRESS_EVERY == 0:
                progress.update(task, completed=stream.tell() if stream.seekable() else number)
            if not line.strip(_JSON_WHITESPACE):
                counts.blank += 1
                continue
            counts.read += 1
            read_here += 1
            where = (name, number)
            try:
                outcome = publish(line, where)
            except SpoolWriteError:  # valid: it filled the group the spool refused
                counts.valid_at.append(where)
                raise
            if not isinstance(outcome, Rejected):
                counts.valid_at.append(where)
            elif size > len(line):  # cut: too_large
                _report_too_large(errors, name, number, size)
            else:
                _report_rejection(errors, name, number, outcome)
                if read_here == 1:
                    first = line.strip()
    except OSError as exc:
        raise UserError(f"{name}: reading failed: {exc.strerror or exc}") from None
    hint = _shape_hint(name, first) if first is not None else None
    if hint is not None:
        errors.print(hint, markup=False, highlight=False, soft_wrap=True, emoji=False)


def _shape_hint(name: str, first: bytes) -> str | None:
    """What to do when a refused file's first line shows it is JSON, but not JSON Lines."""
    file = shlex.quote(name) if name != STDIN_NAME else "FILE"
    if b"\r" in first:  # JSON allows a raw CR only between tokens: here, between lines
        return (
            f"{name}: its lines end in a carriage return alone (CR, as classic Mac OS "
            "wrote them), so its events read as one line; exnet publish reads lines "
            f"that end in LF or CR LF (for example: tr '\\r' '\\n' < {file} > fixed.jsonl)"
        )
    if first == b"[":
        return (
            f"{name}: looks like a JSON array written across several lines; exnet publish "
            f"reads JSON Lines, one event object per line (for example: jq -c '.[]' {file})"
        )
    if first == b"{":
        return (
            f"{name}: looks like JSON written across several lines; exnet publish reads "
            f"JSON Lines, one whole event per line (for example: jq -c . {file})"
        )
    if first.startswith(b"["):
        return (
            f"{name}: looks like a JSON array of events; exnet publish reads JSON Lines, "
            f"one event object per line (for example: jq -c '.[]' {file})"
        )
    return None


def _summary_line(lines: _LineCounts, summary: PublishSummary) -> str:
    text = (
        f"read {lines.read}, sent {summary.sent}, invalid {summary.invalid}, "
        f"spooled {summary.spooled}, skipped blank {lines.blank}"
    )
    if summary.repeated:
        text += (
            f"; {summary.repeated} repeat an event of this run (duplicates: the platform "
            "drops them)"
        )
    resent = summary.resent
    if resent.sent or resent.remaining:
        text += f"; from earlier runs: resent {resent.sent}, still spooled {resent.remaining}"
    return text


def _exit_code(summary: PublishSummary) -> int:
    """The run's exit status: when several apply, the one asking most of a person first.
    A damaged spool file (its events must be published again, or they are lost), then
    invalid lines (to correct), then events still spooled (a later publish or flush
    sends them by itself). An invalid line hid the other two until 2026-12-03."""
    if summary.resent.set_aside:
        return EXIT_DAMAGED
    if summary.invalid:
        return EXIT_INVALID
    if summary.spooled or summary.resent.remaining:
        return EXIT_SPOOLED
    return EXIT_OK


class StopFlag:
    """Set by SIGTERM or Ctrl-C: stop reading, commit what was read, report, exit."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        """Handle SIGTERM and SIGINT; a second signal stops at once (KeyboardInterrupt)."""

        def request_stop(signum: int, frame: FrameType | None) -> None:
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, request_stop)
            signal.signal(signal.SIGINT, request_stop)


def publish_files(
    settings: Settings,
    files: list[str],
    *,
    show_progress: bool | None = None,
    stop: StopFlag | None = None,
) -> int:
    """Run ``exnet publish`` on ``files``; returns the exit status.

    When ``stop`` is set (by a signal), reading stops at the next line; what
    was read is still sent or spooled and counted.
    """
    stop = stop if stop is not None else StopFlag()
    _check_readable(files)
    _quiet_kafka_logs()
    errors = Console(stderr=True, soft_wrap=True, highlight=False)
    out = Console(soft_wrap=True, highlight=False)
    show = errors.is_terminal if show_progress is None else show_progress
    lines = _LineCounts()
    publisher: Publisher | None = None
    try:
        with ExitStack() as stack:
            inputs = [name if name == "-" else str(Path(name).resolve()) for name in files]
            publisher = stack.enter_context(Publisher(settings, inputs=inputs))
            publisher.online  # noqa: B018  # connects now: a missing topic is told before any line
            resent = publisher.resend_spool()
            if resent.sent:
                errors.print(
                    f"resent {_counted(resent.sent, 'spooled event')} from earlier runs",
                    markup=False,
                )
            if resent.missing_topics and resent.problem:
                errors.print(resent.problem, markup=False)
            for segment in resent.set_aside:
                errors.print(segment.text(), markup=False)
            progress: Progress | None = None
            if show:
                progress = stack.enter_context(
                    Progress(
                        TextColumn("{task.description}"),
                        BarColumn(),
                        MofNCompleteColumn() if "-" in files else TransferSpeedColumn(),
                        TimeRemainingColumn(),
                        console=errors,
                        transient=True,
                    )
                )
            try:
                for name in files:
                    shown = STDIN_NAME if name == "-" else name
                    with _open_input(name) as stream:
                        task = None
                        total = None if name == "-" else Path(name).stat().st_size
                        if progress is not None:
                            task = progress.add_task(shown, total=total)
                        _publish_stream(
                            publisher, stream, shown, lines, errors, progress, task, stop
                        )
                    if stop.requested:
                        break
                    if progress is not None and task is not None and total is not None:
                        progress.update(task, completed=total)
                publisher.close()  # saves the last group: the spool may refuse it too
            except SpoolWriteError:
                pass  # told below, with what was sent and what was not
            summary = publisher.close()
    except KeyboardInterrupt:
        # A second signal, while the first one's stop waited on Kafka: the publisher
        # closed on the way out (what it had read is spooled, if not sent). Its
        # counts are still the site's only account of the run (an outside check:
        # exit 130 and nothing on standard output).
        if publisher is None:
            raise
        summary = publisher.summary()
    # Stopped at once (a second signal): spooled without a problem, not waited for.
    problem = summary.problem or ("stopped at once" if stop.requested else None)
    if summary.spooled and problem:
        errors.print(
            f"{_counted(summary.spooled, 'event')} "
            f"{'was' if summary.spooled == 1 else 'were'} not acknowledged ({problem}); "
            f"{'it waits' if summary.spooled == 1 else 'they wait'} in "
            f"{spool_of(settings).directory}: run `exnet spool flush`"
            + (
                " once that is put right (Kafka answering, this login accepted)"
                if summary.problem
                else " (or publish again: a run sends the spool first)"
            ),
            markup=False,
        )
    out.print(_summary_line(lines, summary), markup=False)
    if summary.spool_error is not None:
        name, number = lines.at
        first, line = _first_unsaved(lines, summary.unsaved, files)
        remedy = summary.spool_error.remedy
        errors.print(
            f"{name}:{number}: stopped: {summary.spool_error}. "
            f"{_counted(summary.unsaved, 'valid event')} read up to this line "
            f"{'was' if summary.unsaved == 1 else 'were'} neither sent nor spooled, and "
            f"nothing after it was read. {remedy[:1].upper()}{remedy[1:]}, then publish "
            f"{first} again from "
            f"line {line} on, and the files after it: events Kafka already has are dropped "
            "as duplicates",
            markup=False,
        )
        return EXIT_USAGE
    if stop.requested:
        errors.print(f"interrupted after {lines.read + lines.blank} lines", markup=False)
        return EXIT_INTERRUPTED
    return _exit_code(summary)


def _first_unsaved(lines: _LineCounts, unsaved: int, files: list[str]) -> tuple[str, int]:
    """The file and line of the first of the ``unsaved`` valid events: the last ones
    read (the publisher keeps the group the spool refused, and reads no further).

    The first file's first line if they are more than :attr:`_LineCounts.valid_at`
    remembers (never: a group holds at most COMMIT_EVENTS events).
    """
    if 0 < unsaved <= len(lines.valid_at):
        return lines.valid_at[-unsaved]
    return STDIN_NAME if files[0] == "-" else files[0], 1


def check_files(settings: Settings, files: list[str]) -> int:
    """Run ``exnet publish --check`` on ``files``: every line checked and reported as
    publishing would, nothing sent or spooled; returns the exit status."""
    _check_readable(files)
    errors = Console(stderr=True, soft_wrap=True, highlight=False)
    checker = Checker(settings)
    lines = _LineCounts()
    stop = StopFlag()
    for name in files:
        shown = STDIN_NAME if name == "-" else name
        with _open_input(name) as stream:
            _publish_stream(checker, stream, shown, lines, errors, None, None, stop)
    text = (
        f"checked {lines.read}: valid {checker.valid}, invalid {checker.invalid}, "
        f"skipped blank {lines.blank}; nothing sent"
    )
    if checker.repeated:
        text += f"; {checker.repeated} repeat an event of this run (duplicates)"
    Console(soft_wrap=True, highlight=False).print(text, markup=False)
    return EXIT_INVALID if checker.invalid else EXIT_OK


def _counted(count: int, noun: str) -> str:
    """``count`` and ``noun``, plural unless the count is one: "1 segment", "2 segments"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _flush_text(flushed: FlushSummary) -> str:
    text = f"sent {flushed.sent}, still spooled {flushed.remaining}"
    if flushed.segments_busy:
        text += f" ({_counted(flushed.segments_busy, 'segment')} held by another process)"
    if flushed.problem:
        text += f"; {flushed.problem}"
    return text


def _exit(code: int) -> None:
    # SystemExit, not typer.Exit: in the non-standalone mode `exnet` runs click
    # in, click turns typer.Exit into a return value, and the status is lost.
    if code != EXIT_OK:
        sys.exit(code)


def register(app: typer.Typer) -> None:
    """Add ``publish`` and the ``spool`` group to ``app``."""

    @app.command("publish", help=_PUBLISH_HELP)
    def publish(
        files: Annotated[
            list[str],
            typer.Argument(metavar="FILE", help="JSON Lines files; '-' reads standard input."),
        ],
        progress: Annotated[
            bool | None,
            typer.Option(
                "--progress/--no-progress",
                help="Show a progress bar (default: only on a terminal).",
            ),
        ] = None,
        check: Annotated[
            bool,
            typer.Option(
                "--check",
                help="Only check the lines and report them: nothing is sent or spooled.",
            ),
        ] = False,
    ) -> None:
        settings = load_settings()
        if check:
            _exit(check_files(settings, files))
            return
        stop = StopFlag()
        stop.install()
        _exit(publish_files(settings, files, show_progress=progress, stop=stop))

    spool_app = typer.Typer(
        name="spool",
        help="The publisher's local spool of events Kafka has not acknowledged yet.",
        no_args_is_help=True,
    )

    @spool_app.command(
        "flush",
        help=f"Send every spooled event to Kafka, once. Exit status {EXIT_OK}: the spool "
        f"is empty; {EXIT_SPOOLED}: events still wait (Kafka unreachable, or a segment "
        f"is held by a running publisher or flush); {EXIT_DAMAGED}: a damaged spool file "
        "was set aside (the message says which files to publish again).",
    )
    def flush() -> None:
        settings = load_settings()
        _quiet_kafka_logs()
        flushed = flush_spool(settings)
        console = Console(soft_wrap=True, highlight=False)
        console.print(_flush_text(flushed), markup=False)
        for segment in flushed.set_aside:
            Console(stderr=True, soft_wrap=True, highlight=False).print(
                segment.text(), markup=False
            )
        if flushed.set_aside:
            _exit(EXIT_DAMAGED)
        # Events a running publisher (or flush) holds still wait, wherever Kafka is.
        _exit(EXIT_SPOOLED if flushed.remaining or flushed.in_flight else EXIT_OK)

    @spool_app.command("status", help="How many events wait in the spool (nothing is sent).")
    def status(
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        settings = load_settings()
        state = spool_of(settings).status()
        console = Console(soft_wrap=True, highlight=False)
        if as_json:
            document = {
                "directory": str(state.directory),
                "pending": state.pending,
                "in_flight": state.in_flight,
                "segments": [
                    {
                        "path": str(seg.path),
                        "created_at": seg.created_at,
                        "events": seg.events,
                        "pending": seg.pending,
                        "bytes": seg.size,
                        "in_use": seg.in_use,
                        "topics": list(seg.topics),
                        "damaged_bytes": seg.damaged_bytes,
                        "damaged_at": seg.damaged_at,
                        "inputs": list(seg.inputs),
                    }
                    for seg in state.segments
                ],
                "set_aside": [str(path) for path in state.set_aside],
            }
            console.print(orjson.dumps(document).decode(), markup=False)
            return
        text = (
            f"{_counted(state.pending, 'event')} waiting in "
            f"{_counted(state.waiting_segments, 'segment')} "
            f"({state.size / 1024:.1f} KiB) under {state.directory}"
        )
        if state.in_flight:
            text += f"; {state.in_flight} unacknowledged in segments of running publishers"
        waiting_for = sorted({t for seg in state.segments if seg.pending for t in seg.topics})
        if waiting_for:
            text += f"; for {', '.join(waiting_for)}"
        console.print(text, markup=False)
        for seg in state.segments:
            if seg.damaged_bytes:
                console.print(
                    f"{seg.path.name} is damaged: {seg.damaged_bytes} bytes from byte "
                    f"{seg.damaged_at} cannot be read (the next flush sends its readable "
                    "events, then sets it aside)"
                    + (f"; its events came from {', '.join(seg.inputs)}" if seg.inputs else ""),
                    markup=False,
                )
        if state.set_aside:
            console.print(
                f"{_counted(len(state.set_aside), 'damaged spool file')} set aside in "
                f"{state.set_aside[0].parent} (`exnet spool flush` said which files to "
                "publish again); delete them once that is done",
                markup=False,
            )

    app.add_typer(spool_app)
