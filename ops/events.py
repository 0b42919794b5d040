"""The engine's events of one `pulumi preview` or `refresh --preview-only`, kept as plain changes.

The Automation API hands every engine event to an `on_event` callback; `EventLog` is that callback. It
keeps, per resource, what the engine plans to do (ResourcePreEvent) or, for a refresh, what it found
(ResOutputsEvent: recorded state in `old`, live state in `new`), and the error diagnostics. A preview
refreshes first (Pulumi.yaml `refresh: always`): what its refresh steps found differs is kept apart, as
`drift`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pulumi.automation import EngineEvent, OpType, StepEventMetadata

#: Operations that change nothing (a preview's `same`, a refresh step that found the object as recorded).
UNCHANGED = frozenset({OpType.SAME, OpType.READ, OpType.REFRESH})
#: The steps of one replacement (their order depends on delete-before-replace): one change, `replace`.
REPLACEMENT = frozenset({OpType.REPLACE, OpType.CREATE_REPLACEMENT, OpType.DELETE_REPLACED})


@dataclass(frozen=True)
class Change:
    """One resource the engine would touch (preview) or found different (refresh)."""

    op: str
    urn: str
    type: str
    properties: tuple[str, ...] = ()  # the properties that differ
    replace_keys: tuple[str, ...] = ()  # the ones that force a replacement
    old_inputs: dict[str, Any] = field(default_factory=dict)
    old_outputs: dict[str, Any] = field(default_factory=dict)
    new_inputs: dict[str, Any] = field(default_factory=dict)
    new_outputs: dict[str, Any] | None = None  # None: the object is gone (refresh)

    @property
    def name(self) -> str:
        """The resource's name in the program: the URN's last part."""
        return self.urn.rsplit("::", 1)[-1]

    @classmethod
    def from_metadata(cls, metadata: StepEventMetadata) -> Change:
        detailed = metadata.detailed_diff or {}
        properties = list(metadata.diffs or detailed)
        replace_keys = [key for key, diff in detailed.items() if str(diff.diff_kind.value).endswith("replace")]
        replace_keys += [key for key in metadata.keys or [] if key not in replace_keys]
        old, new = metadata.old, metadata.new
        op = OpType(metadata.op)
        return cls(
            op="replace" if op in REPLACEMENT else str(op.value),
            urn=metadata.urn,
            type=metadata.type,
            properties=tuple(properties),
            replace_keys=tuple(replace_keys),
            old_inputs=dict(old.inputs or {}) if old else {},
            old_outputs=dict(old.outputs or {}) if old else {},
            new_inputs=dict(new.inputs or {}) if new else {},
            new_outputs=(dict(new.outputs or {}) if new.outputs is not None else {}) if new else None,
        )


@dataclass
class EventLog:
    """An `on_event` callback that keeps the changes and the error messages of one engine run."""

    changes: dict[str, Change] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    #: What the refresh steps of a preview found different from the state (a refresh alone reports it
    #: with the result's op instead, in `changes`).
    found_drift: dict[str, Change] = field(default_factory=dict)

    def __call__(self, event: EngineEvent) -> None:
        if event.resource_pre_event:
            self.keep(event.resource_pre_event.metadata)
        elif event.res_outputs_event:
            self.keep_refreshed(event.res_outputs_event.metadata)
            self.keep(event.res_outputs_event.metadata)
        elif event.diagnostic_event and event.diagnostic_event.severity == "error":
            self.errors.append(event.diagnostic_event.message.strip())

    def keep_refreshed(self, metadata: StepEventMetadata) -> None:
        """A preview's refresh step that found the object changed or gone."""
        if metadata.op != OpType.REFRESH or metadata.type == "pulumi:pulumi:Stack":
            return
        gone = metadata.new is None or metadata.new.outputs is None
        if metadata.diffs or gone:
            self.found_drift[metadata.urn] = replace(Change.from_metadata(metadata), op="delete" if gone else "update")

    def keep(self, metadata: StepEventMetadata) -> None:
        """The first event that shows a change wins: a refresh announces every step as `refresh` and
        reports what it found in the outputs event; a preview announces its plan in the pre event."""
        if metadata.type == "pulumi:pulumi:Stack":
            return
        self.seen.add(metadata.urn)
        if metadata.op in UNCHANGED:
            return
        kept = self.changes.get(metadata.urn)
        # of a replacement's steps, keep one that carries both the old state and the new inputs
        if kept is None or (kept.op == "replace" and not (kept.old_inputs and kept.new_inputs)):
            self.changes[metadata.urn] = Change.from_metadata(metadata)

    @property
    def unchanged(self) -> int:
        return len(self.seen - set(self.changes))

    @property
    def listed(self) -> list[Change]:
        return list(self.changes.values())

    @property
    def drift(self) -> list[Change]:
        return list(self.found_drift.values())
