"""The dedup rule: new, replay, duplicate, conflict; and what the table remembers."""

from __future__ import annotations

import pytest

from contracts import Origin
from streams.dedup import Decision, Seen, SeenTable, decide, remember

FIRST = Seen("f" * 32, Origin("exnet.session", 2, 40))


def test_first_sight_is_new() -> None:
    assert decide(None, FIRST) is Decision.NEW


def test_the_same_source_message_again_is_a_replay_not_a_duplicate() -> None:
    assert decide(FIRST, Seen("f" * 32, Origin("exnet.session", 2, 40))) is Decision.REPLAY


@pytest.mark.parametrize(
    "other",
    [
        Origin("exnet.session", 2, 41),
        Origin("exnet.session", 3, 40),
        Origin("exnet.assay", 2, 40),
    ],
)
def test_another_message_with_the_same_content_is_a_duplicate(other: Origin) -> None:
    assert decide(FIRST, Seen("f" * 32, other)) is Decision.DUPLICATE


def test_another_message_with_other_content_is_a_conflict() -> None:
    assert decide(FIRST, Seen("e" * 32, Origin("exnet.session", 2, 99))) is Decision.CONFLICT


EVENT_ID = "0b9c5f1e-3a4d-4c8e-9f70-5d2b1a6c7e80"
KEY = bytes.fromhex(EVENT_ID.replace("-", ""))


def test_only_the_first_accepted_copy_is_remembered() -> None:
    table: dict[bytes, bytes] = {}
    layout = SeenTable()
    conflicting = Seen("e" * 32, Origin("exnet.session", 2, 99))
    duplicate = Seen("f" * 32, Origin("exnet.assay", 0, 7))
    assert remember(table, layout, EVENT_ID, FIRST) == (Decision.NEW, None)
    # A conflict read again (a replay of its source message) stays a conflict: the
    # table still holds the first copy, not the conflicting one.
    assert remember(table, layout, EVENT_ID, conflicting) == (Decision.CONFLICT, FIRST)
    assert remember(table, layout, EVENT_ID, conflicting) == (Decision.CONFLICT, FIRST)
    assert remember(table, layout, EVENT_ID, duplicate) == (Decision.DUPLICATE, FIRST)
    assert remember(table, layout, EVENT_ID, duplicate) == (Decision.DUPLICATE, FIRST)
    assert table == {KEY: layout.encode(KEY, FIRST)}
    # ... so the first copy's own replay is still told from the others.
    assert remember(table, layout, EVENT_ID, FIRST) == (Decision.REPLAY, FIRST)


@pytest.mark.parametrize(
    "origin",
    [
        Origin("pre.fix.exnet.session", 5, 123456789),
        Origin("pre.fix.exnet.enrollment", 0, 0),
        Origin("pre.fix.exnet.assay", 2**31 - 1, 2**63 - 1),
        Origin("pre.fix.exnet.assessment", 11, 7),
        Origin("another.topic", 3, 40),  # not an input under the prefix: named in full
        Origin("exnet.session", 3, 40),  # nor is this, under another prefix
    ],
)
def test_the_table_holds_an_entry_in_16_byte_keys_and_29_byte_values(origin: Origin) -> None:
    layout = SeenTable("pre.fix.")
    seen = Seen("0123456789abcdef" * 2, origin)
    table: dict[bytes, bytes] = {}
    assert remember(table, layout, EVENT_ID, seen) == (Decision.NEW, None)
    ((key, value),) = table.items()
    assert key == KEY
    named = origin.topic.startswith("pre.fix.exnet.")
    assert len(value) == 29 + (0 if named else len(origin.topic))
    assert layout.decode(value) == seen
    assert remember(table, layout, EVENT_ID, seen) == (Decision.REPLAY, seen)


def test_an_entry_of_the_first_layout_is_still_read_and_never_written_again() -> None:
    """A deployment's changelog from before: key the event_id's text, value text."""
    prior = Seen("f" * 32, Origin("exnet.session", 2, 40))
    table = {EVENT_ID.encode(): b"f" * 32 + b"|exnet.session|2|40"}
    layout = SeenTable()
    assert remember(table, layout, EVENT_ID, prior) == (Decision.REPLAY, prior)
    other = Seen("f" * 32, Origin("exnet.session", 2, 41))
    assert remember(table, layout, EVENT_ID, other) == (Decision.DUPLICATE, prior)
    conflicting = Seen("e" * 32, Origin("exnet.session", 2, 42))
    assert remember(table, layout, EVENT_ID, conflicting) == (Decision.CONFLICT, prior)
    assert table == {EVENT_ID.encode(): b"f" * 32 + b"|exnet.session|2|40"}
    # A new event goes in the new layout beside it.
    assert remember(table, layout, EVENT_ID.replace("0b9c", "1b9c"), other)[0] is Decision.NEW
    assert len(table) == 2 and KEY.replace(b"\x0b\x9c", b"\x1b\x9c") in table


def test_an_event_id_that_is_not_a_uuid_is_kept_in_the_first_layout() -> None:
    table: dict[bytes, bytes] = {}
    layout = SeenTable()
    assert remember(table, layout, "not-a-uuid", FIRST) == (Decision.NEW, None)
    assert table == {b"not-a-uuid": b"f" * 32 + b"|exnet.session|2|40"}
    assert remember(table, layout, "not-a-uuid", FIRST) == (Decision.REPLAY, FIRST)
