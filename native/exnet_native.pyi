"""Type stubs of exnet's compiled accepting path (see ``src/lib.rs``)."""

from datetime import datetime
from typing import Any

class Model:
    """The accepting path of one pydantic model, built from its core schema.

    ``checks`` (for :meth:`accept_message`): ``max_bytes``, ``tolerance_us``,
    ``node_of_site`` (site_id -> node_id, or None), ``participant``, ``site`` and
    ``node`` (field names), ``accepted`` (the class to return) and ``topic``.
    """

    def __init__(
        self,
        cls: type[Any],
        fields: list[dict[str, Any]],
        after: list[Any],
        checks: dict[str, Any] | None = None,
    ) -> None: ...
    def accept(self, data: bytes) -> Any | None:
        """The instance pydantic would build from ``data``, or None to leave it to pydantic."""
    def accept_message(
        self, value: bytes | None, key: bytes | None, origin: Any, now: datetime
    ) -> Any | None:
        """``Accepted(event, topic, origin)`` if the message passes every check, else None."""
