"""`exnet up`'s stop flag: what it logs when asked to stop."""

from __future__ import annotations

import logging
import signal

import pytest

from exnet.runner import _StopFlag


def test_only_a_stop_from_outside_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    # A stop asked inside the process (a drain done) reaches the Faust worker as the
    # process's own SIGTERM: "signal 15: stopping" after a drain that ended by itself
    # misled an outside reviewer (2026-12-05).
    with caplog.at_level(logging.INFO, logger="exnet.runner"):
        drained = _StopFlag()
        drained.request()
        drained._on_signal(signal.SIGTERM, None)
        assert drained.event.is_set()
        assert not [r for r in caplog.records if "stopping" in r.getMessage()]

        told = _StopFlag()
        told._on_signal(signal.SIGTERM, None)
        told._on_signal(signal.SIGTERM, None)  # a second signal: once is enough
        assert told.event.is_set()
        assert [r.getMessage() for r in caplog.records] == ["signal 15: stopping"]
