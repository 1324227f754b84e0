"""The operations endpoint: /views/<table> serves what the rollup last computed."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from exnet.httpserver import OpsServer
from exnet.metrics import Metrics
from streams.rollup import LiveViews


@pytest.fixture
def served() -> Iterator[tuple[OpsServer, LiveViews]]:
    live = LiveViews()
    server = OpsServer("127.0.0.1", 0, Metrics(), lambda: True, live)
    server.start()
    try:
        yield server, live
    finally:
        server.stop()


def _get(server: OpsServer, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as reply:  # noqa: S310  # local
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_views_are_served_once_the_rollup_computed_them(
    served: tuple[OpsServer, LiveViews],
) -> None:
    server, live = served
    status, body = _get(server, "/views/node_summary")
    assert status == 503 and "holds no rollup" in body["error"]

    rows: dict[tuple[str, ...], dict[str, Any]] = {
        ("node_summary", "N02"): {"node_id": "N02", "randomized": 2}
    }
    rows[("node_summary", "N01")] = {"node_id": "N01", "randomized": 5}
    live.update("node_summary", rows)
    status, body = _get(server, "/views/node_summary")
    assert status == 200
    assert body == [{"node_id": "N01", "randomized": 5}, {"node_id": "N02", "randomized": 2}]

    status, body = _get(server, "/views/no_such_view")
    assert status == 404 and "/views/node_summary" in body["views"]
    status, body = _get(server, "/views/")
    assert status == 200 and len(body["views"]) == 4

    live.clear()  # the rollup moved to another worker
    assert _get(server, "/views/node_summary")[0] == 503
