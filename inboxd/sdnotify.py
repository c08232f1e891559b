"""sd_notify(3) over a plain socket: READY, STOPPING, WATCHDOG and STATUS for systemd.

No library: the protocol is one ``KEY=value`` datagram on the ``AF_UNIX`` socket named
by ``$NOTIFY_SOCKET``. Outside systemd (tests, ``inboxd once``, a terminal) every call
is a cheap no-op returning False, and a failing send is logged by type name only and
never raised: a missed notification must not take the daemon down.

STATUS text ends up in ``systemctl status`` for anyone on the host, so callers pass
counts and states only, never mail content.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping

from inboxd.logs import get_logger

log = get_logger(__name__)

# A blocked send (the manager's queue full) must not stall the main loop for long.
_SEND_TIMEOUT = 1.0


def _address(raw: str) -> str | None:
    if raw.startswith("@"):
        # Linux abstract namespace: the leading "@" stands for a NUL byte.
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    # systemd >= 253 also knows "vsock:"; inboxd only ever runs under a local manager.
    return None


def notify(state: str) -> bool:
    """Send ``state`` (one or more ``KEY=value`` lines) to the service manager.

    Returns True if the datagram was sent, False if there is no manager to tell or
    the send failed.
    """
    raw = os.environ.get("NOTIFY_SOCKET", "")
    if not raw:
        return False
    address = _address(raw)
    if address is None:
        log.warning("sdnotify.error", error="UnsupportedAddress")
        return False
    try:
        payload = state.encode("utf-8")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(_SEND_TIMEOUT)
            sock.sendto(payload, address)
    except (OSError, ValueError) as exc:
        # ValueError: an embedded NUL in the path, or text that is not encodable.
        log.warning("sdnotify.error", error=type(exc).__name__)
        return False
    return True


def ready() -> bool:
    return notify("READY=1")


def stopping() -> bool:
    return notify("STOPPING=1")


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    # A newline would start a new KEY=value assignment in the datagram.
    one_line = " ".join(text.splitlines())
    return notify(f"STATUS={one_line}")


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings, or None when the watchdog is off.

    That is half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled(3) recommends, so one
    late loop iteration does not get the service killed. ``$WATCHDOG_PID``, when set,
    must be this process: a child that inherited the environment must not ping.
    """
    env = os.environ if environ is None else environ
    usec_raw = env.get("WATCHDOG_USEC", "")
    if not usec_raw:
        return None
    pid_raw = env.get("WATCHDOG_PID", "")
    if pid_raw:
        try:
            if int(pid_raw) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(usec_raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000 / 2


class Watchdog:
    """Pings the watchdog from the daemon's main loop.

    ``interval`` is half of ``WatchdogSec`` (:func:`watchdog_interval`): pings must
    never be further apart than that. The loop calls :meth:`maybe_ping` with
    ``time.monotonic()`` between any two pieces of work (messages, batches, mails
    sent) and after every wait, and it pings once a :attr:`step` (half an interval,
    a quarter of ``WatchdogSec``) has passed; every blocking wait is cut to a step
    by :meth:`bound`. So while idle pings are at most an interval apart, and a piece
    of work may take up to three quarters of ``WatchdogSec`` before systemd would
    see a silence of ``WatchdogSec``.
    """

    def __init__(self, interval: float | None, send: Callable[[], bool] = watchdog) -> None:
        self.interval = interval
        self._send = send
        self._last: float | None = None

    @classmethod
    def from_env(cls) -> Watchdog:
        return cls(watchdog_interval())

    @property
    def enabled(self) -> bool:
        return self.interval is not None

    @property
    def step(self) -> float | None:
        """Half an interval: how often the loop pings, and its longest wait."""
        return None if self.interval is None else self.interval / 2

    def bound(self, seconds: float) -> float:
        """``seconds``, cut to a :attr:`step` when the watchdog is on.

        A wait that starts just before a ping is due must end early enough to leave
        time for the work that comes before the next ping.
        """
        if self.step is None:
            return seconds
        return min(seconds, self.step)

    def maybe_ping(self, now: float) -> bool:
        """Ping if a :attr:`step` has passed since the last ping (or none was sent yet).

        Returns True if a ping was due and sent. Early rather than at the last
        moment: the work after this call may be long. A failed send still counts as
        the attempt, so a broken socket is logged once per step, not once per loop.
        """
        if self.step is None:
            return False
        if self._last is not None and self._last <= now < self._last + self.step:
            return False
        self._last = now
        return self._send()
