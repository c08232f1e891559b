"""Crontab expressions with crontab's meaning, in the machine's local time.

At the bottom with the settings: the configuration checks ``triage.digest_cron``
with the same reading the scheduler runs it by.
"""

from __future__ import annotations

import datetime as dt

from apscheduler.triggers.cron import CronTrigger
from tzlocal import get_localzone

_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def local_zone() -> dt.tzinfo:
    """The machine's time zone with its DST rules. (A fixed UTC offset taken from the
    current moment would put the digest an hour off for half of the year.)"""
    return get_localzone()


def _crontab_weekdays(field: str) -> str:
    """Crontab day-of-week numbers (0 and 7 Sunday, 1 Monday) as APScheduler names.

    APScheduler 3 reads numbers as 0 = Monday, so "0 9 * * 1-5" would mean Tuesday to
    Saturday, and "sun-sat" would be no range at all: every part is spelled out as
    a list of names, which both read the same way.
    """
    out: list[str] = []
    for part in field.split(","):
        if part == "*":
            out.append(part)
            continue
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if span == "*":
            first, last = 0, 6
        else:
            lo, _, hi = span.partition("-")
            first = _weekday_number(lo)
            last = _weekday_number(hi) if hi else (6 if step_text else first)
        if step < 1 or last < first:
            raise ValueError(f"bad day-of-week range {part!r}")
        days = {n % 7 for n in range(first, last + 1, step)}
        out += [_WEEKDAYS[n] for n in sorted(days)]
    return ",".join(dict.fromkeys(out))


def _weekday_number(text: str) -> int:
    t = text.strip().lower()
    if t.isdigit():
        n = int(t)
        if n > 7:
            raise ValueError(f"bad day of week {text!r}")
        return n
    if t in _WEEKDAYS:
        return _WEEKDAYS.index(t)
    raise ValueError(f"bad day of week {text!r}")


def cron_trigger(cron: str, tz: dt.tzinfo | None = None) -> CronTrigger:
    """A crontab expression with crontab's meaning, in ``tz`` (default: local time)."""
    values = cron.split()
    if len(values) != 5:
        raise ValueError(f"wrong number of fields: {len(values)}, expected 5")
    minute, hour, day, month, weekday = values
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=_crontab_weekdays(weekday),
        timezone=tz or local_zone(),
    )
