"""Cron expressions as people write them -> APScheduler 3 triggers.

Five fields (minute hour day month weekday) as in crontab, or six with seconds first. Weekdays follow
crontab (0 and 7 are Sunday); APScheduler 3 counts 0 as Monday, so they are translated to names here,
and an expression that restricts both day-of-month and weekday is refused: crontab fires when either
matches, APScheduler only when both do.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

from apscheduler.triggers.cron import CronTrigger

DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def timezone(name: str) -> dt.tzinfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as 'UTC' or 'Europe/Berlin')") from None


def _day(token: str) -> int:
    token = token.lower()
    if token in DAY_NAMES:
        return DAY_NAMES.index(token)
    if token.isdigit() and 0 <= int(token) <= 7:
        return int(token) % 7
    raise ValueError(f"weekday {token!r} is not 0-7 or sun..sat")


def _weekdays(field: str) -> str:
    """A crontab weekday field -> APScheduler's, as explicit day names ('*' stays '*')."""
    if field == "*":
        return field
    days: set[int] = set()
    for item in field.split(","):
        span, _, step_text = item.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise ValueError(f"weekday step {step_text!r} must be a positive number")
        if span == "*":
            first, last = 0, 6
        elif "-" in span:
            a, b = span.split("-", 1)
            first, last = _day(a), (7 if b.strip() == "7" else _day(b))
            if last < first:
                raise ValueError(f"weekday range {span!r} runs backwards")
        else:
            first = last = _day(span)
            if step:
                last = 6
        days.update(d % 7 for d in range(first, last + 1, step or 1))
    return ",".join(DAY_NAMES[d] for d in sorted(days))


def trigger(expression: str, tz: dt.tzinfo) -> CronTrigger:
    """Parse a 5-field (crontab) or 6-field (seconds first) expression; ValueError says what is wrong."""
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise ValueError(f"{expression!r} has {len(fields)} fields; give 5 (minute hour day month weekday) "
                         "or 6 (second minute hour day month weekday)")
    second = fields[0] if len(fields) == 6 else "0"
    minute, hour, day, month, weekday = fields[-5:]
    if day != "*" and weekday != "*":
        raise ValueError(f"{expression!r} restricts both the day of the month and the weekday: crontab runs "
                         "when either matches, this scheduler only when both do; restrict one of them")
    try:
        return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month,
                           day_of_week=_weekdays(weekday), timezone=tz)
    except ValueError as exc:
        raise ValueError(f"{expression!r}: {exc}") from None
