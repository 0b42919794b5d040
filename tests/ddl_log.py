"""The DDL our provider executed, read back from the server's own log, and squawk's findings over it.

A stack started with LOG_SETTINGS writes every statement to a CSV log (`log_statement = all`). The
statements of our sessions (application_name `thorbisdb`) are split per transaction, as the server ran
them: an explicit transaction (BEGIN to COMMIT) is one file; the statements run outside one (SET, then
CREATE INDEX CONCURRENTLY) are one file per run between transactions. A transaction that rolled back
changed nothing (a comparison on a temporary copy, an attempt that timed out and was retried) and is left
out, as are those that changed no schema (catalog reads). squawk (tools/squawk, configured once by
.squawk.toml at the project's root) then lints each file.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT

#: thorbis:postgres.settings that make a stack's server log every statement as CSV, in its data directory.
LOG_SETTINGS = {
    "logging_collector": "on",
    "log_destination": "csvlog",
    "log_statement": "all",
    "log_directory": "log",
    "log_rotation_size": "0",
}
APPLICATION = "thorbisdb"
SQUAWK = ROOT / "tools" / "squawk" / "node_modules" / ".bin" / "squawk"
SQUAWK_CONFIG = ROOT / ".squawk.toml"
#: CSV log columns (PostgreSQL 15): where the session, its line, the message and the application are.
SESSION, LINE, SEVERITY, MESSAGE, APPLICATION_NAME = 5, 6, 11, 13, 22
STATEMENT = re.compile(r"^(?:statement|execute [^:]*): (.*)$", re.DOTALL)
#: Statements that change nothing of the schema or the rows: a transaction of only these is left out.
READS = re.compile(
    r"^\s*(SELECT|SHOW|SET|RESET|BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|WITH\s+\w+\s+AS\s*\(\s*SELECT)\b", re.I
)


@dataclass(frozen=True)
class Transaction:
    session: str
    statements: tuple[str, ...]

    @property
    def changes_schema(self) -> bool:
        return any(not READS.match(statement) for statement in self.statements)

    def sql(self) -> str:
        return "".join(f"{statement.rstrip().rstrip(';')};\n" for statement in self.statements)


def log_lines(state_dir: Path) -> list[list[str]]:
    """Every line of the CSV logs of the servers under `state_dir`."""
    csv.field_size_limit(sys.maxsize)  # a logged statement (a function's body, a long array) can be large
    rows: list[list[str]] = []
    for path in sorted(state_dir.rglob("log/*.csv")):
        with path.open(newline="", errors="replace") as handle:
            rows += list(csv.reader(handle))
    return rows


def provider_transactions(state_dir: Path, after: set[str] | None = None) -> list[Transaction]:
    """Our sessions' statements, per transaction (see the module's doc), in the order each session ran them;
    sessions named in `after` (those of an earlier run, see `sessions`) are left out."""
    per_session: dict[str, list[tuple[int, str, str]]] = {}
    for row in log_lines(state_dir):
        if len(row) <= APPLICATION_NAME or row[APPLICATION_NAME] != APPLICATION or row[SESSION] in (after or set()):
            continue
        per_session.setdefault(row[SESSION], []).append((int(row[LINE]), row[SEVERITY], row[MESSAGE]))
    transactions: list[Transaction] = []
    for session, lines in per_session.items():
        transactions += split(session, [(severity, message) for _, severity, message in sorted(lines)])
    return [transaction for transaction in transactions if transaction.changes_schema]


DETAIL, QUERY = 14, 19


def deadlocks(state_dir: Path, after: set[str] | None = None) -> list[str]:
    """Each deadlock the server reported: which session lost it (application), the cycle, the statement."""
    return [
        f"{row[APPLICATION_NAME] or '(no application name)'} lost: {row[DETAIL]} running: {row[QUERY][:300]}"
        for row in log_lines(state_dir)
        if len(row) > APPLICATION_NAME and row[MESSAGE] == "deadlock detected" and row[SESSION] not in (after or set())
    ]


def sessions(state_dir: Path) -> set[str]:
    """The sessions logged so far (to leave out of a later reading)."""
    return {row[SESSION] for row in log_lines(state_dir) if len(row) > SESSION}


def split(session: str, lines: list[tuple[str, str]]) -> list[Transaction]:
    done: list[Transaction] = []
    current: list[str] = []
    explicit = failed = False
    for severity, message in lines:
        if severity == "ERROR":
            failed = True
            continue
        found = STATEMENT.match(message)
        if found is None:
            continue
        statement = found.group(1).strip()
        keyword = statement.split(None, 1)[0].upper() if statement else ""
        if keyword in ("BEGIN", "START"):
            if current and not explicit and not failed:
                done.append(Transaction(session, tuple(current)))
            current, explicit, failed = [statement], True, False
        elif keyword in ("COMMIT", "END", "ROLLBACK", "ABORT") and explicit:
            if keyword in ("COMMIT", "END") and not failed:
                done.append(Transaction(session, (*current, statement)))
            current, explicit, failed = [], False, False
        else:
            if failed and not explicit:
                current, failed = [], False
            current.append(statement)
    if current and not explicit and not failed:
        done.append(Transaction(session, tuple(current)))
    return done


@dataclass(frozen=True)
class Finding:
    rule: str
    message: str
    statement: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.message} in: {self.statement[:300]}"


def squawk(transactions: list[Transaction], directory: Path) -> list[Finding]:
    """squawk's findings over each transaction (one file each), with the statement each points at."""
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for number, transaction in enumerate(transactions):
        path = directory / f"{number:05d}.sql"
        path.write_text(transaction.sql())
        files.append(path)
    if not files:
        return []
    result = subprocess.run(
        [str(SQUAWK), "--config", str(SQUAWK_CONFIG), "--reporter", "json", *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if result.returncode not in (0, 1) or not result.stdout.strip().startswith("["):
        raise RuntimeError(f"squawk failed ({result.returncode}): {result.stderr.strip() or result.stdout[:500]}")
    findings = []
    for item in json.loads(result.stdout):
        lines = Path(item["file"]).read_text().splitlines()
        statement = lines[item["line"]] if item["line"] < len(lines) else ""
        findings.append(Finding(item["rule_name"], item["message"], statement))
    return findings
