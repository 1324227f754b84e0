"""The network registry: which nodes exist and which sites sit under each (SPEC §3)."""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Final

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from contracts.assessment import INSTRUMENT_MAX, REMISSION_MAX, Instrument
from contracts.envelope import NodeId, SiteId
from contracts.errors import ConfigError

__all__ = [
    "ANY_LATER_WEEK",
    "DEFAULT_EARLIEST_DATE",
    "DEMO_REGISTRY",
    "NetworkRegistry",
    "Node",
    "PrimaryEndpoint",
    "Site",
    "load_registry",
    "outcome_definition",
]

#: The day before which no event can have happened, unless the registry says (SPEC §1, §3).
DEFAULT_EARLIEST_DATE: Final = date(2000, 1, 1)
#: The demo network registry shipped with exnet (SPEC §3).
DEMO_REGISTRY = Path(__file__).parent / "demo_registry.yaml"

_Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]


def _iana_zone(name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise PydanticCustomError(
            "unknown_time_zone",
            "'{name}' is not an IANA time zone (such as America/Chicago or Europe/Berlin)",
            {"name": name},
        ) from None
    return name


#: An IANA time zone name, checked against the system's zone database.
TimeZone = Annotated[str, AfterValidator(_iana_zone)]


class Site(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: SiteId
    name: _Name
    #: The site's IANA time zone: where its local dates fall (SPEC §3). None: unknown.
    timezone: TimeZone | None = None


class PrimaryEndpoint(BaseModel):
    """The protocol's primary endpoint: response and remission on this instrument at this
    week (SPEC §3). Without one, any instrument at any later week counts (SPEC §1).

    The thresholds default to SPEC §1's: a response is a score at most half the
    baseline (``response_reduction_pct`` 50: at least a 50 % reduction); remission
    a score within the instrument's :data:`~contracts.assessment.REMISSION_MAX`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    instrument: Instrument
    week: Annotated[int, Field(ge=1, le=104)]
    #: Response: a score at most (100 - this) % of the baseline's (whole percent: exact).
    response_reduction_pct: Annotated[int, Field(ge=1, le=100)] = 50
    #: Remission: a score at most this (None: the instrument's SPEC §1 threshold).
    remission_max: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _within_the_instruments_range(self) -> PrimaryEndpoint:
        top = INSTRUMENT_MAX[self.instrument]
        if self.remission_max is not None and self.remission_max > top:
            raise PydanticCustomError(
                "remission_max_out_of_range",
                "remission_max {value} is above {instrument}'s highest score, {top}",
                {"value": self.remission_max, "instrument": self.instrument, "top": top},
            )
        return self

    @property
    def remission_threshold(self) -> int:
        return (
            self.remission_max if self.remission_max is not None else REMISSION_MAX[self.instrument]
        )

    def counts(self, instrument: str, week: int) -> bool:
        """Whether a rating of ``instrument`` at ``week`` is the endpoint's."""
        return instrument == self.instrument and week == self.week

    def describe(self) -> str:
        """The definition in words, for the report and the docs."""
        return (
            f"{self.instrument} at week {self.week} (the registry's primary endpoint): "
            f"response = at least a {self.response_reduction_pct} % reduction from the "
            f"week-0 {self.instrument} score; remission = a score of at most "
            f"{self.remission_threshold}"
        )


#: SPEC §1's outcome definition, when the registry names no primary endpoint.
ANY_LATER_WEEK: Final = (
    "any instrument at any later week (no primary endpoint in the registry): response = a "
    "score at most half the week-0 score on the same instrument; remission = PHQ9 < 5, "
    "HAMD17 <= 7, MADRS <= 10 or BDI2 <= 13"
)


def outcome_definition(endpoint: PrimaryEndpoint | None) -> str:
    """How responders and remitters were counted, in words."""
    return endpoint.describe() if endpoint is not None else ANY_LATER_WEEK


class Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: NodeId
    name: _Name
    sites: tuple[Site, ...] = ()


class _RegistryFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: No event of this network happened before this day (UTC; SPEC §3).
    earliest_date: date = DEFAULT_EARLIEST_DATE
    primary_endpoint: PrimaryEndpoint | None = None
    nodes: tuple[Node, ...]

    @model_validator(mode="after")
    def _unique_ids(self) -> _RegistryFile:
        first_seen: dict[str, str] = {}  # id -> where it first appears
        problems: list[str] = []
        for n, node in enumerate(self.nodes):
            places = [(node.id, f"nodes.{n}.id")]
            places += [(site.id, f"nodes.{n}.sites.{m}.id") for m, site in enumerate(node.sites)]
            for identity, place in places:
                if identity in first_seen:
                    problems.append(
                        f"{place}: {identity!r} is listed twice (first at {first_seen[identity]})"
                    )
                else:
                    first_seen[identity] = place
        if problems:
            raise PydanticCustomError("duplicate_id", "; ".join(problems))
        return self


class NetworkRegistry:
    """Registered nodes and sites, with constant-time look-ups. Immutable."""

    __slots__ = ("_node_ids", "_node_of_site", "earliest_date", "nodes", "primary_endpoint")

    def __init__(
        self,
        nodes: tuple[Node, ...],
        earliest_date: date = DEFAULT_EARLIEST_DATE,
        primary_endpoint: PrimaryEndpoint | None = None,
    ) -> None:
        self.nodes = nodes
        self.earliest_date = earliest_date
        self.primary_endpoint = primary_endpoint
        self._node_ids = frozenset(node.id for node in nodes)
        self._node_of_site = {site.id: node.id for node in nodes for site in node.sites}

    @property
    def node_of_site(self) -> Mapping[str, str]:
        """site_id -> the node_id it is registered under (read-only)."""
        return MappingProxyType(self._node_of_site)

    def site_problem(self, node_id: str, site_id: str) -> tuple[str, str] | None:
        """None when ``site_id`` is registered under ``node_id``, else (field path, message)."""
        if node_id not in self._node_ids:
            return "node_id", f"node {node_id!r} is not registered"
        registered_under = self._node_of_site.get(site_id)
        if registered_under is None:
            return "site_id", f"site {site_id!r} is not registered"
        if registered_under != node_id:
            return (
                "site_id",
                f"site {site_id!r} is registered under node {registered_under!r}, not {node_id!r}",
            )
        return None

    def sites(self) -> list[tuple[str, Site]]:
        """Every (node_id, site) pair, in file order."""
        return [(node.id, site) for node in self.nodes for site in node.sites]


class _Yaml12Booleans(yaml.SafeLoader):
    """PyYAML's safe loader, but booleans as YAML 1.2 spells them (``true``,
    ``false``): YAML 1.1's ``yes``, ``no``, ``on``, ``off`` stay strings, so node ids
    such as ``NO`` (Norway) or ``ON`` (Ontario) read as written."""


_Yaml12Booleans.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Booleans.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _problem(error: Any) -> str:
    where = ".".join(str(p) for p in error["loc"])
    message = f"{where}: {error['msg']}" if where else error["msg"]
    if (
        error["loc"]
        and error["loc"][-1] in ("id", "name")
        and not isinstance(error.get("input"), str | dict | list)
    ):
        message += " (YAML read the unquoted value as true, false or null: quote it)"
    return message


def load_registry(path: Path) -> NetworkRegistry:
    """Read and check a registry file; any problem is a :class:`ConfigError` naming it."""
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Yaml12Booleans)  # noqa: S506  # a safe loader
    except OSError as exc:
        raise ConfigError(f"cannot read the network registry {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"the network registry {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        found = "nothing" if raw is None else f"a YAML {type(raw).__name__}"
        raise ConfigError(
            f"the network registry {path} is invalid: it must be a mapping with a "
            f"'nodes' list (SPEC §3), not {found}"
        )
    try:
        parsed = _RegistryFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors())
        raise ConfigError(f"the network registry {path} is invalid: {problems}") from None
    return NetworkRegistry(parsed.nodes, parsed.earliest_date, parsed.primary_endpoint)
