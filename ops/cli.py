"""Entry points of scripts/pr-preview, scripts/drift, scripts/verify and scripts/connect-info (exit codes:
ops/__init__.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import pulumi.automation as auto

from components.database.kinds.destroy_guard import data_loss_commands
from ops import EXIT_DESTRUCTIVE, EXIT_DRIFT, EXIT_FAILED, EXIT_OK, connect_info
from ops.drift import find_drift, render_text
from ops.preview import render_markdown, run_preview
from ops.stack import ToolError, last_line, open_stack, read_access, read_connection
from ops.verify import render_table, verify


def arguments(prog: str, description: str, argv: list[str], out: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("stack", help="the stack's name (dev, staging, prod, ...)")
    parser.add_argument("--work-dir", type=Path, default=None, help="the project directory (default: this clone)")
    if out:
        parser.add_argument("--out", type=Path, default=None, help="write the Markdown summary here (default: stdout)")
    return parser.parse_args(argv)


def pr_preview(argv: list[str]) -> int:
    """0 no risk, 2 destructive change, 3 drift, 1 the tool (or the preview, for another reason) failed."""
    args = arguments("pr-preview", "A pull request's summary of `pulumi preview`, in Markdown.", argv, out=True)
    outcome = run_preview(open_stack(args.stack, args.work_dir))
    summary = render_markdown(outcome)
    if args.out:
        args.out.write_text(summary)
        print(f"pr-preview: summary of stack {args.stack} written to {args.out} (exit {outcome.exit_code})")
    else:
        sys.stdout.write(summary)
    return outcome.exit_code


def drift(argv: list[str]) -> int:
    """0 no drift, 3 drift, 1 the tool failed."""
    args = arguments("drift", "What differs on the live platform from what the stack recorded.", argv)
    found = find_drift(open_stack(args.stack, args.work_dir))
    sys.stdout.write(render_text(args.stack, found))
    return EXIT_DRIFT if found else EXIT_OK


def verify_stack(argv: list[str]) -> int:
    """0 every check passed (or was skipped), 1 any failed."""
    args = arguments("verify", "The live platform against the review's success metrics.", argv)
    results = verify(read_access(open_stack(args.stack, args.work_dir)))
    sys.stdout.write(render_table(results))
    failed = [result.check for result in results if result.result == "FAIL"]
    print(f"\nverify: {len(results) - len(failed)} of {len(results)} checks passed or skipped", end="")
    print(f"; FAILED: {', '.join(failed)}" if failed else "")
    return EXIT_FAILED if failed else EXIT_OK


def connect(argv: list[str]) -> int:
    """Where the stack's platform listens; with --admin-dsn or --redis-password, only that secret."""
    parser = argparse.ArgumentParser(prog="connect-info", description="How to connect to a stack's platform.")
    parser.add_argument("stack", help="the stack's name (dev, staging, prod, ...)")
    parser.add_argument("--work-dir", type=Path, default=None, help="the project directory (default: this clone)")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--admin-dsn", action="store_true", help="print the admin connection string (a secret)")
    secret.add_argument("--redis-password", action="store_true", help="print Redis's password (a secret)")
    args = parser.parse_args(argv)
    connection = read_connection(open_stack(args.stack, args.work_dir))
    if args.admin_dsn:
        print(connect_info.admin_dsn(connection))
    elif args.redis_password:
        print(connection.redis_password or "")
    else:
        sys.stdout.write(connect_info.render(args.stack, connection))
    return EXIT_OK


def destroy_refusal(stack: str, allow_data_loss: bool) -> str | None:
    """Why `make destroy` stops before Pulumi is asked, and the commands that destroy the data on purpose (a
    plain `pulumi destroy` is refused by the stack's DestroyGuard, with the same commands, while tables hold
    rows)."""
    if allow_data_loss:
        return None
    return "\n".join(
        [
            f"destroy: refusing to destroy stack {stack}: thorbis:allowDataLoss is false. Nothing was changed. To",
            "destroy the stack and its data on purpose:",
            *(f"  {command}" for command in data_loss_commands(stack)),
        ]
    )


def destroy(argv: list[str]) -> int:
    """2 refused (data loss not allowed), 0 destroyed, 1 the destroy failed."""
    args = arguments("destroy", "Destroy a stack, refusing first when it does not allow data loss.", argv)
    stack = open_stack(args.stack, args.work_dir)
    try:
        allowed = stack.get_config("thorbis:allowDataLoss").value.strip().lower() == "true"
    except auto.CommandError:  # not set: the default, false
        allowed = False
    refusal = destroy_refusal(args.stack, allowed)
    if refusal is not None:
        print(refusal, file=sys.stderr)
        return EXIT_DESTRUCTIVE
    try:
        stack.destroy(on_output=print)
    except auto.CommandError as error:
        raise ToolError(last_line(str(error))) from error
    return EXIT_OK


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "destroy": destroy,
    "pr-preview": pr_preview,
    "drift": drift,
    "verify": verify_stack,
    "connect-info": connect,
}


def main(argv: list[str] | None = None) -> int:
    command, *rest = argv if argv is not None else sys.argv[1:]
    try:
        return COMMANDS[command](rest)
    except ToolError as error:
        print(f"{command}: {error}", file=sys.stderr)
        return EXIT_FAILED
    except SystemExit as exit_:  # argparse's usage errors exit 2, which means "destructive" here
        return EXIT_OK if exit_.code in (0, None) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
