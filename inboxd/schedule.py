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
from dataclasses import dataclass
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

from inboxd.config import Config
from inboxd.crontab import cron_trigger, local_zone
from inboxd.guides import spoken_duration
from inboxd.intake import Intake
from inboxd.lifecycle import OPEN_STATES, MailKind
from inboxd.logs import get_logger
from inboxd.mail_limits import flood_notice_due, longest_window
from inboxd.mailer import Mailer, iso
from inboxd.outbox import Outbox
from inboxd.sent_copies import purge_sent_copies
from inboxd.store import Signal, SignalUpdate, Store
from inboxd.templates import Templates
from inboxd.transport.base import Transport

log = get_logger(__name__)

DAY = 86400.0
VACUUM_EVERY = 7 * DAY
SHRED_RETRY = 10.0  # seconds
# How far back a missed digest is still sent (a daemon down over a long weekend).
DIGEST_LOOKBACK = 8 * DAY


@dataclass(frozen=True)
class Jobs:
    """The collaborators of the timed jobs, passed by the assembly (``app.build``);
    each job takes only the ones it needs."""

    cfg: Config
    store: Store
    mailer: Mailer
    templates: Templates
    intake: Intake
    outbox: Outbox
    transport: Transport
    clock: Callable[[], float]
    lock: threading.RLock


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


def send_reminders(cfg: Config, store: Store, mailer: Mailer, now: float) -> int:
    """One reminder mail per functionaris when a signal is due, listing every overdue
    signal: signals that fell due at different hours then share one mail a day
    instead of each bringing its own."""
    signals = store.signals()
    if not due_reminders(signals, now, cfg.triage.remind_after):
        return 0
    listed = overdue(signals, now, cfg.triage.remind_after)
    with store.transaction() as tx:
        for f in cfg.triage.functionarissen:
            mailer.queue(
                tx, MailKind.REMINDER, "reminder", f, {"signals": rows(listed, now)}, ref=None
            )
        for s in listed:
            tx.update_signal(s, SignalUpdate(last_reminder_at=now))
    log.info("reminder.queued", count=len(listed), refs=[s.ref for s in listed])
    return len(listed)


def send_digest(
    cfg: Config, store: Store, mailer: Mailer, now: float, *, force: bool = False
) -> bool:
    last = store.get_meta("last_digest")
    if last is None and not force:
        # A fresh store starts counting from now: no digest for times it never saw.
        store.set_meta("last_digest", str(now))
        return False
    if not force and not digest_due(
        cfg.triage.digest_cron, now, float(last) if last else None, local_zone()
    ):
        return False
    signals = store.signals()
    with store.transaction() as tx:
        for f in cfg.triage.functionarissen:
            mailer.queue(
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


def send_flood_notice(
    cfg: Config, store: Store, mailer: Mailer, templates: Templates, now: float
) -> bool:
    """One notice to each functionaris naming how many signals were queued without a
    triage request of their own (and from how many senders), once the flood has
    calmed down or has gone on for an hour. No content: the count and the time."""
    held = store.held_summary()
    if held is None:
        return False
    count, senders, first, last = held
    if not flood_notice_due(first, last, now):
        return False
    context = flood_context(cfg, templates, count, senders, first, last)
    with store.transaction() as tx:
        for f in cfg.triage.functionarissen:
            mailer.queue(tx, MailKind.FLOOD_NOTICE, "flood_notice", f, context, ref=None)
        tx.clear_held(last)
    log.warning("flood.noticed", count=count)
    return True


def flood_context(
    cfg: Config, templates: Templates, count: int, senders: int, first: float, last: float
) -> dict[str, object]:
    """What the flood notice says: counts, times and the limits, in words."""
    return {
        "count": count,
        "senders": senders,
        "since": iso(first),
        "until": iso(last),
        "per_sender": cfg.triage.request_limit[0],
        "sender_window": spoken_duration(cfg.triage.request_limit[1], cfg.language, templates),
        "per_functionaris": cfg.triage.notice_limit[0],
        "functionaris_window": spoken_duration(cfg.triage.notice_limit[1], cfg.language, templates),
    }


def housekeeping(cfg: Config, store: Store, now: float) -> None:
    store.expire(now, cfg.dedup_window, longest_window(cfg))
    store.shred()
    store.checkpoint()
    last = store.get_meta("last_vacuum")
    if last is None or now - float(last) >= VACUUM_EVERY:
        store.vacuum()
        store.set_meta("last_vacuum", str(now))
        log.info("store.vacuumed")


def due_jobs(jobs: Jobs) -> None:
    """Everything timed that is due now (``inboxd once``)."""
    j = jobs
    with j.lock:
        send_reminders(j.cfg, j.store, j.mailer, j.clock())
        send_digest(j.cfg, j.store, j.mailer, j.clock())
        send_flood_notice(j.cfg, j.store, j.mailer, j.templates, j.clock())
        j.intake.release_held()
        housekeeping(j.cfg, j.store, j.clock())


@dataclass(frozen=True)
class Timed:
    """One job of the daemon's scheduler: its name (the job id and the ``job`` of
    ``job.failed``), when it runs, and what it does."""

    name: str
    trigger: BaseTrigger
    run: Callable[[], object]
    # Seconds after the start of the first run, when that is not the trigger's.
    first_after: float | None = None


def timetable(jobs: Jobs, stop: threading.Event, zone: dt.tzinfo) -> list[Timed]:
    """Every job of ``inboxd run``, in the order they are added."""
    j = jobs

    def every(**interval: float) -> IntervalTrigger:
        return IntervalTrigger(**interval, timezone=zone)

    return [
        Timed("outbox", every(seconds=30), lambda: j.outbox.drain(should_stop=stop.is_set)),
        Timed(
            "reminders",
            every(hours=1),
            lambda: send_reminders(j.cfg, j.store, j.mailer, j.clock()),
            first_after=20,
        ),
        # Jobs live in memory, so a digest time missed while the daemon was down is
        # not a misfire APScheduler knows of: one run at start sends it (or, on a
        # fresh store, sets the baseline), as ``inboxd once`` would; then the cron.
        Timed(
            "digest",
            cron_trigger(j.cfg.triage.digest_cron, zone),
            lambda: send_digest(j.cfg, j.store, j.mailer, j.clock()),
            first_after=20,
        ),
        Timed(
            "flood_notice",
            every(minutes=1),
            lambda: send_flood_notice(j.cfg, j.store, j.mailer, j.templates, j.clock()),
        ),
        Timed("release_held", every(minutes=1), lambda: j.intake.release_held()),
        # Graph files a Sent Items copy of each MIME sendMail, sometimes after the send
        # returned: look for the awaited copies every few minutes (a no-op elsewhere).
        Timed("purge_sent", every(minutes=5), lambda: purge_sent_copies(j.transport, j.lock)),
        # A deletion whose shredding a reader held up (see inboxd.shredding) is finished
        # as soon as the reader lets go; a no-op when nothing is owed.
        Timed("shred", every(seconds=SHRED_RETRY), lambda: j.store.shred()),
        Timed(
            "housekeeping",
            every(hours=1),
            lambda: housekeeping(j.cfg, j.store, j.clock()),
            first_after=60,
        ),
    ]


def _guarded(lock: threading.RLock, name: str, run: Callable[[], object]) -> Callable[[], None]:
    def job() -> None:
        try:
            with lock:
                run()
        except Exception as exc:
            # A failing job is logged and tried again at its next time; the daemon lives on.
            log.error("job.failed", job=name, error=type(exc).__name__, exc_info=True)

    return job


JOB_DEFAULTS = {
    "coalesce": True,  # after downtime, one run, not a burst
    "max_instances": 1,
    "misfire_grace_time": 6 * 3600,  # a busy lock must not cost the morning digest
}


def start_scheduler(jobs: Jobs, stop: threading.Event) -> BackgroundScheduler:
    zone = local_zone()
    sched = BackgroundScheduler(timezone=zone, job_defaults=JOB_DEFAULTS)
    soon = dt.datetime.now(zone)
    for timed in timetable(jobs, stop, zone):
        first: dict[str, Any] = {}
        if timed.first_after is not None:
            first["next_run_time"] = soon + dt.timedelta(seconds=timed.first_after)
        sched.add_job(
            _guarded(jobs.lock, timed.name, timed.run), timed.trigger, id=timed.name, **first
        )
    sched.start()
    return sched
