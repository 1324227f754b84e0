"""Fixtures of the pipeline tests: an isolated deployment per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import SettingsFactory
from tests.pipeline.harness import Pipeline


@pytest.fixture
def pipeline(settings_factory: SettingsFactory) -> Iterator[Pipeline]:
    """A fresh deployment (3 partitions: quick to join, still several)."""
    deployment = Pipeline(settings_factory(partitions=3))
    yield deployment
    deployment.close()
