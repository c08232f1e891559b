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
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from inboxd.logs import get_logger
from inboxd.store import OPEN_STATES, Signal

if TYPE_CHECKING:
    from inboxd.app import App

log = get_logger(__name__)

DAY = 86400.0
VACUUM_EVERY = 7 * DAY


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
    """When the cron expression last fired at or before ``now`` (within 8 days)."""
    trigger = CronTrigger.from_crontab(cron, timezone=tz or dt.UTC)
    start = dt.datetime.fromtimestamp(now - 8 * DAY, tz or dt.UTC)
    end = dt.datetime.fromtimestamp(now, tz or dt.UTC)
    last = None
    fire = trigger.get_next_fire_time(None, start)
    while fire is not None and fire <= end:
        last = fire
        fire = trigger.get_next_fire_time(fire, fire + dt.timedelta(seconds=1))
    return None if last is None else last.timestamp()


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


def send_reminders(app: App) -> int:
    now = app.clock()
    due = due_reminders(app.store.signals(), now, app.cfg.triage.remind_after)
    if not due:
        return 0
    with app.store.transaction() as tx:
        for f in app.cfg.triage.functionarissen:
            app.intake.mailer.queue(
                tx, "reminder", "reminder", f, {"signals": rows(due, now)}, ref=None
            )
        for s in due:
            tx.update_signal(s, last_reminder_at=now)
    log.info("reminder.queued", count=len(due), refs=[s.ref for s in due])
    return len(due)


def send_digest(app: App, *, force: bool = False) -> bool:
    now = app.clock()
    last = app.store.get_meta("last_digest")
    if last is None and not force:
        # A fresh store starts counting from now: no digest for times it never saw.
        app.store.set_meta("last_digest", str(now))
        return False
    local_tz = dt.datetime.now().astimezone().tzinfo
    if not force and not digest_due(
        app.cfg.triage.digest_cron, now, float(last) if last else None, local_tz
    ):
        return False
    signals = app.store.signals()
    with app.store.transaction() as tx:
        for f in app.cfg.triage.functionarissen:
            app.intake.mailer.queue(
                tx,
                "digest",
                "digest",
                f,
                {"signals": rows(signals, now), "open": len(signals)},
                ref=None,
            )
        tx.set_meta("last_digest", str(now))
    log.info("digest.queued", open=len(signals))
    return True


def housekeeping(app: App) -> None:
    now = app.clock()
    app.store.expire(now, app.cfg.dedup_window, app.cfg.reporters.ack_rate_limit[1])
    app.store.checkpoint()
    last = app.store.get_meta("last_vacuum")
    if last is None or now - float(last) >= VACUUM_EVERY:
        app.store.vacuum()
        app.store.set_meta("last_vacuum", str(now))
        log.info("store.vacuumed")


def due_jobs(app: App) -> None:
    """Everything timed that is due now (``inboxd once``)."""
    with app.lock:
        send_reminders(app)
        send_digest(app)
        housekeeping(app)


def _guarded(app: App, name: str, fn: Callable[[App], object]) -> Callable[[], None]:
    def job() -> None:
        try:
            with app.lock:
                fn(app)
        except Exception as exc:
            # A failing job is logged and tried again at its next time; the daemon lives on.
            log.error("job.failed", job=name, error=type(exc).__name__, exc_info=True)

    return job


def start_scheduler(app: App, stop: threading.Event) -> BackgroundScheduler:
    sched = BackgroundScheduler(
        job_defaults={
            "coalesce": True,  # after downtime, one run, not a burst
            "max_instances": 1,
            "misfire_grace_time": 6 * 3600,  # a restart must not skip the morning digest
        }
    )
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
        next_run_time=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=20),
    )
    sched.add_job(
        _guarded(app, "digest", send_digest),
        CronTrigger.from_crontab(app.cfg.triage.digest_cron),
        id="digest",
    )
    sched.add_job(
        _guarded(app, "housekeeping", housekeeping),
        "interval",
        hours=1,
        id="housekeeping",
        next_run_time=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60),
    )
    sched.start()
    return sched
