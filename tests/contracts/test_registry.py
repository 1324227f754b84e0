"""The network registry file (SPEC §3): the demo loads; every mistake is a clear ConfigError."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import orjson
import pytest

from contracts import Accepted, NetworkRegistry, Origin, Rejected, Validator, load_registry
from contracts.errors import ConfigError, UserError
from contracts.registry import DEMO_REGISTRY


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "registry.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _error(tmp_path: Path, text: str) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_registry(path)
    message = str(info.value)
    assert str(path) in message, "the message names the file"
    return message


def test_demo_registry_loads() -> None:
    registry = load_registry(DEMO_REGISTRY)
    assert isinstance(registry, NetworkRegistry)
    assert [node.id for node in registry.nodes] == ["N01", "N02", "N03"]
    assert len(registry.sites()) == 8
    assert all(site.id.startswith(node_id + "-") for node_id, site in registry.sites())
    assert registry.site_problem("N01", "N01-S01") is None
    assert registry.site_problem("N02", "N01-S01") == (
        "site_id",
        "site 'N01-S01' is registered under node 'N01', not 'N02'",
    )
    assert registry.site_problem("N09", "N01-S01") == ("node_id", "node 'N09' is not registered")
    assert registry.site_problem("N01", "N01-S09") == (
        "site_id",
        "site 'N01-S09' is not registered",
    )
    assert registry.node_of_site["N03-S03"] == "N03"
    with pytest.raises(TypeError):
        registry.node_of_site["N09-S01"] = "N09"  # type: ignore[index]


def test_the_spec_example_loads(tmp_path: Path) -> None:
    """SPEC §3's example, every key of it: the earliest date, the primary endpoint, a
    site's IANA time zone."""
    registry = load_registry(
        _write(
            tmp_path,
            "earliest_date: 2000-01-01\n"
            "primary_endpoint: {instrument: HAMD17, week: 12}\n"
            "nodes:\n"
            "  - id: N01\n"
            "    name: Example Academic Medical Center\n"
            "    sites:\n"
            "      - {id: N01-S01, name: Downtown Clinic, timezone: America/Chicago}\n",
        )
    )
    assert [(node_id, s.id, s.name, s.timezone) for node_id, s in registry.sites()] == [
        ("N01", "N01-S01", "Downtown Clinic", "America/Chicago")
    ]
    assert registry.primary_endpoint is not None
    assert (registry.primary_endpoint.instrument, registry.primary_endpoint.week) == ("HAMD17", 12)


def test_time_zones_and_endpoints_are_checked(tmp_path: Path) -> None:
    site = "nodes:\n  - id: N01\n    name: A\n    sites:\n      - {id: N01-S01, name: x, %s}\n"
    message = _error(tmp_path, site % "timezone: America/Chicgo")
    assert message.endswith(
        "nodes.0.sites.0.timezone: 'America/Chicgo' is not an IANA time zone "
        "(such as America/Chicago or Europe/Berlin)"
    )
    nodes = "nodes:\n  - {id: N01, name: A}\n"
    message = _error(tmp_path, "primary_endpoint: {instrument: HAMD-17, week: 12}\n" + nodes)
    assert (
        "primary_endpoint.instrument: Input should be 'PHQ9', 'HAMD17', 'MADRS' or 'BDI2'"
        in message
    )
    message = _error(tmp_path, "primary_endpoint: {instrument: HAMD17, week: 0}\n" + nodes)
    assert "primary_endpoint.week: Input should be greater than or equal to 1" in message
    assert load_registry(_write(tmp_path, nodes)).primary_endpoint is None
    # The thresholds: SPEC §1's by default, the protocol's when it names them.
    text = "primary_endpoint: {instrument: MADRS, week: 8, %s}\n" + nodes
    endpoint = load_registry(_write(tmp_path, text % "remission_max: 12")).primary_endpoint
    assert endpoint is not None
    assert (endpoint.response_reduction_pct, endpoint.remission_threshold) == (50, 12)
    message = _error(tmp_path, text % "remission_max: 61")
    assert "remission_max 61 is above MADRS's highest score, 60" in message
    message = _error(tmp_path, text % "response_reduction_pct: 0")
    assert (
        "primary_endpoint.response_reduction_pct: Input should be greater than or equal to 1"
        in message
    )


def test_a_node_without_sites_is_allowed(tmp_path: Path) -> None:
    registry = load_registry(_write(tmp_path, "nodes:\n  - {id: N01, name: A}\n"))
    assert registry.sites() == []
    assert registry.site_problem("N01", "N01-S01") == (
        "site_id",
        "site 'N01-S01' is not registered",
    )


def test_bad_yaml(tmp_path: Path) -> None:
    message = _error(tmp_path, "nodes:\n  - id: N01\n    sites: [{id: N01-S01, name: x}\n")
    assert "is not valid YAML" in message
    assert "line" in message


def test_unknown_key(tmp_path: Path) -> None:
    message = _error(
        tmp_path,
        "nodes:\n  - id: N01\n    name: A\n    sites:\n"
        "      - {id: N01-S01, name: x, colour: red}\n",
    )
    assert message.endswith("is invalid: nodes.0.sites.0.colour: Extra inputs are not permitted")


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = _error(tmp_path, "nodez: []\n")
    assert "nodes: Field required" in message
    assert "nodez: Extra inputs are not permitted" in message


def test_duplicate_node(tmp_path: Path) -> None:
    message = _error(tmp_path, "nodes:\n  - {id: N01, name: A}\n  - {id: N01, name: B}\n")
    assert message.endswith("is invalid: nodes.1.id: 'N01' is listed twice (first at nodes.0.id)")


def test_duplicate_site_across_nodes(tmp_path: Path) -> None:
    message = _error(
        tmp_path,
        "nodes:\n"
        "  - {id: N01, name: A, sites: [{id: N01-S01, name: x}]}\n"
        "  - {id: N02, name: B, sites: [{id: N02-S01, name: y}, {id: N01-S01, name: z}]}\n",
    )
    assert message.endswith(
        "nodes.1.sites.1.id: 'N01-S01' is listed twice (first at nodes.0.sites.0.id)"
    )


@pytest.mark.parametrize(
    ("text", "path", "pattern"),
    [
        ("nodes:\n  - {id: n01, name: A}\n", "nodes.0.id", "^[A-Z][A-Z0-9]{1,15}$"),
        ("nodes:\n  - {id: N, name: A}\n", "nodes.0.id", "^[A-Z][A-Z0-9]{1,15}$"),
        (
            "nodes:\n  - {id: N01, name: A, sites: [{id: N01_S01, name: x}]}\n",
            "nodes.0.sites.0.id",
            "^[A-Z][A-Z0-9]{1,15}-[A-Z0-9]{1,15}$",
        ),
    ],
)
def test_bad_id_pattern(tmp_path: Path, text: str, path: str, pattern: str) -> None:
    message = _error(tmp_path, text)
    assert f"{path}: String should match pattern '{pattern}'" in message


def test_id_that_yaml_reads_as_a_number(tmp_path: Path) -> None:
    message = _error(tmp_path, "nodes:\n  - {id: 12, name: A}\n")
    assert "nodes.0.id: Input should be a valid string" in message


@pytest.mark.parametrize(
    ("text", "found"), [("", "nothing"), ("- 1\n", "a YAML list"), ("just text\n", "a YAML str")]
)
def test_not_a_mapping(tmp_path: Path, text: str, found: str) -> None:
    message = _error(tmp_path, text)
    assert message.endswith(
        f"is invalid: it must be a mapping with a 'nodes' list (SPEC §3), not {found}"
    )


def test_missing_name(tmp_path: Path) -> None:
    assert "nodes.0.name: Field required" in _error(tmp_path, "nodes:\n  - {id: N01}\n")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the network registry .*: No such file"):
        load_registry(tmp_path / "nowhere.yaml")


def test_config_error_is_a_user_error() -> None:
    assert issubclass(ConfigError, UserError)  # the CLI prints it without a traceback


_ONE_SITE = """\
nodes:
  - id: N01
    name: Example Academic Medical Center
    sites:
      - {id: N01-S01, name: Downtown Clinic}
"""


def _session(occurred_at: str, **changes: object) -> bytes:
    return orjson.dumps(
        {
            "schema": "session/1",
            "event_id": "c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f",
            "occurred_at": occurred_at,
            "node_id": "N01",
            "site_id": "N01-S01",
            "participant_id": "P-0123456789",
            "session_number": 1,
            "status": "missed",
            "modality": "aerobic",
            "supervised": True,
            **changes,
        }
    )


def test_the_earliest_date_defaults_to_2000_and_a_registry_may_set_it(tmp_path: Path) -> None:
    assert load_registry(_write(tmp_path, _ONE_SITE)).earliest_date == date(2000, 1, 1)
    later = load_registry(_write(tmp_path, "earliest_date: 2024-06-01\n" + _ONE_SITE))
    assert later.earliest_date == date(2024, 6, 1)
    validator = Validator(later, clock=lambda: datetime(2026, 1, 1, tzinfo=UTC))
    origin = Origin("exnet.session", 0, 0)
    key = b"P-0123456789"
    assert isinstance(
        validator.validate_message(_session("2024-06-01T00:00:00Z"), key, origin), Accepted
    )
    early = validator.validate_message(_session("2024-05-31T23:59:59Z"), key, origin)
    assert isinstance(early, Rejected) and early.reason.value == "invalid_field"
    assert [issue.path for issue in early.issues] == ["occurred_at"]
    assert "before 2024-06-01" in early.issues[0].message
    # With another field failing too, the detail still names every failing path.
    both = validator.validate_message(_session("2024-05-31T08:00:00Z", rpe=99), key, origin)
    assert isinstance(both, Rejected) and both.reason.value == "invalid_field"
    assert sorted(issue.path for issue in both.issues) == ["occurred_at", "rpe"]


def test_an_earliest_date_that_is_no_date_is_a_clear_error(tmp_path: Path) -> None:
    message = _error(tmp_path, "earliest_date: soon\n" + _ONE_SITE)
    assert "earliest_date" in message


@pytest.mark.parametrize("node", ["NO", "ON", "OFF", "YES"])
def test_ids_that_yaml_1_1_reads_as_booleans_read_as_written(tmp_path: Path, node: str) -> None:
    """Norway's or Ontario's node: YAML 1.2 booleans only (true, false)."""
    path = tmp_path / "registry.yaml"
    path.write_text(f"nodes:\n  - id: {node}1\n    name: A\n  - id: {node}\n    name: B\n")
    assert [n.id for n in load_registry(path).nodes] == [f"{node}1", node]


@pytest.mark.parametrize("word", ["TRUE", "false", "NULL", "~"])
def test_an_id_yaml_reads_as_true_false_or_null_says_to_quote_it(tmp_path: Path, word: str) -> None:
    message = _error(tmp_path, f"nodes:\n  - {{id: {word}, name: A}}\n")
    assert message.endswith(
        "nodes.0.id: Input should be a valid string "
        "(YAML read the unquoted value as true, false or null: quote it)"
    )
