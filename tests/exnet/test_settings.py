"""The settings object refuses values that would end up in topic, group or database names."""

from __future__ import annotations

import logging

import pytest

from contracts.errors import ConfigError
from exnet.settings import load_settings
from sinks.client import server_login


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


@pytest.mark.parametrize("url", ["ftp://x", "localhost:8123", "clickhouse://h:9000"])
def test_a_clickhouse_url_of_another_scheme_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="EXNET_CLICKHOUSE_URL: .*must be chdb:///path, or http"):
        load_settings(clickhouse_url=url)


@pytest.mark.parametrize("url", ["chdb:///tmp/x", "http://u:p@h:8123", "HTTPS://h:8443"])
def test_a_clickhouse_url_of_the_spec_s_schemes_is_taken(url: str) -> None:
    settings = load_settings(clickhouse_url=url)
    assert settings.clickhouse_dsn == url


@pytest.mark.parametrize("value", ["garbage", "127.0.0.1", "h:0", "h:65536", "h:9092,", "h 1:9092"])
def test_a_kafka_bootstrap_that_names_no_broker_is_refused(value: str) -> None:
    """Not taken for a broker that does not answer (a site's events spooled for a typo)."""
    with pytest.raises(ConfigError, match="EXNET_KAFKA_BOOTSTRAP: "):
        load_settings(kafka_bootstrap=value)


@pytest.mark.parametrize(
    "value", ["127.0.0.1:9092", "a:1, b.example.org:9093", "[::1]:9092", "kafka-0.svc:65535"]
)
def test_a_kafka_bootstrap_of_host_port_pairs_is_taken(value: str) -> None:
    assert load_settings(kafka_bootstrap=value).kafka_bootstrap == value


@pytest.mark.parametrize(("value", "level"), [("debug", "DEBUG"), ("Warning", "WARNING")])
def test_a_log_level_is_taken_in_any_case(
    monkeypatch: pytest.MonkeyPatch, value: str, level: str
) -> None:
    """``EXNET_LOG_LEVEL=debug`` passed the settings, then stopped the process as
    logging was set up (logging knows only upper-case names)."""
    monkeypatch.setenv("EXNET_LOG_LEVEL", value)
    settings = load_settings()
    assert settings.log_level == level
    assert logging.getLevelName(settings.log_level) == getattr(logging, level)


def test_a_log_level_python_does_not_know_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXNET_LOG_LEVEL", "verbose")
    with pytest.raises(ConfigError, match="EXNET_LOG_LEVEL: "):
        load_settings()


@pytest.mark.parametrize(
    "url",
    [
        "http://default:Zm9v/YmFy@clickhouse.example:8123",
        "https://default:ab?cd@clickhouse.example:8443",
        "http://default:ab#cd@clickhouse.example:8123",
        "http://default:12/34@clickhouse.example:8123",
    ],
)
def test_a_clickhouse_url_whose_password_cuts_it_short_is_refused_unquoted(url: str) -> None:
    """A password's '/' was read as the end of the host and its start as the port: a
    traceback printed that start (an outside security review)."""
    password = url.partition("default:")[2].rpartition("@")[0]
    with pytest.raises(ConfigError, match="percent-encoded") as refused:
        load_settings(clickhouse_url=url)
    assert password not in str(refused.value)
    assert password.split("/")[0].split("?")[0].split("#")[0] not in str(refused.value)


def test_a_percent_encoded_clickhouse_password_is_decoded_for_the_login() -> None:
    settings = load_settings(clickhouse_url="http://an%40alyst:Zm9v%2FYmFy@ch.example:8123")
    assert server_login(settings.clickhouse_dsn) == {
        "host": "ch.example",
        "port": 8123,
        "username": "an@alyst",
        "password": "Zm9v/YmFy",
        "secure": False,
    }
    assert "Zm9v/YmFy" in settings.secrets and "Zm9v%2FYmFy" in settings.secrets
