"""exnet's contracts with the sites: events, topics, reasons, registry, validation, views."""

from contracts.assay import AssayV1
from contracts.assessment import INSTRUMENT_MAX, REMISSION_MAX, AssessmentV1
from contracts.enrollment import EnrollmentV1
from contracts.envelope import EventBase
from contracts.reasons import Reason
from contracts.registry import NetworkRegistry, Node, Site, load_registry
from contracts.session import SessionV1
from contracts.topics import INPUT_TOPICS, Topic, TopicSpec, topic_name
from contracts.units import ANALYTE_UNITS, CANONICAL_UNIT, to_canonical
from contracts.validation import (
    EVENT_MODELS,
    FUTURE_TOLERANCE,
    MAX_MESSAGE_BYTES,
    SCHEMAS,
    Accepted,
    FieldIssue,
    Origin,
    Outcome,
    Rejected,
    Validator,
    event_id_named_in,
    site_named_in,
)
from contracts.views import Views, compute_views

__all__ = [
    "ANALYTE_UNITS",
    "CANONICAL_UNIT",
    "EVENT_MODELS",
    "FUTURE_TOLERANCE",
    "INPUT_TOPICS",
    "INSTRUMENT_MAX",
    "MAX_MESSAGE_BYTES",
    "REMISSION_MAX",
    "SCHEMAS",
    "Accepted",
    "AssayV1",
    "AssessmentV1",
    "EnrollmentV1",
    "EventBase",
    "FieldIssue",
    "NetworkRegistry",
    "Node",
    "Origin",
    "Outcome",
    "Reason",
    "Rejected",
    "SessionV1",
    "Site",
    "Topic",
    "TopicSpec",
    "Validator",
    "Views",
    "compute_views",
    "load_registry",
    "event_id_named_in",
    "site_named_in",
    "to_canonical",
    "topic_name",
]
