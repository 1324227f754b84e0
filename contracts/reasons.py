"""Validation outcomes and rejection reason codes (SPEC §2)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["REASON_ORDER", "Reason"]


class Reason(StrEnum):
    """Why a message was rejected. Checks run in this order; the first failure names it."""

    TOO_LARGE = "too_large"
    MALFORMED_JSON = "malformed_json"
    UNKNOWN_SCHEMA = "unknown_schema"
    INVALID_FIELD = "invalid_field"
    KEY_MISMATCH = "key_mismatch"
    UNKNOWN_SITE = "unknown_site"
    FUTURE_TIMESTAMP = "future_timestamp"
    #: Needs state: decided by the stream processors' deduplication, not the validator.
    CONFLICTING_DUPLICATE = "conflicting_duplicate"


#: The order in which checks run (SPEC §2's table).
REASON_ORDER: tuple[Reason, ...] = tuple(Reason)
