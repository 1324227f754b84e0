"""`exnet publish`: line reports, summary and exit status (fake pub_producer, no broker)."""

from __future__ import annotations

import errno
import fcntl
import io
import os
import pickle
import re
import resource
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from contracts.errors import UserError
from contracts.topics import Topic, topic_name
from contracts.validation import MAX_MESSAGE_BYTES
from exnet.cli.publish import (
    EXIT_DAMAGED,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_SPOOLED,
    check_files,
    publish_files,
)
from exnet.settings import Settings
from producers import Simulation, SpooledEvent, simulate, spool_of
from producers import publisher as publisher_module
from producers.spool import DAMAGED_DIR, SpoolWriteError, read_segment

from .helpers import EXNET, pub_env, pub_exnet
from .test_publisher import FakeProducer


def _valid(simulation: Simulation, schema: str, index: int = 0) -> dict[str, Any]:
    documents = [
        orjson.loads(m.value)
        for m in simulation.messages
        if m.kind.value == "event" and m.value.find(schema.encode()) >= 0
    ]
    document: dict[str, Any] = documents[index]
    return document


def test_invalid_lines_are_reported_by_line_and_field_path(
    pub_settings: Settings,
    pub_simulation: Simulation,
    pub_producer: FakeProducer,
    pub_write_lines: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    good = orjson.dumps(_valid(pub_simulation, '"session/1"'))
    session = _valid(pub_simulation, '"session/1"', 1)
    bad_fields = orjson.dumps(session | {"rpe": 25, "patient_name": "Jane Doe"})
    crlf = orjson.dumps(_valid(pub_simulation, '"assay/1"'))
    path = pub_write_lines(
        [
            good,  # 1
            b"",  # 2 blank
            bad_fields,  # 3
            b'{"schema": "session/1", "event_id": ',  # 4 cut short
            crlf + b"\r",  # 5 valid, Windows line end
            b"   \t",  # 6 blank
            b"[1, 2]",  # 7 not an object
            b"\x0b\x0c",  # 8 not blank to JSON (vertical tab, form feed): malformed
        ]
    )
    status = publish_files(pub_settings, [str(path)], show_progress=False)
    out, err = capsys.readouterr()

    assert status == EXIT_INVALID
    lines = err.splitlines()
    assert lines[0].startswith(f"{path}:3: invalid_field: ")
    reported = {tuple(line.split(": ", 3)[:3]) for line in lines}
    assert (f"{path}:3", "invalid_field", "rpe") in reported
    assert (f"{path}:3", "invalid_field", "patient_name") in reported
    assert any(re.match(rf"{re.escape(str(path))}:4: malformed_json: not JSON: ", x) for x in lines)
    assert (
        f"{path}:7: malformed_json: a JSON array, not an object: one event is one JSON object"
        in lines
    )
    assert any(re.match(rf"{re.escape(str(path))}:8: malformed_json: ", x) for x in lines)
    assert len(lines) == 5  # one line per failing field path, nothing else

    assert out.strip() == "read 6, sent 2, invalid 4, spooled 0, skipped blank 2"
    assert sorted(pub_producer.values()) == sorted([good, crlf])


@pytest.mark.parametrize(
    ("shape", "hint"),
    [
        (
            "pretty",
            "looks like JSON written across several lines; exnet publish reads JSON "
            "Lines, one whole event per line (for example: jq -c . {path})",
        ),
        (
            "array",
            "looks like a JSON array of events; exnet publish reads JSON Lines, one "
            "event object per line (for example: jq -c '.[]' {path})",
        ),
        (
            "pretty array",
            "looks like a JSON array written across several lines; exnet publish reads "
            "JSON Lines, one event object per line (for example: jq -c '.[]' {path})",
        ),
        (
            "cr line ends",
            "its lines end in a carriage return alone (CR, as classic Mac OS wrote them), "
            "so its events read as one line; exnet publish reads lines that end in LF or "
            "CR LF (for example: tr '\\r' '\\n' < {path} > fixed.jsonl)",
        ),
    ],
)
def test_a_file_of_json_that_is_not_json_lines_gets_one_hint(
    shape: str,
    hint: str,
    pub_settings: Settings,
    pub_simulation: Simulation,
    pub_producer: FakeProducer,
    pub_write_lines: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    events = [_valid(pub_simulation, '"session/1"', i) for i in range(2)]
    if shape == "pretty":
        lines = orjson.dumps(events[0], option=orjson.OPT_INDENT_2).split(b"\n")
    elif shape == "pretty array":
        lines = orjson.dumps(events, option=orjson.OPT_INDENT_2).split(b"\n")
    elif shape == "cr line ends":
        lines = [b"\r".join(orjson.dumps(event) for event in events)]
    else:
        lines = [orjson.dumps(events)]
    path = pub_write_lines(lines)
    ahead = pub_write_lines([orjson.dumps(events[1])], name="ahead.jsonl")  # a valid file first
    assert publish_files(pub_settings, [str(ahead), str(path)], show_progress=False) == EXIT_INVALID
    out, err = capsys.readouterr()
    reported = err.splitlines()
    assert len(reported) == len(lines) + 1  # every line refused, then the hint once
    assert reported[-1] == f"{path}: " + hint.format(path=path)
    assert pub_producer.values() == [orjson.dumps(events[1])]


def test_check_reports_what_publish_would_and_sends_nothing(
    pub_settings: Settings,
    pub_simulation: Simulation,
    pub_producer: FakeProducer,
    pub_write_lines: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    session = _valid(pub_simulation, '"session/1"')
    other = _valid(pub_simulation, '"session/1"', 1)
    lines = [
        orjson.dumps(session),  # 1
        orjson.dumps(session | {"rpe": 25}),  # 2 invalid field
        b"",  # 3 blank
        orjson.dumps(other),  # 4
        orjson.dumps(other | {"duration_min": other["duration_min"] + 1}),  # 5 conflict with 4
        orjson.dumps(session),  # 6 repeat of 1
    ]
    path = pub_write_lines(lines)

    assert check_files(pub_settings, [str(path)]) == EXIT_INVALID
    checked_out, checked_err = capsys.readouterr()
    assert checked_out.strip() == (
        "checked 5: valid 3, invalid 2, skipped blank 1; nothing sent; "
        "1 repeat an event of this run (duplicates)"
    )
    assert pub_producer.values() == []
    assert not spool_of(pub_settings).segment_paths()

    # the same lines published: the same report, line for line
    assert publish_files(pub_settings, [str(path)], show_progress=False) == EXIT_INVALID
    _, published_err = capsys.readouterr()
    assert checked_err == published_err
    assert [f"{path}:2:", f"{path}:5:"] == [line.split(" ")[0] for line in checked_err.splitlines()]

    valid = pub_write_lines([orjson.dumps(other)], name="valid.jsonl")
    assert check_files(pub_settings, [str(valid)]) == EXIT_OK


def test_all_valid_exits_0(
    pub_settings: Settings,
    pub_simulation: Simulation,
    pub_producer: FakeProducer,
    pub_write_lines: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    values = [m.value for m in pub_simulation.messages if m.kind.value == "event"][:500]
    first = pub_write_lines(values[:200], name="a.jsonl")
    second = pub_write_lines(values[200:], name="b.jsonl")
    status = publish_files(pub_settings, [str(first), str(second)], show_progress=False)
    out, err = capsys.readouterr()
    assert status == EXIT_OK
    assert err == ""
    assert out.strip() == "read 500, sent 500, invalid 0, spooled 0, skipped blank 0"
    assert sorted(pub_producer.values()) == sorted(values)


def test_spooled_events_exit_3_and_invalid_lines_still_exit_1(
    pub_settings: Settings,
    pub_simulation: Simulation,
    monkeypatch: pytest.MonkeyPatch,
    pub_write_lines: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(publisher_module, "connect_producer", lambda *_a, **_k: None)
    values = [m.value for m in pub_simulation.messages if m.kind.value == "event"][:20]
    path = pub_write_lines(values)
    assert publish_files(pub_settings, [str(path)], show_progress=False) == EXIT_SPOOLED
    out, err = capsys.readouterr()
    assert out.strip() == "read 20, sent 0, invalid 0, spooled 20, skipped blank 0"
    assert "exnet spool flush" in err

    path = pub_write_lines([*values, b"{}"], name="with-invalid.jsonl")
    assert publish_files(pub_settings, [str(path)], show_progress=False) == EXIT_INVALID
    out, _err = capsys.readouterr()
    assert "spooled 20" in out
    assert "still spooled 20" in out  # the first run's events wait too


def test_standard_input_is_read_for_dash(
    pub_settings: Settings,
    pub_simulation: Simulation,
    pub_producer: FakeProducer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    value = [m.value for m in pub_simulation.messages if m.kind.value == "event"][0]
    data = value + b"\n\nnonsense\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert publish_files(pub_settings, ["-"], show_progress=False) == EXIT_INVALID
    out, err = capsys.readouterr()
    assert err.startswith("<stdin>:3: malformed_json: ")
    assert out.strip() == "read 2, sent 1, invalid 1, spooled 0, skipped blank 1"
    assert pub_producer.delivered[0][2] == value


def test_a_utf16_file_has_as_many_lines_as_its_text(
    pub_settings: Settings,
    pub_simulation: Simulation,
    pub_write_lines: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Saved as UTF-16 (a spreadsheet's "Unicode text"): each line is rejected, and the
    NUL byte after the last line end is that line end's, not a third line."""
    text = "".join(
        orjson.dumps(_valid(pub_simulation, '"session/1"', i)).decode() + "\n" for i in range(2)
    )
    path = tmp_path / "unicode.jsonl"
    path.write_bytes(text.encode("utf-16"))  # little-endian here, with its byte-order mark
    assert check_files(pub_settings, [str(path)]) == EXIT_INVALID
    out, err = capsys.readouterr()
    assert out.strip() == "checked 2: valid 0, invalid 2, skipped blank 0; nothing sent"
    assert [line.split(" ")[0] for line in err.splitlines()] == [f"{path}:1:", f"{path}:2:"]
    assert all("looks like UTF-16" in line for line in err.splitlines())
    # Standard input read from a pipe, cut into lines as they come: the same.
    piped = pub_exnet(
        "publish",
        "--check",
        "-",
        env=pub_env(pub_settings),
        cwd=tmp_path,
        stdin=text.encode("utf-16"),
    )
    assert piped.returncode == EXIT_INVALID
    assert b"checked 2: valid 0, invalid 2" in piped.stdout
    # A lone NUL byte after a UTF-8 line is no line end's: a line, and invalid.
    stray = pub_write_lines([orjson.dumps(_valid(pub_simulation, '"session/1"'))], name="nul.jsonl")
    stray.write_bytes(stray.read_bytes() + b"\x00")
    assert check_files(pub_settings, [str(stray)]) == EXIT_INVALID
    out, err = capsys.readouterr()
    assert out.strip() == "checked 2: valid 1, invalid 1, skipped blank 0; nothing sent"
    assert err.startswith(f"{stray}:2: malformed_json: ")


def test_a_missing_or_unreadable_file_is_a_user_error(
    pub_settings: Settings, pub_producer: FakeProducer, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match="no such file"):
        publish_files(pub_settings, [str(tmp_path / "missing.jsonl")])
    with pytest.raises(UserError, match="is a directory"):
        publish_files(pub_settings, [str(tmp_path)])
    assert pub_producer.sends == 0


def test_the_command_reports_a_missing_file_without_a_traceback(
    pub_settings: Settings, tmp_path: Path
) -> None:
    result = pub_exnet("publish", "missing.jsonl", env=pub_env(pub_settings), cwd=tmp_path)
    assert result.returncode == 2
    assert b"missing.jsonl: no such file" in result.stderr
    assert b"Traceback" not in result.stderr


def test_help_documents_the_exit_statuses(pub_settings: Settings, tmp_path: Path) -> None:
    result = pub_exnet("publish", "--help", env=pub_env(pub_settings), cwd=tmp_path)
    text = " ".join(result.stdout.decode().split())
    assert result.returncode == 0
    assert "0 every event sent; 1 some line was invalid; 3 nothing invalid" in text


def test_sigterm_stops_reading_and_spools_what_was_read(
    pub_settings: Settings, tmp_path: Path
) -> None:
    """SIGTERM: stop at the next line; every line read is spooled (Kafka down) and counted."""
    path = tmp_path / "big.jsonl"
    simulate(pub_settings, seed=8, participants=300, out=path)
    lines = path.read_bytes().splitlines()
    env = pub_env(pub_settings, EXNET_KAFKA_BOOTSTRAP="127.0.0.1:1")
    child = subprocess.Popen(
        [str(EXNET), "publish", str(path)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    spool = spool_of(pub_settings)
    try:
        deadline = time.monotonic() + 60
        while not spool.segment_paths():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130, err
    assert b"interrupted after" in err
    assert b"Traceback" not in err
    (segment,) = spool.segment_paths()
    contents = read_segment(segment.read_bytes(), segment)
    spooled = [event.value for _seq, event in contents.pending()]
    assert 0 < len(spooled) < len(lines)
    summary = re.match(rb"read (\d+), sent 0, invalid 0, spooled (\d+)", out)
    assert summary is not None, out
    assert int(summary[1]) == int(summary[2]) == len(spooled)
    assert spooled == lines[: len(spooled)]


def test_sigterm_stops_a_publish_waiting_on_a_quiet_stdin(
    pub_settings: Settings, tmp_path: Path
) -> None:
    """`tail -F export | exnet publish -` under a service manager: SIGTERM while no
    line comes ends the run at once (a blocked read waited for the next line), and
    every line read before is spooled and counted."""
    path = tmp_path / "some.jsonl"
    simulate(pub_settings, seed=8, participants=3, out=path)
    lines = path.read_bytes().splitlines()[:3]
    env = pub_env(pub_settings, EXNET_KAFKA_BOOTSTRAP="127.0.0.1:1")
    read_end, write_end = os.pipe()
    child = subprocess.Popen(
        [str(EXNET), "publish", "-"],
        env=env,
        cwd=tmp_path,
        stdin=read_end,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    spool = spool_of(pub_settings)
    try:
        os.write(write_end, b"\n".join(lines) + b"\n")  # and the pipe stays open
        deadline = time.monotonic() + 60
        while _unread(read_end):  # this process keeps the read end: the pipe's fill
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "publish did not read its input"
            time.sleep(0.05)
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=10)  # before: until the pipe closed
    finally:
        child.kill()
        os.close(write_end)
        os.close(read_end)
    assert child.returncode == 130, err
    # Every line it took from the pipe is published, the stop or not.
    assert out.startswith(b"read 3, sent 0, invalid 0, spooled 3"), out
    assert _spooled(spool) == lines


def _unread(read_end: int) -> int:
    """Bytes in the pipe not read yet (Linux FIONREAD)."""
    return int.from_bytes(fcntl.ioctl(read_end, termios.FIONREAD, b"\0" * 4), sys.byteorder)


def _spooled(spool: Any) -> list[bytes]:
    values: list[bytes] = []
    for segment in spool.segment_paths():
        contents = read_segment(segment.read_bytes(), segment)
        values.extend(event.value for _seq, event in contents.pending())
    return values


def test_each_bad_input_kind_is_reported_on_its_line(
    pub_settings: Settings,
    pub_producer: FakeProducer,
    pub_write_lines: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The bad-input issue's cases, one per line, as a site's file would carry them."""
    from contracts import Topic
    from tests.contracts.helpers import BASE

    enrollment, session = BASE[Topic.ENROLLMENT], BASE[Topic.SESSION]
    assay, assessment = BASE[Topic.ASSAY], BASE[Topic.ASSESSMENT]

    def line(document: dict[str, Any], **fields: Any) -> bytes:
        return orjson.dumps(document | fields)

    whole = line(session, event_id="5e18c77a-3795-45f9-aabc-d745f4421ddc")
    lines = [
        b"\xef\xbb\xbf" + line(session),  # 1: a byte-order mark (8)
        line(enrollment, status="screened", modality="walking", reason="other"),  # 2 (1)
        line(assessment, score=99)[:-1] + b',"score":5}',  # 3: a repeated name (3)
        line(assay, batch_id="Smith, Ann DOB 1979-03-02 MRN 00412345"),  # 4 (4)
        line(assay, batch_id="B2025\u0000014"),  # 5 (4)
        line(session, occurred_at="1025-05-12T07:45:00Z"),  # 6 (5)
        line(session, event_id="00000000-0000-0000-0000-000000000000"),  # 7 (6)
        line(session, event_id=session["event_id"] + "\n"),  # 8 (7)
        line(session, rpe=[[[[[[1]]]]]])[:-1].replace(b"[1]", b"[" * 300 + b"]" * 300),  # 9
        whole.replace(b'"session_number":7', b'"session_number":12.0'),  # 10: valid (9)
        line(session, occurred_at="2016-12-31T23:59:60Z"),  # 11 (9)
        line(enrollment, status="enrolled"),  # 12 (9)
        line(session, rpe=99),  # 13 (10)
    ]
    lines[8] += b"}"
    path = pub_write_lines(lines)
    status = publish_files(pub_settings, [str(path)], show_progress=False)
    out, err = capsys.readouterr()
    assert status == EXIT_INVALID
    expected = [
        (1, "malformed_json: starts with a byte-order mark (U+FEFF), which I-JSON forbids"),
        (2, "invalid_field: modality: Input should be 'aerobic', 'resistance', 'combined'"),
        (2, "invalid_field: reason: must be null or absent unless status is 'withdrawn'"),
        (3, "malformed_json: the member name 'score' appears more than once in one object"),
        (4, "invalid_field: batch_id: String should match pattern"),
        (5, "invalid_field: batch_id: String should match pattern"),
        (6, "invalid_field: occurred_at: before 2000-01-01T00:00:00Z, the earliest date of"),
        (7, "invalid_field: event_id: 00000000-0000-0000-0000-000000000000 is the nil or"),
        (8, "invalid_field: event_id: String should match pattern"),
        (9, "malformed_json: nested too deeply to be an event (over 200 arrays or objects"),
        (11, "invalid_field: occurred_at: is not a real date and time"),
        (12, "invalid_field: status: Input should be 'screened', 'consented', 'randomized'"),
        (13, "invalid_field: rpe: Input should be less than or equal to 20"),
    ]
    reported = err.splitlines()
    assert len(reported) == len(expected), err
    for got, (number, start) in zip(reported, expected, strict=True):
        assert got.startswith(f"{path}:{number}: {start}"), got
    assert out.strip() == "read 13, sent 1, invalid 12, spooled 0, skipped blank 0"
    assert pub_producer.values() == [lines[9]]


def _spool_two_records(settings: Settings, values: list[bytes]) -> Path:
    """A segment left by an earlier run: ``values`` spooled in two records (halves)."""
    writer = spool_of(settings).create_writer()
    topic = topic_name(Topic.SESSION, settings.topic_prefix)
    events = [SpooledEvent(topic, b"P-%012x" % i, value) for i, value in enumerate(values)]
    half = len(events) // 2
    writer.append_events(0, events[:half])
    writer.append_events(half, events[half:])
    writer.close(delete=False)
    (segment,) = spool_of(settings).segment_paths()
    return segment


@pytest.mark.parametrize("damage", ["last byte", "last length", "cut short"])
def test_a_damaged_spool_file_is_set_aside_named_and_exits_4(
    damage: str,
    pub_settings: Settings,
    pub_simulation: Simulation,
    pub_producer: FakeProducer,
    pub_write_lines: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One flipped bit in the spool's last record (in an event, or in its length), or
    the file cut short: its readable events are sent, the file is set aside and named
    with what to publish again, and publishing goes on (the damaged record's events
    used to vanish, the file deleted, exit 0; a damaged length or a cut still did so
    after the first fix, found by a site's outside tester)."""
    values = [m.value for m in pub_simulation.messages if m.kind.value == "event"][:30]
    segment = _spool_two_records(pub_settings, values[:20])
    data = bytearray(segment.read_bytes())
    if damage == "last byte":
        data[-1] ^= 0x01
    elif damage == "last length":
        last = 0
        while True:  # records: kind:u8 length:u32 crc32:u32 payload
            (length,) = struct.unpack_from("<I", data, last + 1)
            if last + 9 + length == len(data):
                break
            last += 9 + length
        struct.pack_into("<I", data, last + 1, length | 1 << 24)
    else:
        del data[-100:]
    segment.write_bytes(data)
    path = pub_write_lines(values[20:])

    status = publish_files(pub_settings, [str(path)], show_progress=False)
    out, err = capsys.readouterr()
    assert status == EXIT_DAMAGED
    assert sorted(pub_producer.values()) == sorted(values[:10] + values[20:])
    said = " ".join(err.split())
    assert f"the spool file {segment.name} was damaged on disk" in said
    assert "Publish again the files published around 20" in said
    assert out.strip().endswith("from earlier runs: resent 10, still spooled 0")
    spool = spool_of(pub_settings)
    assert spool.segment_paths() == []
    assert spool.status().set_aside == (segment.parent / DAMAGED_DIR / segment.name,)

    result = pub_exnet("spool", "status", env=pub_env(pub_settings), cwd=path.parent)
    assert result.returncode == 0
    assert b"1 damaged spool file set aside in" in result.stdout


def test_a_damaged_spool_file_names_the_files_of_the_run_that_spooled_it(
    pub_settings: Settings,
    pub_simulation: Simulation,
    pub_producer: FakeProducer,
    pub_write_lines: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A run's spool segment records the files it read: a damaged one is told by them,
    not only by the time it was written (a site's data manager, an outside check, had
    to guess which files were published then)."""
    values = [m.value for m in pub_simulation.messages if m.kind.value == "event"][:30]
    first = pub_write_lines(values[:20], name="monday.jsonl")
    pub_producer.fail = lambda _: True  # Kafka refuses: the run spools all it read
    assert publish_files(pub_settings, [str(first)], show_progress=False) == EXIT_SPOOLED
    capsys.readouterr()
    (segment,) = spool_of(pub_settings).segment_paths()
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0x01
    segment.write_bytes(data)

    result = pub_exnet("spool", "status", env=pub_env(pub_settings), cwd=first.parent)
    assert f"its events came from {first.resolve()}" in " ".join(result.stdout.decode().split())
    pub_producer.fail = lambda _: False
    second = pub_write_lines(values[20:], name="tuesday.jsonl")
    status = publish_files(pub_settings, [str(second)], show_progress=False)
    said = " ".join(capsys.readouterr().err.split())
    assert status == EXIT_DAMAGED
    assert f"Publish again the files that run read ({first.resolve()}), published around 20" in (
        said
    )


def test_a_damaged_spool_file_exits_4_even_beside_an_invalid_line(
    pub_settings: Settings,
    pub_simulation: Simulation,
    pub_producer: FakeProducer,
    pub_write_lines: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """4 (publish a run again, or its events are lost) before 1 (an invalid line): a
    site's script that waits for 4 never saw it beside an invalid line (an outside
    tester's find)."""
    values = [m.value for m in pub_simulation.messages if m.kind.value == "event"][:30]
    segment = _spool_two_records(pub_settings, values[:20])
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0x01
    segment.write_bytes(data)
    path = pub_write_lines([*values[20:], b'{"not": "an event"}'])

    assert publish_files(pub_settings, [str(path)], show_progress=False) == EXIT_DAMAGED
    _, err = capsys.readouterr()
    assert f"{path.name}:11:" in err  # the invalid line is still reported
    assert sorted(pub_producer.values()) == sorted(values[:10] + values[20:])


def test_spool_status_names_a_damaged_file_and_flush_keeps_it_while_kafka_is_down(
    pub_settings: Settings, pub_simulation: Simulation, tmp_path: Path
) -> None:
    values = [m.value for m in pub_simulation.messages if m.kind.value == "event"][:10]
    segment = _spool_two_records(pub_settings, values)
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x01
    segment.write_bytes(data)
    env = pub_env(pub_settings, EXNET_KAFKA_BOOTSTRAP="127.0.0.1:1")

    status = pub_exnet("spool", "status", env=env, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert f"{segment.name} is damaged: ".encode() in status.stdout
    flush = pub_exnet("spool", "flush", env=env, cwd=tmp_path)
    assert flush.returncode == EXIT_SPOOLED, flush
    assert b"Traceback" not in flush.stderr
    assert spool_of(pub_settings).segment_paths() == [segment]  # kept, unsent


def test_flush_exits_3_while_a_running_publisher_holds_its_events(
    pub_settings: Settings, tmp_path: Path
) -> None:
    writer = spool_of(pub_settings).create_writer()  # locked, as a running publisher's
    writer.append_events(0, [SpooledEvent("t.exnet.session", b"P-0000000000", b"{}")])
    try:
        for bootstrap in ("127.0.0.1:1", pub_settings.kafka_bootstrap):  # Kafka down, up
            env = pub_env(pub_settings, EXNET_KAFKA_BOOTSTRAP=bootstrap)
            result = pub_exnet("spool", "flush", env=env, cwd=tmp_path)
            assert result.returncode == EXIT_SPOOLED, (bootstrap, result)
    finally:
        writer.close(delete=True)


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        # A real refused write (EFBIG, as ENOSPC on a full disk), not a fake one.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_spool_that_cannot_be_written_stops_the_run_with_its_counts(
    pub_settings: Settings, tmp_path: Path
) -> None:
    """A full disk mid-run: one message with what was sent, spooled and not, and where
    it stopped; exit 2, no traceback (it used to say "reading failed" and crash)."""
    path = tmp_path / "big.jsonl"
    simulate(pub_settings, seed=8, participants=120, out=path)
    env = pub_env(pub_settings, EXNET_KAFKA_BOOTSTRAP="127.0.0.1:1")  # all spooled
    result = subprocess.run(
        [str(EXNET), "publish", "--no-progress", str(path)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
        preexec_fn=_file_size_limit(1_500_000),  # noqa: PLW1509  # nothing threaded here
        check=False,
    )
    err = " ".join(result.stderr.decode().split())
    assert result.returncode == 2, err
    assert "Traceback" not in err
    assert "reading failed" not in err
    stopped = re.search(
        rf"{re.escape(str(path))}:(\d+): stopped: cannot write the spool in .*: "
        r"File too large\. (\d+) valid events read up to this line were neither sent nor "
        r"spooled",
        err,
    )
    assert stopped is not None, err
    assert "Raise the limit on a file's size this user runs under (ulimit -f), then publish " in err
    summary = re.match(rb"read (\d+), sent 0, invalid 0, spooled (\d+)", result.stdout)
    assert summary is not None, result.stdout
    read, spooled, unsaved = int(summary[1]), int(summary[2]), int(stopped[2])
    assert read == spooled + unsaved and spooled > 0 and unsaved > 0
    (segment,) = spool_of(pub_settings).segment_paths()
    contents = read_segment(segment.read_bytes(), segment)
    assert contents.pending_count == spooled
    assert not contents.damaged and not contents.torn_bytes  # the refused write left nothing


def test_a_spool_folder_that_cannot_be_made_says_to_check_the_var_dir_not_to_free_space(
    pub_settings: Settings, tmp_path: Path
) -> None:
    """EXNET_VAR_DIR naming a file: the spool cannot be made under it. The message
    said "Free some space", which does not put that right (a reviewer's find)."""
    path = tmp_path / "few.jsonl"
    simulate(pub_settings, seed=8, participants=3, out=path)
    not_a_folder = tmp_path / "var.jsonl"
    not_a_folder.write_text("{}\n")
    result = subprocess.run(
        [str(EXNET), "publish", "--no-progress", str(path)],
        env=pub_env(
            pub_settings, EXNET_KAFKA_BOOTSTRAP="127.0.0.1:1", EXNET_VAR_DIR=str(not_a_folder)
        ),
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
        check=False,
    )
    err = " ".join(result.stderr.decode().split())
    assert result.returncode == 2, err
    assert "Traceback" not in err
    assert f"stopped: cannot write the spool in {not_a_folder / 'spool'}: " in err
    assert "Not a directory" in err
    assert (
        f"Check EXNET_VAR_DIR, under which the spool is ({not_a_folder / 'spool'}), "
        f"then publish {path} again from line 1 on"
    ) in err
    assert "Free some space" not in err


@pytest.mark.parametrize(
    ("number", "remedy"),
    [
        (errno.ENOSPC, "free some space"),
        (errno.EDQUOT, "free some space"),
        (errno.EFBIG, "raise the limit on a file's size this user runs under (ulimit -f)"),
        (errno.EACCES, "let this user create and write /srv/var/spool"),
        (
            errno.EROFS,
            "the file system of /srv/var/spool is read-only: set EXNET_VAR_DIR to a writable one",
        ),
        (errno.ENOTDIR, "check EXNET_VAR_DIR, under which the spool is (/srv/var/spool)"),
        (errno.EIO, "put right what the system said of /srv/var/spool"),
    ],
)
def test_a_refused_spool_write_s_remedy_follows_its_error_number(number: int, remedy: str) -> None:
    error = SpoolWriteError.refused(OSError(number, os.strerror(number)), Path("/srv/var/spool"))
    message = f"cannot write the spool in /srv/var/spool: {os.strerror(number)}"
    assert (str(error), error.remedy) == (message, remedy)
    copied = pickle.loads(pickle.dumps(error))  # noqa: S301  # our own bytes
    assert (str(copied), copied.remedy) == (message, remedy)


@pytest.mark.parametrize("second", [3_000, 1_000])
def test_a_full_disk_names_the_first_file_and_line_whose_events_were_not_saved(
    second: int, pub_settings: Settings, tmp_path: Path
) -> None:
    """Events are saved in groups (COMMIT_EVENTS) that run across files: when the spool
    refuses one, what to publish again starts at the group's first event, here in the
    file before the one being read (the message named only the file being read, and
    following it lost the earlier file's events: a site's outside tester found it).
    With a second file of 1,000 events the refused group is the run's last, saved as
    the run ends."""
    source = tmp_path / "all.jsonl"
    simulate(pub_settings, seed=8, participants=300, out=source)
    lines = source.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 300 + second
    first, then = tmp_path / "f1.jsonl", tmp_path / "f2.jsonl"
    first.write_bytes(b"\n" + b"".join(lines[:300]))  # a blank line, then 300 events
    then.write_bytes(b"".join(lines[300 : 300 + second]))
    result = subprocess.run(
        [str(EXNET), "publish", "--no-progress", str(first), str(then)],
        env=pub_env(pub_settings, EXNET_KAFKA_BOOTSTRAP="127.0.0.1:1"),  # all spooled
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
        preexec_fn=_file_size_limit(100_000),  # noqa: PLW1509  # not even one group fits
        check=False,
    )
    err = " ".join(result.stderr.decode().split())
    assert result.returncode == 2, err
    assert "Traceback" not in err
    stopped = min(second, publisher_module.COMMIT_EVENTS - 300)
    assert f"{then}:{stopped}: stopped: cannot write the spool in " in err
    assert f" {300 + stopped} valid events read up to this line were neither sent " in err
    assert f"then publish {first} again from line 2 on, and the files after it: " in err


@pytest.mark.parametrize("ending", [b"", b"\n", b"\r\n"])
def test_a_line_too_long_to_keep_is_too_large_with_its_whole_size(
    ending: bytes,
    pub_settings: Settings,
    pub_simulation: Simulation,
    pub_producer: FakeProducer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Only the first bytes of a long line are kept, and its size is still told right;
    the lines after it are read as ever, from a file and from standard input."""
    valid = [m.value for m in pub_simulation.messages if m.kind.value == "event"][:2]
    data = valid[0] + b"\n" + b"x" * 3_000_000 + ending + valid[1] + b"\n"
    path = tmp_path / "long.jsonl"
    path.write_bytes(data)
    expected = f"{{}}:2: too_large: 3000000 bytes is over the limit of {MAX_MESSAGE_BYTES} bytes"
    if not ending:  # the long line runs into the next event: one line of both
        expected = expected.replace("3000000", str(3_000_000 + len(valid[1])))
    for name in (str(path), "-"):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        assert publish_files(pub_settings, [name], show_progress=False) == EXIT_INVALID
        _out, err = capsys.readouterr()
        assert err.splitlines() == [expected.format("<stdin>" if name == "-" else path)]
    sent = 2 if ending else 1
    assert sorted(pub_producer.values()) == sorted(valid[:sent] * 2)


def test_a_file_with_no_line_break_is_not_read_whole_into_memory(
    pub_settings: Settings, tmp_path: Path
) -> None:
    """A 200 MB line (an export with old-Mac line ends, a JSON array on one line): the
    check's peak memory stays far below its size (676 MB for 300 MB, before)."""
    path = tmp_path / "one-line.json"
    with path.open("wb") as handle:
        for _ in range(200):
            handle.write(b"[" + b"1," * 500_000)
    measure = (
        "import resource, subprocess, sys; "
        "done = subprocess.run(sys.argv[1:], capture_output=True); "
        "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
        "sys.stderr.buffer.write(done.stderr)"
    )
    result = subprocess.run(
        [sys.executable, "-c", measure, str(EXNET), "publish", "--check", str(path)],
        env=pub_env(pub_settings),
        cwd=tmp_path,
        capture_output=True,
        timeout=300,
        check=True,
    )
    status, peak_kib = (int(x) for x in result.stdout.split())
    assert status == EXIT_INVALID
    assert result.stderr.decode().startswith(f"{path}:1: too_large: {200_000_200} bytes")
    assert peak_kib * 1024 < 100 * 2**20  # the file is 200 MB
