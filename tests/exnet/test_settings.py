"""The settings object refuses values that would end up in topic, group or database names."""

from __future__ import annotations

import pytest

from contracts.errors import ConfigError
from exnet.settings import load_settings


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("topic_prefix", "lab7.\n"),  # Python's `$` matches before a final newline
        ("topic_prefix", "lab 7."),
        ("consumer_group", "exnet\n"),
        ("clickhouse_database", "exnet\n"),
        ("clickhouse_database", "exnet; DROP TABLE x"),
    ],
)
def test_a_name_setting_refuses_what_is_not_a_plain_name(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"EXNET_{name.upper()}"):
        load_settings(**{name: value})


def test_plain_names_are_taken() -> None:
    settings = load_settings(
        topic_prefix="lab7.", consumer_group="exnet_2", clickhouse_database="a"
    )
    assert (settings.topic_prefix, settings.consumer_group) == ("lab7.", "exnet_2")
