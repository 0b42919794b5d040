"""Cron schedules read field by field as cron (and pg_cron, which uses its parser) reads them, so a value
neither would run (`99 * * * *`) stops the preview instead of `up`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic_core import PydanticCustomError


@dataclass(frozen=True)
class CronField:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names for low, low + 1, ...


FIELDS = (
    CronField("minute", 0, 59),
    CronField("hour", 0, 23),
    CronField("day of month", 1, 31),
    CronField("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
    CronField("day of week", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)
ITEM = re.compile(r"^(?P<range>\*|[a-z0-9$]+(-[a-z0-9$]+)?)(/(?P<step>\d+))?$")


def five_fields(schedule: str) -> str:
    """`schedule` unchanged when it is not five fields (the pattern judged those) or each field holds."""
    parts = schedule.split()
    if schedule.startswith("@") or len(parts) != len(FIELDS):
        return schedule
    for field, text in zip(FIELDS, parts, strict=True):
        problem = field_problem(field, text.lower())
        if problem is not None:
            raise PydanticCustomError(
                "thorbis_cron_field",
                "the {field} field '{text}' {problem}",
                {"field": field.name, "text": text, "problem": problem},
            )
    return schedule


def field_problem(field: CronField, text: str) -> str | None:
    for item in text.split(","):
        match = ITEM.match(item)
        if match is None:
            return "is not a list of *, numbers, ranges a-b and steps /n"
        if match["step"] is not None and int(match["step"]) == 0:
            return "has a step of 0"
        bounds = [] if match["range"] == "*" else match["range"].split("-")
        for bound in bounds:
            value = number(field, bound)
            if value is None or not field.low <= value <= field.high:
                return f"has {bound}, outside {field.low}-{field.high}"
    return None


def number(field: CronField, text: str) -> int | None:
    if text == "$" and field.name == "day of month":  # pg_cron: the month's last day
        return field.high
    if text.isdigit():
        return int(text)
    return field.names.index(text) + field.low if text in field.names else None
