"""Type stubs of exnet's compiled accepting path (see ``src/lib.rs``)."""

from typing import Any

class Model:
    """The accepting path of one pydantic model, built from its core schema."""

    def __init__(self, cls: type[Any], fields: list[dict[str, Any]], after: list[Any]) -> None: ...
    def accept(self, data: bytes) -> Any | None:
        """The instance pydantic would build from ``data``, or None to leave it to pydantic."""
