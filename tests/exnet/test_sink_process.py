"""``exnet up`` (role auto) asks its writer process for metrics and readiness at each
scrape: a writer that breaks off its answer (it is stopping) must not break the scrape."""

from __future__ import annotations

import logging
import os
import socketserver
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from prometheus_client.parser import text_string_to_metric_families

import exnet.runner
from exnet.httpserver import OpsServer
from exnet.metrics import Metrics
from exnet.runner import _SinkProcess
from exnet.settings import Settings
from sinks.errors import DatabaseLocked
from tests.sinks.test_clickhouse import _HOLD

if TYPE_CHECKING:
    from tests.conftest import SettingsFactory

#: What a stopping writer sent: the headers of a full /metrics reply, then nothing
#: (http.client.IncompleteRead: 0 bytes read, 13744 more expected).
TRUNCATED = (
    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
    b"Content-Length: 13744\r\n\r\n# HELP exnet_sink_rows_written_total"
)
#: A reply that is not HTTP at all (http.client.BadStatusLine).
NOT_HTTP = b"\x00\x01 closing\r\n"


@pytest.fixture(
    params=[(TRUNCATED, True), (NOT_HTTP, False)], ids=["truncated_body", "bad_status_line"]
)
def breaking_child(request: pytest.FixtureRequest) -> Iterator[tuple[int, bool]]:
    """A loopback port whose server reads a request, sends a broken reply and closes;
    and whether that reply says ready (its status line does, or not)."""
    reply: bytes = request.param[0]

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # the request line and headers
            self.wfile.write(reply)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield server.server_address[1], request.param[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_child_breaking_off_its_answer_leaves_the_parent_s_metrics_served(
    breaking_child: tuple[int, bool],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The child's loopback port: the breaking server's (the child is never started).
    port, says_ready = breaking_child
    monkeypatch.setattr(exnet.runner, "_free_port", lambda host: port)
    child = _SinkProcess(Settings(var_dir=tmp_path), on_exit=lambda: None)
    assert child.metrics() is None
    assert child.ready() is says_ready  # /readyz's status line is all it reads

    # As run_up wires them: readiness evaluated in each scrape, the child's metrics merged.
    metrics = Metrics()
    metrics.ready.set_function(lambda: 1.0 if child.ready() else 0.0)
    metrics.sink_rows_written.labels("facts").inc(3)  # the parent's own
    ops = OpsServer("127.0.0.1", 0, metrics, lambda: True, child_metrics=child.metrics)
    ops.start()
    try:
        url = f"http://127.0.0.1:{ops.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310  # local
            status, text = reply.status, reply.read().decode()
    finally:
        ops.stop()
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("exnet_ready", ())] == (1.0 if says_ready else 0.0)
    assert samples[("exnet_sink_rows_written_total", (("table", "facts"),))] == 3.0
    assert "Traceback" not in capsys.readouterr().err  # http.server prints handlers' errors


@pytest.mark.parametrize(
    ("child_code", "failed"),
    [
        # A SIGTERM to the process group that reaches the writer before its handler.
        ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", False),
        ("raise SystemExit(3)", True),
    ],
    ids=["stopped_by_the_group_s_sigterm", "failed"],
)
def test_a_writer_stopped_by_a_signal_while_it_starts_is_no_failure(
    child_code: str, failed: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(
        exnet.runner, "WRITER_PROCESS_CODE", f"import sys; sys.stdin.buffer.read(); {child_code}"
    )
    exited = threading.Event()
    child = _SinkProcess(Settings(var_dir=tmp_path), on_exit=exited.set)
    child.start()
    assert exited.wait(30)  # the parent stops when its writer does, either way
    assert child.failed is failed


@pytest.mark.clickhouse
def test_a_sink_role_that_finds_the_database_held_gives_up_in_one_line(
    settings_factory: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # `exnet up --role sink` beside a writing `exnet up` gave up after 30 s with "the sink
    # stopped with an error", a three-level traceback and chDB's "Error initializing
    # EmbeddedServer", its hint meant for analysts (an outside reviewer's find, 2026-12-05).
    settings = settings_factory()
    env = {**os.environ, "EXNET_VAR_DIR": str(settings.var_dir)}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline() == b"held\n"
        monkeypatch.setattr(exnet.runner, "LOCKED_WAIT_S", 0.5)
        failed = threading.Event()
        role = exnet.runner._SinkRole(settings, Metrics(), standby=False, on_error=failed.set)
        with caplog.at_level(logging.ERROR, logger="exnet.runner"):
            role.start()
            role.join(timeout=60)
        assert failed.is_set() and isinstance(role.error, DatabaseLocked)
        (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert record.exc_info is None  # no traceback: not a bug
        message = record.getMessage()
        assert "another `exnet up` writing to it" in message and "--role stream" in message
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
