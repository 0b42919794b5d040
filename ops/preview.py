"""A pull request's view of `pulumi preview`: what changes per kind, the SQL with the lock each statement
takes, the work it does and the rows it touches, and the risks on top."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
import pulumi.automation as auto

from components.kind import ACCESS, marked
from components.registry import kind_of
from ops import EXIT_DESTRUCTIVE, EXIT_DRIFT, EXIT_FAILED, EXIT_OK
from ops.drift import GONE, Difference, differences
from ops.events import Change, EventLog
from ops.risk import destructive, refusals
from ops.sql_preview import Step, planned_steps
from ops.stack import ToolError, last_line, read_connection

#: How each operation is said in the summary, in the order they are listed.
DATABASE_KINDS = "thorbisdb:db:"
NO_SQL = frozenset({"thorbisdb:db:Manifest"})
#: Said under the title: what the preview compared the program with.
LIVE_NOTE = "Compared with the live servers: `pulumi preview` reads them first (Pulumi.yaml `refresh: always`)."
VERBS = {"create": "create", "update": "update", "replace": "replace", "delete": "delete", "import": "import"}


@dataclass
class PreviewOutcome:
    """Everything the summary says about one stack."""

    stack: str
    changes: list[Change] = field(default_factory=list)
    unchanged: int = 0
    drift: list[Change] = field(default_factory=list)
    destructive: list[str] = field(default_factory=list)
    refused: bool = False  # the provider refused to lose data, so the preview stopped there
    failure: str | None = None  # the preview failed for a reason other than a data-loss refusal
    #: Per change (URN), its steps planned against the live database, where the preview could reach it.
    plans: dict[str, list[Step] | None] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.destructive:
            return EXIT_DESTRUCTIVE
        if self.failure:
            return EXIT_FAILED
        return EXIT_DRIFT if self.drift else EXIT_OK


def run_preview(stack: auto.Stack) -> PreviewOutcome:
    """One `pulumi preview`, which reads the live servers first (Pulumi.yaml `refresh: always`): what its
    refresh found is the drift, what it then plans the changes. A refusal to lose data is a finding, not a
    failure."""
    outcome = PreviewOutcome(stack.name)
    log = EventLog()
    try:
        stack.preview(on_event=log)
    except auto.CommandError as error:
        outcome.failure = last_line(log.errors[-1] if log.errors else str(error))
    outcome.drift = log.drift
    outcome.changes = log.listed
    outcome.unchanged = log.unchanged
    outcome.destructive = destructive(log.listed, log.errors)
    outcome.refused = bool(refusals(log.errors))
    if outcome.refused:
        outcome.failure = None
    with live_database(stack) as conn:
        if conn is not None:
            outcome.plans = {change.urn: planned_steps(change, conn) for change in outcome.changes}
    return outcome


@contextmanager
def live_database(stack: auto.Stack) -> Iterator[psycopg.Connection | None]:
    """The stack's database, from its outputs, when the preview can reach it (read-only use); else None."""
    try:
        connection = read_connection(stack)
        conn = psycopg.connect(**connection.conninfo(), autocommit=True, application_name="thorbisdb-preview")
    except (ToolError, psycopg.Error, auto.CommandError):
        yield None
        return
    with conn:
        yield conn


# --- render: the Markdown summary ---------------------------------------------------------------------


def counted(ops: Counter[str]) -> str:
    return ", ".join(f"{count} to {verb}" for verb, count in ops.items())


def risk_section(outcome: PreviewOutcome) -> list[str]:
    lines: list[str] = []
    if outcome.destructive:
        lines += [
            "> [!CAUTION]",
            "> **Destructive change**: data would be lost. "
            + (
                "The provider refuses it (`thorbis:allowDataLoss` is false): `pulumi up` would fail."
                if outcome.refused
                else "This stack allows data loss (`thorbis:allowDataLoss`): `pulumi up` would do it."
            ),
            *(f"> - {loss}" for loss in outcome.destructive),
            "",
        ]
    exposed = access_beyond_declaration(outcome.drift)
    if exposed:
        lines += [
            "> [!CAUTION]",
            f"> **Access beyond the declaration**: {len(exposed)} privilege(s) or policy(ies) the stack does not "
            "declare; `pulumi up` removes them.",
            *(f"> - {item}" for item in exposed),
            "",
        ]
    if outcome.drift:
        lines += [
            "> [!WARNING]",
            f"> **Drift**: {len(outcome.drift)} object(s) differ from what the stack recorded (changed by hand);",
            "> `pulumi up` puts them back (it reads the live servers first);",
            f"> `scripts/drift {outcome.stack}` lists them.",
            *(f"> - {drift_line(d)}" for change in outcome.drift for d in differences(change)),
            "",
        ]
    if outcome.failure:
        lines += ["> [!CAUTION]", f"> **The preview failed**: {outcome.failure}", ""]
    return lines


#: Privileges that reach past row level security or change what a table does: listed first.
OVERREACHING = ("TRUNCATE", "TRIGGER", "REFERENCES")


def access_beyond_declaration(drift: list[Change]) -> list[str]:
    """What drifted status fields marked Access list (undeclared privileges and policies), the worst first."""
    found: list[str] = []
    for change in drift:
        kind = kind_of(change.type)
        if kind is None or change.new_outputs is None:
            continue
        for listed in sorted(marked(kind.status_type, ACCESS)):
            found += [f"`{change.name}`: {item}" for item in change.new_outputs.get(listed) or []]
    return sorted(found, key=lambda item: not any(word in item for word in OVERREACHING))


def drift_line(difference: Difference) -> str:
    what = f"`{difference.type}` `{difference.name}`"
    if difference.live == GONE:
        return f"{what}: gone"
    return f"{what}: {difference.property} (recorded {difference.recorded}, live {difference.live})"


def change_lines(change: Change, plans: dict[str, list[Step] | None]) -> list[str]:
    verb = VERBS.get(change.op, change.op)
    properties = [f"{key} (forces replacement)" if key in change.replace_keys else key for key in change.properties]
    line = f"- **{verb}** `{change.name}`" + (f": {', '.join(properties)}" if properties else "")
    if not change.type.startswith(DATABASE_KINDS) or change.type in NO_SQL:
        return [line]  # servers, providers and the manifest (a record of intent) run no SQL
    steps = plans[change.urn] if change.urn in plans else planned_steps(change)
    if steps is None:
        return [line, "  - SQL: computed at apply time"]
    if not steps:
        return [line]
    shown = [text for step in steps for text in (f"  -- {step.note()}", f"  {step.sql};")]
    return [line, "  ```sql", *shown, "  ```"]


def changes_section(outcome: PreviewOutcome) -> list[str]:
    if not outcome.changes:
        partial = " (the preview stopped at the refusal)" if outcome.refused else ""
        return [f"**No changes**{partial}. {outcome.unchanged} object(s) unchanged.", ""]
    total = Counter(VERBS.get(change.op, change.op) for change in outcome.changes)
    lines = [f"**{counted(total)}**; {outcome.unchanged} object(s) unchanged.", ""]
    if outcome.refused:
        lines += ["The preview stopped at the refusal: below is what it had planned by then.", ""]
    by_kind: dict[str, list[Change]] = defaultdict(list)
    for change in outcome.changes:
        by_kind[change.type].append(change)
    for kind in sorted(by_kind):
        kind_ops = Counter(VERBS.get(change.op, change.op) for change in by_kind[kind])
        lines += [f"### `{kind}`: {counted(kind_ops)}", ""]
        for change in sorted(by_kind[kind], key=lambda c: (list(VERBS).index(c.op) if c.op in VERBS else 99, c.name)):
            lines += change_lines(change, outcome.plans)
        lines.append("")
    return lines


def render_markdown(outcome: PreviewOutcome) -> str:
    """The summary a reviewer reads: risks first, then the changes per kind with their SQL."""
    verdict = {
        EXIT_OK: "no risk found",
        EXIT_DESTRUCTIVE: "destructive change",
        EXIT_DRIFT: "drift",
        EXIT_FAILED: "preview failed",
    }[outcome.exit_code]
    lines = [f"## thorbis-db preview of stack `{outcome.stack}`: {verdict}", "", LIVE_NOTE, ""]
    lines += risk_section(outcome)
    lines += changes_section(outcome)
    return "\n".join(lines).rstrip() + "\n"
