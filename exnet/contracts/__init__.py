"""exnet's contracts with the sites: events, topics, reasons, registry, validation."""

from exnet.contracts.assay import AssayV1
from exnet.contracts.assessment import INSTRUMENT_MAX, REMISSION_MAX, AssessmentV1
from exnet.contracts.enrollment import EnrollmentV1
from exnet.contracts.envelope import EventBase
from exnet.contracts.reasons import Reason
from exnet.contracts.registry import NetworkRegistry, Node, Site, load_registry
from exnet.contracts.session import SessionV1
from exnet.contracts.topics import INPUT_TOPICS, Topic, TopicSpec, topic_name
from exnet.contracts.units import ANALYTE_UNITS, CANONICAL_UNIT, to_canonical
from exnet.contracts.validation import (
    EVENT_MODELS,
    FUTURE_TOLERANCE,
    MAX_MESSAGE_BYTES,
    SCHEMAS,
    Accepted,
    FieldIssue,
    Message,
    Origin,
    Outcome,
    Rejected,
    Validator,
)

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
    "Message",
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
    "load_registry",
    "to_canonical",
    "topic_name",
]
