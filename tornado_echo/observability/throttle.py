"""Rate-limited logging: a repeated error is logged once per interval, with a count.

A client that floods, a full disk or an exhausted fd table can produce the same error
thousands of times a second. :class:`LogThrottle` lets the first occurrence of each kind
through, counts the rest, and logs one summary line per interval ("... 1234 more since").
Every occurrence is still counted (``counts``), so metrics can export it.

Thread-safe: the store's writer thread and the IOLoop thread may share one throttle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

DEFAULT_INTERVAL = 10.0


class LogThrottle:
    """Logs each ``kind`` at most once per ``interval`` seconds; counts every occurrence.

    ``clock`` is injectable so the pure logic is tested without sleeping.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.counts: dict[str, int] = {}
        self._last_logged: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def log(self, kind: str, level: int, msg: str, *args: Any, **kwargs: Any) -> bool:
        """Count one ``kind`` occurrence; log it unless one was logged within the interval.

        Returns whether a line was written. A line after a quiet period says how many
        were withheld since the previous one.
        """
        now = self.clock()
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            last = self._last_logged.get(kind)
            if last is not None and now - last < self.interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return False
            self._last_logged[kind] = now
            withheld = self._suppressed.pop(kind, 0)
        if withheld:
            msg += " (%d more like this in the last %.0f s)"
            args = (*args, withheld, now - last if last is not None else 0.0)
        self.logger.log(level, msg, *args, **kwargs)
        return True
