"""Type stubs of exnet's compiled accepting path (see ``src/lib.rs``)."""

from collections.abc import Callable
from datetime import datetime
from typing import Any

class Model:
    """The accepting path of one pydantic model, built from its core schema.

    ``checks`` (for :meth:`accept_message`): ``max_bytes``, ``tolerance_us``,
    ``node_of_site`` (site_id -> node_id, or None), ``participant``, ``site`` and
    ``node`` (field names), ``accepted`` (the class to return) and ``topic``.

    ``rules``: the model's rules that span fields, as data (``kind``:
    ``required_when``/``null_unless`` with ``field``, ``when``, ``value``;
    ``one_of_per``/``at_most_per`` with ``field``, ``by``, ``table``).
    """

    def __init__(
        self,
        cls: type[Any],
        fields: list[dict[str, Any]],
        after: list[Any],
        checks: dict[str, Any] | None = None,
        rules: list[dict[str, Any]] = ...,
    ) -> None: ...
    def accept(self, data: bytes) -> Any | None:
        """The instance pydantic would build from ``data``, or None to leave it to pydantic."""
    def accept_message(
        self, value: bytes | None, key: bytes | None, origin: Any, now: datetime
    ) -> Any | None:
        """``Accepted(event, topic, origin)`` if the message passes every check, else None."""

class Router:
    """One call per message: the topic's compiled path, then ``fallback``.

    ``models``: physical topic name -> :class:`Model` (built with ``checks``).
    ``fallback(value, key, origin, now, event)`` gives the outcome of every
    message not accepted here; ``event`` is the instance built here when only a
    later check (key, site, time) failed, else None. ``clock()``: processing
    time when :meth:`validate_message` is given none.
    """

    def __init__(
        self,
        models: dict[str, Model],
        fallback: Callable[[Any, Any, Any, datetime, Any], Any],
        clock: Callable[[], datetime],
    ) -> None: ...
    def validate_message(
        self, value: bytes | None, key: bytes | None, origin: Any, now: datetime | None = None
    ) -> Any:
        """``Accepted`` from the compiled path, else ``fallback``'s outcome."""

class Pattern:
    """A field pattern as the compiled path matches it (for the tests)."""

    def __init__(self, pattern: str) -> None: ...
    @property
    def kind(self) -> str:
        """``"run"`` (a plain run of ASCII classes, matched byte by byte) or ``"regex"``."""
    def is_match(self, text: str) -> bool: ...
    def regex_is_match(self, text: str) -> bool:
        """The regex crate's own answer."""
