"""The ``exnet`` console script: files private to their owner, and a stop asked while
``exnet up`` still starts is clean.

Every file and folder an exnet command creates, and the Kafka broker it starts,
is its owner's alone (umask 077): the embedded database, the broker's logs (every
topic's messages, the dead-letter originals among them), the spool. Before, they
were created readable by every local user (an outside security review), which
went around Kafka's logins and ACLs and the SQL endpoint's token.

``exnet up`` installs its signal handlers as it starts running
(``exnet.runner._StopFlag``); before that, Python imports the command line and
the stream processors for 0.3-0.5 s, and a SIGTERM then ended the process with
Python's default, exit 143, where SPEC §5 says a stopped ``exnet up`` exits 0.
This module imports nothing else until it has installed, for ``exnet up`` only, a
handler that exits 0 at once: nothing has been read from Kafka yet, so nothing
needs writing or committing. Every other command keeps Python's defaults: a
stopped ``exnet publish`` must not look like one that sent every line.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

__all__ = ["PRIVATE_UMASK", "main", "stop_at_once_while_starting"]


#: What no file or folder an exnet command creates gives: any access for the group or others.
PRIVATE_UMASK = 0o077


def main() -> None:
    """Console-script entry point: :func:`exnet.cli.main`, after the umask and the
    handler above."""
    os.umask(PRIVATE_UMASK)
    if sys.argv[1:2] == ["up"]:
        stop_at_once_while_starting()
    from exnet.cli import main as cli_main  # noqa: PLC0415  # after the handlers, on purpose

    cli_main()


def stop_at_once_while_starting() -> None:
    """SIGTERM and SIGINT end the process with exit 0, until ``exnet up`` installs its own."""
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    os._exit(0)
