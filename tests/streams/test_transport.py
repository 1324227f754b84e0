"""The stream transport's commit rule: never commit past an offset not processed."""

from __future__ import annotations

import faust
import pytest
from faust.transport.drivers import TRANSPORTS

from streams.transport import SCHEME, Transport, first_unprocessed, register


@pytest.mark.parametrize(
    ("committed", "given_out", "beginning", "first"),
    [
        (None, None, 0, 0),  # nothing committed: the partition's beginning
        (None, None, 40, 40),  # ... which retention may have moved
        (0, None, 0, 0),  # Faust reads a committed 0 as "nothing"
        (12, None, None, 12),  # the committed offset
        (12, 30, None, 30),  # an offset given out for a commit that did not land yet
        (None, 30, 0, 30),
        (30, 12, None, 30),  # a commit from before a seek never goes back
        (None, None, None, None),  # unknown: Faust's own rule applies
    ],
)
def test_first_unprocessed(
    committed: int | None, given_out: int | None, beginning: int | None, first: int | None
) -> None:
    assert first_unprocessed(committed, given_out, beginning) == first


def test_the_scheme_selects_the_transport() -> None:
    register(TRANSPORTS)
    register(TRANSPORTS)  # idempotent
    assert TRANSPORTS.by_url(f"{SCHEME}://127.0.0.1:9092") is Transport
    app = faust.App("exnet-test-transport", broker=f"{SCHEME}://127.0.0.1:9092")
    assert type(app.transport) is Transport
    assert type(app.consumer).__module__ == "streams.transport"
