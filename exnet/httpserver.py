"""Every long-running exnet process serves ``/metrics``, ``/healthz`` and ``/readyz``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from exnet.metrics import Metrics

__all__ = ["OpsServer"]

log = logging.getLogger(__name__)


class OpsServer:
    """The operations endpoint: metrics, liveness, readiness."""

    def __init__(self, host: str, port: int, metrics: Metrics, ready: Callable[[], bool]) -> None:
        self._host = host
        self._port = port
        self._metrics = metrics
        self._ready = ready
        self._server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int | None:
        return self._server.server_address[1] if self._server is not None else None

    def start(self) -> None:
        ops = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  # http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(
                        HTTPStatus.OK, generate_latest(ops._metrics.registry), CONTENT_TYPE_LATEST
                    )
                elif path == "/healthz":
                    self._reply(HTTPStatus.OK, b"ok\n")
                elif path == "/readyz":
                    ready = ops._ready()
                    self._reply(
                        HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE,
                        b"ready\n" if ready else b"not ready\n",
                    )
                else:
                    self._reply(HTTPStatus.NOT_FOUND, b"try /metrics, /healthz or /readyz\n")

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
        threading.Thread(target=server.serve_forever, name="exnet-ops", daemon=True).start()
        log.info("serving /metrics, /healthz, /readyz on %s:%d", self._host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
