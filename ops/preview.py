"""A pull request's view of `pulumi preview`: what changes per kind, the SQL, and the risks on top."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pulumi.automation as auto

from ops import EXIT_DESTRUCTIVE, EXIT_DRIFT, EXIT_FAILED, EXIT_OK
from ops.drift import GONE, Difference, differences
from ops.events import Change, EventLog
from ops.risk import destructive, refusals
from ops.sql_preview import planned_sql
from ops.stack import last_line

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
    return outcome


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


def drift_line(difference: Difference) -> str:
    what = f"`{difference.type}` `{difference.name}`"
    if difference.live == GONE:
        return f"{what}: gone"
    return f"{what}: {difference.property} (recorded {difference.recorded}, live {difference.live})"


def change_lines(change: Change) -> list[str]:
    verb = VERBS.get(change.op, change.op)
    properties = [f"{key} (forces replacement)" if key in change.replace_keys else key for key in change.properties]
    line = f"- **{verb}** `{change.name}`" + (f": {', '.join(properties)}" if properties else "")
    if not change.type.startswith(DATABASE_KINDS) or change.type in NO_SQL:
        return [line]  # servers, providers and the manifest (a record of intent) run no SQL
    statements = planned_sql(change)
    if statements is None:
        return [line, "  - SQL: computed at apply time"]
    if not statements:
        return [line]
    return [line, "  ```sql", *(f"  {statement};" for statement in statements), "  ```"]


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
            lines += change_lines(change)
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
