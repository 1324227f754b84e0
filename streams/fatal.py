"""Stopping a worker loudly, without acknowledging what it was processing.

Faust acknowledges an event whose agent raised, so letting an exception
propagate would commit past the failed batch: silent data loss. Instead the
process logs the error and exits at once, before any commit: exactly what a
``kill -9`` does, which the platform survives by design (at-least-once input,
idempotent writes). Nothing is lost; the batch is processed again on restart.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import NoReturn

__all__ = ["EXIT_BUG", "EXIT_INVALID_RATIO", "die"]

log = logging.getLogger(__name__)

#: Exit status of a worker stopped by a bug (EX_SOFTWARE).
EXIT_BUG = 70
#: Exit status of a worker stopped by the invalid-ratio limit (EX_CONFIG).
EXIT_INVALID_RATIO = 78


def die(reason: BaseException, status: int = EXIT_BUG) -> NoReturn:
    """Log ``reason`` and end the process now, committing nothing."""
    log.critical("stopping the worker without committing: %s", reason)
    sys.stderr.write("".join(traceback.format_exception(reason)))
    sys.stderr.write(f"exnet: worker stopped (exit {status}): {reason}\n")
    sys.stderr.flush()
    os._exit(status)
