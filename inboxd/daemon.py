"""The loop: wait for mail (IDLE or polling), take it in, send what is due.

One work lock serialises everything that touches the store, so the scheduler's jobs
and the mail loop never interleave inside a transaction.

The systemd watchdog is fed from this loop only, so a ping means the loop is alive:
between messages, batches and mails sent (:meth:`Daemon.beat`), and around every
wait, which :meth:`Daemon.pause` and :meth:`Daemon.locked` cut into slices short
enough for that (:meth:`sdnotify.Watchdog.bound`).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from inboxd import control, metrics, sdnotify
from inboxd.app import App
from inboxd.backends.connect import explain_failure
from inboxd.logs import get_logger
from inboxd.mailbox.base import MailboxError
from inboxd.schedule import due_jobs, start_scheduler

log = get_logger(__name__)

# The longest single wait without a watchdog; with one, every wait is also cut to a
# quarter of WatchdogSec (``Watchdog.bound``).
MAX_WAIT = 25.0
# A wait for the work lock longer than this is logged (once per wait): a timed job or
# an admin command holds it. The watchdog cannot tell, since the loop pings while it
# waits; the log can.
LOCK_WAIT_LOGGED = 120.0


def reconnect_delay(failures: int) -> float:
    return float(min(2 ** max(failures - 1, 0), 60))


class Daemon:
    def __init__(self, app: App, *, lock_wait_logged: float = LOCK_WAIT_LOGGED) -> None:
        self.app = app
        self.lock_wait_logged = lock_wait_logged
        self.stop = threading.Event()
        self.failures = 0
        self.backoff = 0.0  # seconds the mailbox's server asked to be left alone
        self.stop_signal: int | None = None
        self.watchdog = sdnotify.Watchdog.from_env()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only set flags here: logging from a signal handler can deadlock on the
        # logger's lock when the signal lands in the middle of a log write.
        self.stop_signal = signum
        self.stop.set()

    def beat(self) -> None:
        """Between two pieces of work: ping the watchdog if a ping is due."""
        self.watchdog.maybe_ping(time.monotonic())

    def pause(self, seconds: float) -> None:
        """Wait ``seconds`` (a server's back-off can be minutes) or until stopped, in
        slices the watchdog allows, feeding it between them."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.stop.wait(self.watchdog.bound(left))
            self.beat()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The work lock. A scheduler job may hold it for long (a drain of a big
        outbox, a VACUUM): the loop waits in slices and keeps the watchdog fed. A wait
        longer than ``lock_wait_logged`` is logged once (``daemon.lock_waiting``)."""
        started = time.monotonic()
        told = False
        while not self.app.lock.acquire(timeout=self.watchdog.bound(MAX_WAIT)):
            self.beat()
            waited = time.monotonic() - started
            if not told and waited >= self.lock_wait_logged:
                log.warning("daemon.lock_waiting", seconds=round(waited))
                told = True
        try:
            yield
        finally:
            self.app.lock.release()

    def cycle(self) -> bool:
        """Fetch, take in, send. Returns False when the mailbox could not be reached."""
        app = self.app
        try:
            with self.locked():
                app.mailbox.open()
                result = app.intake.run_once(should_stop=self.stop.is_set, beat=self.beat)
                if result.listed:
                    log.info(
                        "intake.done", count=result.listed, batch=result.queued, open=result.handled
                    )
                app.outbox.drain(should_stop=self.stop.is_set, beat=self.beat)
            self.failures = 0
            return True
        except Exception as exc:
            # Whatever went wrong, the daemon lives on: log it (type and place only),
            # drop the connection so the next cycle lists the mailbox afresh, back off.
            self.failures += 1
            self.backoff = 0.0
            if isinstance(exc, MailboxError):
                event = "mailbox.error"
                # A server's back-off: no request to it before it ends.
                self.backoff = exc.retry_after or 0.0
                log.warning(
                    event,
                    error=type(exc).__name__,
                    reason=exc.reason,
                    attempt=self.failures,
                    **({"retry_after": round(self.backoff)} if self.backoff else {}),
                )
            else:
                event = "cycle.failed"
                log.error(event, error=type(exc).__name__, attempt=self.failures, exc_info=True)
            try:
                with self.locked():
                    app.store.set_meta(
                        "last_error", json.dumps({"event": event, "at": app.clock()})
                    )
            except Exception as store_exc:
                log.error("store.error", error=type(store_exc).__name__)
            app.mailbox.close()
            return False

    def run(self) -> int:
        app = self.app
        # Before READY: a socket another instance already answers on is a
        # configuration error, and systemd should see the start fail.
        admin_socket = control.serve(app.cfg, app.store, app.keyring, app.lock)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        sdnotify.ready()
        log.info("daemon.started", backend=app.cfg.mailbox.backend)
        metrics.serve(app.cfg.metrics, app.store, app.clock, app.lock)
        scheduler = start_scheduler(app.jobs, self.stop)
        try:
            while not self.stop.is_set():
                self.beat()
                ok = self.cycle()
                self.beat()
                if self.stop.is_set():
                    break
                if ok:
                    try:
                        app.mailbox.wait(self.watchdog.bound(MAX_WAIT), self.stop)
                    except MailboxError as exc:
                        log.warning("mailbox.error", error=type(exc).__name__, reason=exc.reason)
                        app.mailbox.close()
                        # A back-off the server gave while waiting holds as well.
                        self.pause(exc.retry_after or 0.0)
                else:
                    self.pause(max(min(reconnect_delay(self.failures), MAX_WAIT), self.backoff))
        finally:
            if self.stop_signal is not None:
                log.info("daemon.stopping", signal=signal.Signals(self.stop_signal).name)
            sdnotify.stopping()
            scheduler.shutdown(wait=True)
            if admin_socket is not None:
                admin_socket.close()
            app.close()
            log.info("daemon.stopped")
        return 0


def once(app: App, problems: list[str] | None = None) -> int:
    """Everything due now, then exit: 0, or 3 when a server could not be reached.
    ``problems`` gets one line for a person per failure (the log has the details)."""
    code = 0
    try:
        app.mailbox.open()
        result = app.intake.run_once()
        log.info("intake.done", count=result.listed, batch=result.queued)
    except MailboxError as exc:
        log.error("mailbox.error", error=type(exc).__name__, reason=exc.reason)
        code = 3
        if problems is not None:
            problems.append(explain_failure(app.cfg, "mailbox", exc))
    due_jobs(app.jobs)
    drained = app.outbox.drain()
    if drained.unreachable:
        code = 3
        if problems is not None:
            problems.append(
                f"outgoing mail ({app.cfg.smtp.transport}): the server could not be reached;"
                " the mail waits in the outbox and is tried again"
            )
    app.close()
    return code
