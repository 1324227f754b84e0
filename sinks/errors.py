"""Errors of the ClickHouse side."""

from __future__ import annotations

from contracts.errors import RecoverableError, UserError

__all__ = ["ClickHouseUnavailable", "DatabaseLocked", "MigrationError"]


class ClickHouseUnavailable(RecoverableError):
    """ClickHouse did not answer or refused a write; retried with backoff."""


class DatabaseLocked(UserError):
    """The embedded database is held by another process (chDB lets one process own a path)."""


class MigrationError(UserError):
    """A migration failed; the database is left as the last good migration made it."""
