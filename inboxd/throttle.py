"""A server's request to be left alone for a while (HTTP ``Retry-After``, EWS
``BackOffMilliseconds``), shared by everything that talks to that server.

Microsoft asks clients to wait as long as it says before the next request
(https://learn.microsoft.com/en-us/graph/throttling; for EWS
https://learn.microsoft.com/en-us/exchange/client-developer/exchange-web-services/ews-throttling-in-exchange),
and every request made earlier counts against the client and prolongs the
throttling. The mailbox and the transport of one account share one
:class:`Throttle`; a request is refused here, before it is sent, until the time
is up, and the daemon's loop sleeps it out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# A server that asks for more than this is probably wrong; waiting an hour and
# asking again does no harm.
MAX_BACKOFF = 3600.0


class Throttle:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until = 0.0
        self._lock = threading.Lock()

    def hold(self, seconds: float) -> float:
        """No request before ``seconds`` from now (bounded); returns the wait."""
        seconds = max(0.0, min(float(seconds), MAX_BACKOFF))
        with self._lock:
            self._until = max(self._until, self._clock() + seconds)
        return seconds

    def remaining(self) -> float:
        with self._lock:
            return max(0.0, self._until - self._clock())
