"""Helpers of the tests that read plans on the live database."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from tests.e2e.rows import relation


def leave_only_indexes(admin: psycopg.Connection[Any], table: str, keep: list[str]) -> None:
    """Drop every other index of the table, a key's own too (its constraint, CASCADE: the foreign keys on
    it), and price out sequential scans: on nearly empty tables the planner's choice between fitting
    indexes is a coin toss, and a key led by company_id fits every company query. Only in a transaction
    that is rolled back."""
    kept = [f"public.{name}" for name in keep]
    keys = admin.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype IN ('p', 'u', 'x') "
        "AND conindid <> ALL(%s::regclass[])",
        (f"public.{table}", kept),
    ).fetchall()
    for (key,) in keys:
        admin.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {} CASCADE").format(relation(table), sql.Identifier(key)))
    others = admin.execute(
        "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = %s::regclass "
        "AND indexrelid <> ALL(%s::regclass[])",
        (f"public.{table}", kept),
    ).fetchall()
    for (other,) in others:
        admin.execute(sql.SQL("DROP INDEX {}").format(sql.SQL(other)))
    admin.execute("SET LOCAL enable_seqscan = off")
