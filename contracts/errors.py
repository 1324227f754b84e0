"""The one root of exnet's exceptions.

Three kinds of failure take three paths (see docs/architecture.md):
an invalid event is data, never an exception (it becomes a rejection);
a transient failure raises a :class:`RecoverableError` and is retried;
anything else is a bug and stops the process loudly.
"""

__all__ = ["ConfigError", "ExnetError", "RecoverableError", "UserError"]


class ExnetError(Exception):
    """Root of every exception exnet raises on purpose."""


class UserError(ExnetError):
    """An expected failure a person can fix (bad file, missing tool, bad setting).

    The CLI prints its message, without a traceback, and exits non-zero.
    """


class ConfigError(UserError):
    """A setting, registry file or environment variable is wrong."""


class RecoverableError(ExnetError):
    """A transient failure (broker, ClickHouse) that is retried with backoff."""
