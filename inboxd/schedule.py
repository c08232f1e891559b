"""Timed work: reminders, the digest, outbox retries, housekeeping.

The decisions (what is due) are plain functions of the signals and the time; the
jobs are thin and run under the application's work lock. ``inboxd run`` drives them
with APScheduler; ``inboxd once`` calls :func:`due_jobs` directly, so both do the
same thing at the same moment.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from apscheduler.schedulers.background import BackgroundScheduler

from inboxd.config import Config
from inboxd.crontab import cron_trigger, local_zone
from inboxd.guides import spoken_duration
from inboxd.intake import Intake, iso
from inboxd.lifecycle import OPEN_STATES, MailKind
from inboxd.logs import get_logger
from inboxd.mail_limits import flood_notice_due, longest_window
from inboxd.outbox import Outbox
from inboxd.sent_copies import purge_sent_copies
from inboxd.store import Signal, Store
from inboxd.transport.base import Transport

log = get_logger(__name__)

DAY = 86400.0
VACUUM_EVERY = 7 * DAY
SHRED_RETRY = 10.0  # seconds
# How far back a missed digest is still sent (a daemon down over a long weekend).
DIGEST_LOOKBACK = 8 * DAY


class Services(Protocol):
    """What the timed jobs use of the running application (``inboxd.app.App`` is one):
    declared here, so that this module does not depend on the assembly above it."""

    @property
    def cfg(self) -> Config: ...
    @property
    def store(self) -> Store: ...
    @property
    def intake(self) -> Intake: ...
    @property
    def outbox(self) -> Outbox: ...
    @property
    def transport(self) -> Transport: ...
    @property
    def clock(self) -> Callable[[], float]: ...
    @property
    def lock(self) -> threading.RLock: ...


def due_reminders(signals: Sequence[Signal], now: float, remind_after: float) -> list[Signal]:
    """Open signals older than ``remind_after``, not on hold, not reminded in the last day."""
    return [
        s
        for s in signals
        if s.state in OPEN_STATES
        and not s.hold
        and now - s.created_at >= remind_after
        and (s.last_reminder_at is None or now - s.last_reminder_at >= DAY - 60)
    ]


def last_fire_before(cron: str, now: float, tz: dt.tzinfo | None = None) -> float | None:
    """When the cron expression last fired at or before ``now`` (within 8 days), in
    ``tz`` (default: local time)."""
    zone = tz or local_zone()
    trigger = cron_trigger(cron, zone)
    end = dt.datetime.fromtimestamp(now, zone)
    # Widening windows: an every-minute expression need not be walked for 8 days.
    for lookback in (3600.0, DAY, DIGEST_LOOKBACK):
        last: dt.datetime | None = None
        fire = trigger.get_next_fire_time(None, dt.datetime.fromtimestamp(now - lookback, zone))
        while fire is not None and fire <= end:
            last = fire
            fire = trigger.get_next_fire_time(fire, fire + dt.timedelta(seconds=1))
        if last is not None:
            return last.timestamp()
    return None


def digest_due(cron: str, now: float, last_sent: float | None, tz: dt.tzinfo | None = None) -> bool:
    fired = last_fire_before(cron, now, tz)
    return fired is not None and (last_sent is None or last_sent < fired)


def rows(signals: Sequence[Signal], now: float) -> list[dict[str, Any]]:
    """What reminders and digests may say: reference, age, state, flags. No content."""
    return [
        {
            "ref": s.ref,
            "age_days": round((now - s.created_at) / DAY, 1),
            "state": s.state,
            "flags": sorted(s.flags),
            "hold": s.hold,
        }
        for s in signals
    ]


def overdue(signals: Sequence[Signal], now: float, remind_after: float) -> list[Signal]:
    """Open signals older than ``remind_after`` and not on hold."""
    return [
        s
        for s in signals
        if s.state in OPEN_STATES and not s.hold and now - s.created_at >= remind_after
    ]


def send_reminders(app: Services) -> int:
    """One reminder mail per functionaris when a signal is due, listing every overdue
    signal: signals that fell due at different hours then share one mail a day
    instead of each bringing its own."""
    now = app.clock()
    signals = app.store.signals()
    if not due_reminders(signals, now, app.cfg.triage.remind_after):
        return 0
    listed = overdue(signals, now, app.cfg.triage.remind_after)
    with app.store.transaction() as tx:
        for f in app.cfg.triage.functionarissen:
            app.intake.mailer.queue(
                tx, MailKind.REMINDER, "reminder", f, {"signals": rows(listed, now)}, ref=None
            )
        for s in listed:
            tx.update_signal(s, last_reminder_at=now)
    log.info("reminder.queued", count=len(listed), refs=[s.ref for s in listed])
    return len(listed)


def send_digest(app: Services, *, force: bool = False) -> bool:
    now = app.clock()
    last = app.store.get_meta("last_digest")
    if last is None and not force:
        # A fresh store starts counting from now: no digest for times it never saw.
        app.store.set_meta("last_digest", str(now))
        return False
    if not force and not digest_due(
        app.cfg.triage.digest_cron, now, float(last) if last else None, local_zone()
    ):
        return False
    signals = app.store.signals()
    with app.store.transaction() as tx:
        for f in app.cfg.triage.functionarissen:
            app.intake.mailer.queue(
                tx,
                MailKind.DIGEST,
                "digest",
                f,
                {"signals": rows(signals, now), "open": len(signals)},
                ref=None,
            )
        tx.set_meta("last_digest", str(now))
    log.info("digest.queued", open=len(signals))
    return True


def send_flood_notice(app: Services) -> bool:
    """One notice to each functionaris naming how many signals were queued without a
    triage request of their own (and from how many senders), once the flood has
    calmed down or has gone on for an hour. No content: the count and the time."""
    now = app.clock()
    held = app.store.held_summary()
    if held is None:
        return False
    count, senders, first, last = held
    if not flood_notice_due(first, last, now):
        return False
    with app.store.transaction() as tx:
        for f in app.cfg.triage.functionarissen:
            app.intake.mailer.queue(
                tx,
                MailKind.FLOOD_NOTICE,
                "flood_notice",
                f,
                {
                    "count": count,
                    "senders": senders,
                    "since": iso(first),
                    "until": iso(last),
                    "per_sender": app.cfg.triage.request_limit[0],
                    "sender_window": spoken_duration(
                        app.cfg.triage.request_limit[1],
                        app.cfg.language,
                        app.intake.mailer.templates,
                    ),
                    "per_functionaris": app.cfg.triage.notice_limit[0],
                    "functionaris_window": spoken_duration(
                        app.cfg.triage.notice_limit[1],
                        app.cfg.language,
                        app.intake.mailer.templates,
                    ),
                },
                ref=None,
            )
        tx.clear_held(last)
    log.warning("flood.noticed", count=count)
    return True


def release_held(app: Services) -> int:
    """Held signals get their triage request, as many as the limits allow now."""
    return app.intake.release_held()


def housekeeping(app: Services) -> None:
    now = app.clock()
    app.store.expire(now, app.cfg.dedup_window, longest_window(app.cfg))
    app.store.shred()
    app.store.checkpoint()
    last = app.store.get_meta("last_vacuum")
    if last is None or now - float(last) >= VACUUM_EVERY:
        app.store.vacuum()
        app.store.set_meta("last_vacuum", str(now))
        log.info("store.vacuumed")


def due_jobs(app: Services) -> None:
    """Everything timed that is due now (``inboxd once``)."""
    with app.lock:
        send_reminders(app)
        send_digest(app)
        send_flood_notice(app)
        release_held(app)
        housekeeping(app)


def _guarded(app: Services, name: str, fn: Callable[[Services], object]) -> Callable[[], None]:
    def job() -> None:
        try:
            with app.lock:
                fn(app)
        except Exception as exc:
            # A failing job is logged and tried again at its next time; the daemon lives on.
            log.error("job.failed", job=name, error=type(exc).__name__, exc_info=True)

    return job


def start_scheduler(app: Services, stop: threading.Event) -> BackgroundScheduler:
    zone = local_zone()
    sched = BackgroundScheduler(
        timezone=zone,
        job_defaults={
            "coalesce": True,  # after downtime, one run, not a burst
            "max_instances": 1,
            "misfire_grace_time": 6 * 3600,  # a busy lock must not cost the morning digest
        },
    )
    soon = dt.datetime.now(zone)
    sched.add_job(
        _guarded(app, "outbox", lambda a: a.outbox.drain(should_stop=stop.is_set)),
        "interval",
        seconds=30,
        id="outbox",
    )
    sched.add_job(
        _guarded(app, "reminders", send_reminders),
        "interval",
        hours=1,
        id="reminders",
        next_run_time=soon + dt.timedelta(seconds=20),
    )
    sched.add_job(
        _guarded(app, "digest", send_digest),
        cron_trigger(app.cfg.triage.digest_cron, zone),
        id="digest",
        # Jobs live in memory, so a digest time missed while the daemon was down is
        # not a misfire APScheduler knows of: one run at start sends it (or, on a
        # fresh store, sets the baseline), as ``inboxd once`` would; then the cron.
        next_run_time=soon + dt.timedelta(seconds=20),
    )
    sched.add_job(
        _guarded(app, "flood_notice", send_flood_notice),
        "interval",
        minutes=1,
        id="flood_notice",
    )
    sched.add_job(
        _guarded(app, "release_held", release_held),
        "interval",
        minutes=1,
        id="release_held",
    )
    # Graph files a Sent Items copy of each MIME sendMail, sometimes after the send
    # returned: look for the awaited copies every few minutes (a no-op elsewhere).
    sched.add_job(
        _guarded(app, "purge_sent", lambda a: purge_sent_copies(a.transport, a.lock)),
        "interval",
        minutes=5,
        id="purge_sent",
    )
    # A deletion whose shredding a reader held up (see SqliteStore.shred) is finished
    # as soon as the reader lets go; a no-op when nothing is owed.
    sched.add_job(
        _guarded(app, "shred", lambda a: a.store.shred()),
        "interval",
        seconds=SHRED_RETRY,
        id="shred",
    )
    sched.add_job(
        _guarded(app, "housekeeping", housekeeping),
        "interval",
        hours=1,
        id="housekeeping",
        next_run_time=soon + dt.timedelta(seconds=60),
    )
    sched.start()
    return sched
