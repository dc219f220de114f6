"""Logging through the configured callables, or the ``logging`` module.

Nothing secret is ever passed here: callers log session handles and user ids
at most, never tokens, keys or hashes.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from .config import LoggingConfig

LOGGER_NAME = "tornado_supertokens"


class Logger:
    """Routes ``info`` and ``error`` to the user's callables or to ``logging``."""

    def __init__(self, config: Optional[LoggingConfig] = None) -> None:
        config = config or LoggingConfig()
        self._info = config.info
        self._error = config.error
        self._std = logging.getLogger(LOGGER_NAME)

    def info(self, message: Any) -> None:
        if self._info is not None:
            self._safe_call(self._info, message)
        else:
            self._std.info("%s", message)

    def error(self, message: Any, exc: Optional[BaseException] = None) -> None:
        if self._error is not None:
            self._safe_call(self._error, message if exc is None else f"{message}: {exc!r}")
        else:
            self._std.error("%s", message, exc_info=exc)

    def _safe_call(self, fn: Any, message: Any) -> None:
        try:
            fn(message)
        except Exception:  # a broken user logger must not break a request
            self._std.exception("the configured logging callable raised")
