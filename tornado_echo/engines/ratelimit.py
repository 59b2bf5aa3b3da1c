"""Token buckets: how much a connection may send per second, with a one-second burst."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` units per second on average; up to one second's worth at once.

    :meth:`take` answers whether ``amount`` may pass now, and takes it if so. A unit larger
    than a whole second's worth can never pass. ``clock`` is injectable for tests.
    """

    __slots__ = ("_clock", "_last", "_tokens", "rate")

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._tokens = rate
        self._last = clock()

    def take(self, amount: float = 1.0) -> bool:
        now = self._clock()
        tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if tokens < amount:
            self._tokens = tokens
            return False
        self._tokens = tokens - amount
        return True
