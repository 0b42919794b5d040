"""What went wrong in a stack's configuration, said once per problem, and the error that carries them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi

SECRET_SHOWN_AS = "<secret>"
_MAX_VALUE_CHARS = 80


@dataclass(frozen=True)
class Problem:
    """One problem: the full key (`thorbis:replicas.count`), its value as shown, and what to do."""

    key: str
    value: str | None
    """The bad value, already rendered by `show_value` (`<secret>` for secrets); None when not set."""
    reason: str

    def line(self, stack: str) -> str:
        """The one line a person reads: stack, key, value, what is allowed or what to do."""
        where = f"{self.key} (not set)" if self.value is None else f"{self.key} = {self.value}"
        return f"stack '{stack}': {where}: {self.reason}"


def show_value(value: object, *, secret: bool = False) -> str:
    """A value as it would be written in the stack file, shortened; secrets are never shown."""
    if secret:
        return SECRET_SHOWN_AS
    try:
        text = json.dumps(value, separators=(", ", ": "), sort_keys=False)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > _MAX_VALUE_CHARS:
        text = text[: _MAX_VALUE_CHARS - 3] + "..."
    return text


class ConfigError(pulumi.RunError):
    """The configuration of a stack is invalid; `str(error)` lists every problem, one per line."""

    def __init__(self, stack: str, problems: Sequence[Problem]) -> None:
        self.stack = stack
        self.problems = tuple(problems)
        super().__init__(self._message())

    def _message(self) -> str:
        lines = [problem.line(self.stack) for problem in self.problems]
        if len(lines) == 1:
            return lines[0]
        header = f"stack '{self.stack}': {len(lines)} configuration problems (see Pulumi.{self.stack}.yaml):"
        return "\n".join([header, *(f"  - {line}" for line in lines)])

    def __str__(self) -> str:
        return self._message()
