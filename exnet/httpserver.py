"""Every long-running exnet process serves ``/metrics``, ``/healthz``, ``/readyz`` and ``/views/``.

``/views/<table>`` (``node_summary``, ``network_summary``, ``arm_summary``,
``node_daily``): the rows this process's rollup stage last computed, as a JSON
array (the rows it sends to ``exnet.views`` and the sink writes to the table of
that name, deleted rows left out, without the ``version`` and ``is_deleted``
columns that only order versions in ClickHouse), sorted by key. 503 with
``{"error": ...}`` from a process whose workers do not hold the rollup (one
worker in the group does) or before its first batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from contracts.views import VIEW_KEYS
from exnet.metrics import Metrics, merged_exposition
from exnet.settings import SHUTDOWN_POLL_S
from streams.rollup import LiveViews

__all__ = ["OpsServer"]

log = logging.getLogger(__name__)


class OpsServer:
    """The operations endpoint: metrics, liveness, readiness, live views.

    ``child_metrics``: the ``/metrics`` text of a child process whose metrics this
    endpoint serves as its own (merged), or None while it has none.
    """

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        ready: Callable[[], bool],
        views: LiveViews | None = None,
        child_metrics: Callable[[], str | None] | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._metrics = metrics
        self._ready = ready
        self._views = views
        self._child_metrics = child_metrics
        self._server: ThreadingHTTPServer | None = None

    def exposition(self) -> bytes:
        """The ``/metrics`` reply: this process's metrics, and its child's if any."""
        child = self._child_metrics() if self._child_metrics is not None else None
        if child is None:
            return generate_latest(self._metrics.registry)
        return merged_exposition(self._metrics.registry, child)

    @property
    def port(self) -> int | None:
        return self._server.server_address[1] if self._server is not None else None

    def start(self) -> None:
        ops = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  # http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(HTTPStatus.OK, ops.exposition(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._reply(HTTPStatus.OK, b"ok\n")
                elif path == "/readyz":
                    ready = ops._ready()
                    self._reply(
                        HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE,
                        b"ready\n" if ready else b"not ready\n",
                    )
                elif path.startswith("/views"):
                    self._reply(*ops._view(path.removeprefix("/views").strip("/")))
                else:
                    self._reply(
                        HTTPStatus.NOT_FOUND, b"try /metrics, /healthz, /readyz or /views/\n"
                    )

            def _reply(
                self,
                status: HTTPStatus,
                body: bytes,
                content_type: str = "text/plain; charset=utf-8",
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # scrapes every few seconds would drown the log

        try:
            server = ThreadingHTTPServer((self._host, self._port), Handler)
        except OSError as exc:
            # Several workers on one machine with the same settings: keep going on a free
            # port rather than fail, and say where.
            server = ThreadingHTTPServer((self._host, 0), Handler)
            log.warning(
                "metrics port %d is taken (%s); serving /metrics on port %d instead",
                self._port,
                exc.strerror,
                server.server_address[1],
            )
        self._server = server
        threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": SHUTDOWN_POLL_S},
            name="exnet-ops",
            daemon=True,
        ).start()
        log.info("serving /metrics, /healthz, /readyz, /views/ on %s:%d", self._host, self.port)

    def _view(self, table: str) -> tuple[HTTPStatus, bytes, str]:
        """The reply to ``/views/<table>``: status, JSON body, content type."""
        kind = "application/json"
        if table not in VIEW_KEYS:
            known = {"views": [f"/views/{name}" for name in VIEW_KEYS]}
            status = HTTPStatus.OK if not table else HTTPStatus.NOT_FOUND
            return status, orjson.dumps(known), kind
        rows = self._views.rows(table) if self._views is not None else None
        if rows is None:
            error = (
                "this process holds no rollup: another exnet worker's does (the one "
                "assigned the contributions partition), or it has not computed a batch yet"
            )
            return HTTPStatus.SERVICE_UNAVAILABLE, orjson.dumps({"error": error}), kind
        return HTTPStatus.OK, orjson.dumps(rows), kind

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
