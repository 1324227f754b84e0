"""The sites' side of exnet: publish validated events durably, or simulate a network."""

from producers.publisher import (
    Checker,
    FlushSummary,
    Publisher,
    PublishSummary,
    SetAside,
    connect_producer,
    flush_spool,
    producer_config,
    spool_of,
)
from producers.simulate import (
    DEFAULT_INVALID_KINDS,
    DEFAULT_PARTICIPANTS,
    DEFAULT_SEED,
    INVALID_KINDS,
    MessageKind,
    SimMessage,
    Simulation,
    SimulationConfig,
    SimulationResult,
    generate,
    simulate,
)
from producers.spool import Spool, SpooledEvent, SpoolStatus, SpoolWriteError

__all__ = [
    "Checker",
    "DEFAULT_INVALID_KINDS",
    "DEFAULT_PARTICIPANTS",
    "DEFAULT_SEED",
    "INVALID_KINDS",
    "FlushSummary",
    "MessageKind",
    "PublishSummary",
    "Publisher",
    "SetAside",
    "SimMessage",
    "Simulation",
    "SimulationConfig",
    "SimulationResult",
    "Spool",
    "SpoolStatus",
    "SpoolWriteError",
    "SpooledEvent",
    "connect_producer",
    "flush_spool",
    "generate",
    "producer_config",
    "simulate",
    "spool_of",
]
