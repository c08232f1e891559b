"""Timed work (docs/contract.md, "The life of a signal", step 10): reminders and the digest on a controlled clock, and a
scheduler that outlives a failing job."""

from __future__ import annotations

import datetime as dt
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fakes import captured_logs
from servers import MailServer
from world import (
    F1,
    F2,
    MAILBOX,
    REPORTER,
    World,
    assert_absent,
    body_text,
    marker,
    parse,
    reply,
    submit,
)
from world import signal_mail as make_signal

from inboxd import schedule
from inboxd.crontab import _crontab_weekdays, cron_trigger
from inboxd.mail_limits import release_order
from inboxd.references import find_references
from inboxd.schedule import (
    DAY,
    digest_due,
    due_reminders,
    last_fire_before,
    rows,
)
from inboxd.store import Signal

AMS = ZoneInfo("Europe/Amsterdam")
UTC = dt.UTC
WEEKDAYS = "0 9 * * mon-fri"


def ts(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, tz: Any = UTC) -> float:
    return dt.datetime(y, mo, d, h, mi, s, tzinfo=tz).timestamp()


# -- cron with crontab's meaning ---------------------------------------------------


@pytest.mark.parametrize(
    ("field", "names"),
    [
        ("*", "*"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("mon-fri", "mon,tue,wed,thu,fri"),
        ("0", "sun"),
        ("7", "sun"),
        ("6,0", "sat,sun"),
        ("5-7", "sun,fri,sat"),
        ("sun-sat", "sun,mon,tue,wed,thu,fri,sat"),
        ("*/2", "sun,tue,thu,sat"),
        ("1-5/2", "mon,wed,fri"),
    ],
)
def test_crontab_day_of_week_numbers_mean_what_cron_means(field: str, names: str) -> None:
    assert _crontab_weekdays(field) == names


@pytest.mark.parametrize("field", ["5-1", "8", "xyz", "1/0"])
def test_bad_day_of_week_is_refused(field: str) -> None:
    with pytest.raises(ValueError):
        _crontab_weekdays(field)


def test_numeric_weekdays_fire_monday_to_friday_not_tuesday_to_saturday() -> None:
    # APScheduler 3 alone reads 1-5 as Tuesday..Saturday (0 = Monday).
    trigger = cron_trigger("0 9 * * 1-5", UTC)
    fire = trigger.get_next_fire_time(None, dt.datetime(2026, 11, 22, tzinfo=UTC))  # a Sunday
    days = []
    for _ in range(5):
        days.append(fire.strftime("%a"))
        fire = trigger.get_next_fire_time(fire, fire + dt.timedelta(seconds=1))
    assert days == ["Mon", "Tue", "Wed", "Thu", "Fri"]
    assert fire.strftime("%a") == "Mon", "the weekend is skipped"


# -- last_fire_before / digest_due -------------------------------------------------


def test_last_fire_is_nine_local_on_both_sides_of_the_spring_dst_change() -> None:
    # 2026-03-29: CET (+1) becomes CEST (+2).
    friday_nine = ts(2026, 3, 27, 8)  # 09:00 CET
    monday_nine = ts(2026, 3, 30, 7)  # 09:00 CEST
    assert last_fire_before(WEEKDAYS, ts(2026, 3, 30, 7, 30), AMS) == monday_nine
    assert last_fire_before(WEEKDAYS, ts(2026, 3, 30, 6, 59), AMS) == friday_nine, "weekend"
    assert last_fire_before(WEEKDAYS, monday_nine, AMS) == monday_nine, "at the very second"


def test_last_fire_is_nine_local_after_the_autumn_dst_change() -> None:
    # 2026-10-25: CEST (+2) becomes CET (+1).
    assert last_fire_before(WEEKDAYS, ts(2026, 10, 26, 8, 0, 1), AMS) == ts(2026, 10, 26, 8)
    assert last_fire_before(WEEKDAYS, ts(2026, 10, 26, 7, 59), AMS) == ts(2026, 10, 23, 7)


def test_last_fire_none_when_nothing_fired_within_eight_days() -> None:
    assert last_fire_before("0 9 1 1 *", ts(2026, 6, 1, 12), AMS) is None


def test_last_fire_of_an_every_minute_expression() -> None:
    assert last_fire_before("* * * * *", ts(2026, 6, 1, 12, 5, 30), UTC) == ts(2026, 6, 1, 12, 5)


def test_digest_due_once_per_fire_and_never_at_the_weekend() -> None:
    friday = ts(2026, 11, 27, 8, 0, 5)  # just after 09:00 CET
    assert digest_due(WEEKDAYS, friday, ts(2026, 11, 26, 8, 1), AMS)
    assert not digest_due(WEEKDAYS, friday + 60, friday, AMS), "sent already"
    saturday = ts(2026, 11, 28, 9)  # 10:00 CET
    assert not digest_due(WEEKDAYS, saturday, friday, AMS)
    assert not digest_due(WEEKDAYS, ts(2026, 11, 30, 7, 59), friday, AMS), "Monday 08:59"
    assert digest_due(WEEKDAYS, ts(2026, 11, 30, 8), friday, AMS), "Monday 09:00"
    # A digest missed while the daemon was down is sent late, once.
    assert digest_due(WEEKDAYS, ts(2026, 12, 1, 15), friday, AMS)


# -- due_reminders / rows ----------------------------------------------------------


def sig(ref: str, created: float, **kw: Any) -> Signal:
    base: dict[str, Any] = {
        "id": ref,
        "ref": ref,
        "state": "queued",
        "source": "intern",
        "flags": frozenset(),
        "form": "",
        "destinations": (),
        "done_destinations": (),
        "size": 100,
        "attachment_count": 0,
        "created_at": created,
        "updated_at": created,
        "last_reminder_at": None,
        "hold": False,
        "no_feedback": False,
        "key_id": "k",
    }
    base.update(kw)
    return Signal(**base)


def test_due_reminders() -> None:
    now = 1_800_000_000.0
    two_days = 2 * DAY
    signals = [
        sig("old", now - two_days - 1),
        sig("young", now - two_days + 60),
        sig("held", now - 5 * DAY, hold=True),
        sig("reminded_today", now - 5 * DAY, last_reminder_at=now - 3600),
        sig("reminded_yesterday", now - 5 * DAY, last_reminder_at=now - DAY + 30),
        sig("waiting", now - 3 * DAY, state="waiting_info"),
        sig("failed", now - 3 * DAY, state="forwarding_failed"),
        sig("gone", now - 3 * DAY, state="deleted"),
    ]
    due = [s.ref for s in due_reminders(signals, now, two_days)]
    assert due == ["old", "reminded_yesterday", "waiting", "failed"]


def test_rows_carry_metadata_only() -> None:
    now = 1_800_000_000.0
    (row,) = rows([sig("VV-1", now - 2.5 * DAY, flags=frozenset({"malformed"}), hold=True)], now)
    assert row == {
        "ref": "VV-1",
        "age_days": 2.5,
        "state": "queued",
        "flags": ["malformed"],
        "hold": True,
    }


# -- a job that raises ---------------------------------------------------------------


class Captured:
    def __init__(self, buf: io.StringIO) -> None:
        self.buf = buf

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.buf.getvalue().splitlines():
            e = json.loads(line)
            if e.get("event") == name:
                out.append(e)
        return out

    def wait_for(self, name: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(name)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"{count}× {name} not logged within {timeout}s")


@pytest.fixture
def captured() -> Iterator[Captured]:
    with captured_logs() as buf:
        yield Captured(buf)


SECRET = "MRK-must-not-be-logged"


def test_guarded_job_logs_type_only_and_releases_the_lock(captured: Captured) -> None:
    lock = threading.RLock()

    def boom() -> None:
        raise RuntimeError(SECRET)

    schedule._guarded(lock, "digest", boom)()
    (event,) = captured.events("job.failed")
    assert event["job"] == "digest" and event["error"] == "RuntimeError"
    assert event["level"] == "error" and event["exception"][0]["type"] == "RuntimeError"
    assert SECRET not in captured.buf.getvalue()
    got = []
    t = threading.Thread(target=lambda: got.append(lock.acquire(timeout=5)))
    t.start()
    t.join(10)
    assert got == [True], "the work lock is free again"


class FailingOutbox:
    def __init__(self) -> None:
        self.calls = 0

    def drain(self, should_stop: Any = None) -> None:
        self.calls += 1
        raise OSError(SECRET)


def test_scheduler_keeps_running_after_a_job_raises(captured: Captured) -> None:
    outbox = FailingOutbox()
    jobs = SimpleNamespace(
        lock=threading.RLock(),
        outbox=outbox,
        cfg=SimpleNamespace(triage=SimpleNamespace(digest_cron="0 9 * * 1-5")),
    )
    stop = threading.Event()
    sched = schedule.start_scheduler(jobs, stop)  # type: ignore[arg-type]
    try:
        job = sched.get_job("outbox")
        job.modify(next_run_time=dt.datetime.now(UTC))
        captured.wait_for("job.failed", 1)
        assert sched.running
        job.modify(next_run_time=dt.datetime.now(UTC))
        failures = captured.wait_for("job.failed", 2)
        assert outbox.calls == 2 and {e["job"] for e in failures} == {"outbox"}
        assert sched.running and sched.get_job("outbox") is not None
        # The digest follows crontab's weekdays in local time, and first runs soon
        # after start (catch-up or baseline), not only at the next cron time.
        digest = sched.get_job("digest")
        assert "mon,tue,wed,thu,fri" in str(digest.trigger)
        assert digest.next_run_time - dt.datetime.now(UTC) < dt.timedelta(seconds=30)
    finally:
        sched.shutdown(wait=True)
    assert SECRET not in captured.buf.getvalue()


def test_the_timetable_names_every_job_with_its_interval_and_first_run() -> None:
    jobs = SimpleNamespace(cfg=SimpleNamespace(triage=SimpleNamespace(digest_cron=WEEKDAYS)))
    table = schedule.timetable(jobs, threading.Event(), AMS)  # type: ignore[arg-type]
    intervals = {t.name: getattr(t.trigger, "interval", None) for t in table if t.name != "digest"}
    assert intervals == {
        "outbox": dt.timedelta(seconds=30),
        "reminders": dt.timedelta(hours=1),
        "flood_notice": dt.timedelta(minutes=1),
        "release_held": dt.timedelta(minutes=1),
        "purge_sent": dt.timedelta(minutes=5),
        "shred": dt.timedelta(seconds=schedule.SHRED_RETRY),
        "housekeeping": dt.timedelta(hours=1),
    }
    assert [t.name for t in table][:3] == ["outbox", "reminders", "digest"]
    # Soon after start: reminders and the digest's catch-up, then housekeeping.
    assert {t.name: t.first_after for t in table if t.first_after is not None} == {
        "reminders": 20,
        "digest": 20,
        "housekeeping": 60,
    }
    (digest,) = [t for t in table if t.name == "digest"]
    assert "mon,tue,wed,thu,fri" in str(digest.trigger) and digest.trigger.timezone == AMS


# -- end to end: reminders and the digest with World ---------------------------------


@pytest.fixture
def world(mail: MailServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    # The municipality's clock: the digest is "09:00" in Amsterdam, summer and winter.
    monkeypatch.setattr(schedule, "local_zone", lambda: AMS)
    w = World(mail, tmp_path / "w").setup()
    w.now = ts(2026, 11, 23, 10)  # Monday 11:00 CET
    return w


def subjects(mail: MailServer, address: str, prefix: str) -> list[bytes]:
    return [
        m for m in mail.messages(address) if str(parse(m)["Subject"]).strip().startswith(prefix)
    ]


def new_signal(world: World, mail: MailServer, mark: str) -> tuple[str, bytes]:
    mail.deliver(make_signal(mark), MAILBOX)
    world.once()
    requests = [m for m in subjects(mail, F1, "Triageverzoek") if mark.encode() in m]
    assert len(requests) == 1
    ref = find_references(str(parse(requests[0])["Subject"]), "VV")[0]
    return ref, requests[0]


def reminders(mail: MailServer, address: str) -> list[bytes]:
    return subjects(mail, address, "Herinnering")


def test_reminder_once_a_day_with_metadata_only(world: World, mail: MailServer) -> None:
    mark = marker()
    ref, _ = new_signal(world, mail, mark)
    world.now += DAY
    world.once()
    assert reminders(mail, F1) == [], "not yet old enough"
    world.now += DAY + 3600
    world.once()
    for f in (F1, F2):
        (r,) = reminders(mail, f)
        text = body_text(r)
        assert f"- {ref}  2.0 dagen  queued" in text, text
        assert_absent(mark, where="a reminder", data=r)
        assert_absent(REPORTER, where="a reminder", data=r)
        assert parse(r)["Auto-Submitted"] == "auto-generated"
    world.now += 3600
    world.once()
    assert len(reminders(mail, F1)) == 1, "no second reminder the same day"
    world.now += DAY
    world.once()
    assert len(reminders(mail, F1)) == len(reminders(mail, F2)) == 2, "one a day"
    assert f"- {ref}  3.1 dagen  queued" in body_text(reminders(mail, F1)[-1])


def test_hold_stops_reminders_until_the_next_command(world: World, mail: MailServer) -> None:
    ref, request = new_signal(world, mail, marker())
    submit(mail, reply(request, "WACHT"))
    world.until_quiet()
    world.now += 3 * DAY
    world.once()
    assert reminders(mail, F1) == [] and reminders(mail, F2) == []
    submit(mail, reply(request, "VORM arbeid"))
    world.until_quiet()  # this command ends the hold
    assert len(reminders(mail, F1)) == 1
    assert ref in body_text(reminders(mail, F1)[0])


def test_signals_due_at_different_hours_share_one_reminder_a_day(
    world: World, mail: MailServer
) -> None:
    ref_a, _ = new_signal(world, mail, marker())
    world.now += 4 * 3600
    ref_b, _ = new_signal(world, mail, marker())
    world.now += 2 * DAY - 3 * 3600  # A is due, B not yet
    world.once()
    (first,) = reminders(mail, F1)
    assert ref_a in body_text(first) and ref_b not in body_text(first)
    world.now += 4 * 3600  # B is due: one mail with both
    world.once()
    second = reminders(mail, F1)[-1]
    assert ref_a in body_text(second) and ref_b in body_text(second)
    world.now += DAY - 4 * 3600  # A's old hour on the next day: nothing yet
    world.once()
    assert len(reminders(mail, F1)) == 2
    world.now += 4 * 3600
    world.once()
    third = reminders(mail, F1)[-1]
    assert len(reminders(mail, F1)) == 3
    assert ref_a in body_text(third) and ref_b in body_text(third)


def digests(mail: MailServer, address: str) -> list[bytes]:
    return subjects(mail, address, "Overzicht")


def test_digest_at_its_cron_time_lists_open_signals_without_content(
    world: World, mail: MailServer
) -> None:
    world.now = ts(2026, 11, 23, 7)  # Monday 08:00 CET
    mark = marker()
    ref, _ = new_signal(world, mail, mark)  # the first run sets the baseline only
    assert digests(mail, F1) == []
    world.now = ts(2026, 11, 23, 7, 59, 59)
    world.once()
    assert digests(mail, F1) == []
    world.now = ts(2026, 11, 23, 8, 0, 30)  # 09:00:30 CET
    world.once()
    for f in (F1, F2):
        (d,) = digests(mail, f)
        assert str(parse(d)["Subject"]) == "Overzicht meldpunt vreemdverhaal: 1 open"
        assert f"- {ref}  0.0 dagen  queued" in body_text(d)
        assert_absent(mark, where="a digest", data=d)
        assert_absent(REPORTER, where="a digest", data=d)
    world.now += 1800
    world.once()
    assert len(digests(mail, F1)) == 1, "once per cron time"
    world.now = ts(2026, 11, 28, 9)  # Saturday 10:00
    world.once()
    assert len(digests(mail, F1)) == 2, "the days missed are caught up with one digest"
    world.now = ts(2026, 11, 29, 9)  # Sunday
    world.once()
    assert len(digests(mail, F1)) == 2, "none at the weekend"
    world.now = ts(2026, 11, 30, 8, 0, 1)  # Monday 09:00:01
    world.once()
    assert len(digests(mail, F1)) == 3


def test_first_run_sends_no_digest_even_after_a_cron_time(world: World, mail: MailServer) -> None:
    world.now = ts(2026, 11, 23, 12)  # Monday, long after 09:00
    world.once()
    assert digests(mail, F1) == [], "a fresh store starts counting from now"
    world.now = ts(2026, 11, 24, 8, 0, 1)
    world.once()
    (d,) = digests(mail, F1)
    assert "Er staan geen signalen open." in body_text(d)


def test_digest_at_nine_local_in_summer_time(world: World, mail: MailServer) -> None:
    world.now = ts(2026, 7, 6, 6, 30)  # Monday 08:30 CEST
    world.once()
    world.now = ts(2026, 7, 6, 7, 0, 30)  # 09:00:30 CEST, 08:00:30 CET
    world.once()
    assert len(digests(mail, F1)) == 1


def test_housekeeping_vacuums_once_a_week(world: World, mail: MailServer) -> None:
    def vacuums() -> int:
        return world.log_text().count('"event": "store.vacuumed"')

    world.once()
    assert vacuums() == 1, "a fresh store is vacuumed at once"
    world.now += 6 * DAY
    world.once()
    assert vacuums() == 1
    world.now += DAY
    world.once()
    assert vacuums() == 2


def test_held_signals_are_released_senders_taking_turns_fewest_first() -> None:
    held = [
        ("a1", "flood"),
        ("a2", "flood"),
        ("b1", "forged"),
        ("a3", "flood"),
        ("c1", "colleague"),
        ("b2", "forged"),
    ]
    assert [s for s, _ in release_order(held)] == ["c1", "b1", "a1", "b2", "a2", "a3"]
    assert release_order([]) == []
    # Verified sender evidence goes before every turn of the others.
    verified = release_order(held, verified={"a3", "b2"})
    assert [s for s, _ in verified] == ["a3", "b2", "b1", "c1", "a1", "a2"]
