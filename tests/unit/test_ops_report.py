"""The reports of scripts/pr-preview and scripts/drift, rendered from engine events recorded on a real stack.

tests/fixtures/ops_events/ holds events of a throwaway stack (secrets masked by the engine, as always):
refresh_drift.jsonl from `refresh --preview-only` after changes made by hand (a stopped replica, a PgBouncer
SET, RLS disabled, a dropped index, an altered policy); preview_refreshed.jsonl from a plain `preview` (which
refreshes first: Pulumi.yaml `refresh: always`) after RLS disabled, an index dropped and a policy altered by
hand (events of unchanged objects left out but two); preview_allowed.jsonl from `preview` of a program
with a new table, a new index and a column removed on a stack that allows data loss; preview_refused.jsonl
the same on a stack that does not, where the provider refuses at check.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pulumi.automation import EngineEvent

from ops import EXIT_DESTRUCTIVE, EXIT_DRIFT, EXIT_FAILED, EXIT_OK
from ops.cli import destroy_refusal
from ops.drift import Difference, differences, render_text, show
from ops.events import Change, EventLog
from ops.preview import PreviewOutcome, render_markdown
from ops.risk import destructive
from ops.sql_preview import planned_sql
from ops.verify import CheckResult, render_table

EVENTS = Path(__file__).resolve().parents[1] / "fixtures" / "ops_events"


def replay(name: str) -> EventLog:
    log = EventLog()
    for line in (EVENTS / name).read_text().splitlines():
        log(EngineEvent.from_json(json.loads(line)))
    return log


def by_name(log: EventLog) -> dict[str, Change]:
    return {change.name: change for change in log.listed}


def test_drift_names_every_object_changed_by_hand_with_recorded_and_live_values() -> None:
    drift = by_name(replay("refresh_drift.jsonl"))
    assert set(drift) >= {
        "thorbis-replica-0",
        "thorbis-pgbouncer",
        "table-customers",
        "index-jobs_customer_id_idx",
        "policy-invoices_tenant_select",
    }
    found = {(d.name, d.property): (d.recorded, d.live) for change in drift.values() for d in differences(change)}
    assert found[("thorbis-replica-0", "streaming")] == ("true", "false")
    assert found[("thorbis-pgbouncer", "defaultPoolSize")] == ("10", "7")
    assert found[("table-customers", "rowLevelSecurity")][1] == "false"
    assert found[("index-jobs_customer_id_idx", "(the object)")] == ("exists", "gone")
    assert found[("policy-invoices_tenant_select", "using")] == (
        "company_id = (SELECT app.current_company_id())",
        "true",
    )


def test_the_drift_report_is_one_row_per_property_and_says_how_to_repair() -> None:
    log = replay("refresh_drift.jsonl")
    report = render_text("dev", log.listed)
    assert report.startswith(f"Drift on stack dev: {len(log.listed)} object(s) differ")
    assert "thorbisdb:local:PgBouncer thorbis-pgbouncer" in report and "defaultPoolSize" in report
    assert "pulumi up --stack dev (it reads the live servers first)" in report
    assert "[secret]" not in report  # no secret property drifted; none is shown even masked
    assert render_text("dev", []).startswith("No drift")


def test_a_plain_preview_finds_the_drift_in_its_refresh_and_plans_the_repair() -> None:
    log = replay("preview_refreshed.jsonl")
    found = {(d.name, d.property): (d.recorded, d.live) for change in log.drift for d in differences(change)}
    # recorded before RLS became a kind of its own (RowSecurity): no kind says the field's healthy value now
    assert found == {
        ("table-customers", "rowLevelSecurity"): ("(none)", "false"),
        ("index-jobs_company_id_customer_id_idx", "(the object)"): ("exists", "gone"),
        ("policy-invoices_tenant_select", "using"): ("company_id = (SELECT app.current_company_id())", "true"),
    }
    planned = {change.name: change.op for change in log.listed}
    assert planned == {
        "table-customers": "update",
        "index-jobs_company_id_customer_id_idx": "create",
        "policy-invoices_tenant_select": "update",
    }
    assert log.unchanged == 2
    summary = render_markdown(PreviewOutcome("dev", log.listed, log.unchanged, drift=log.drift))
    assert summary.splitlines()[0].endswith(": drift")
    assert "`pulumi up` puts them back" in summary
    assert "`thorbisdb:db:Index` `index-jobs_company_id_customer_id_idx`: gone" in summary


def test_unchanged_objects_are_counted_not_listed() -> None:
    log = replay("refresh_drift.jsonl")
    assert log.unchanged >= 1
    assert all(change.op not in ("same", "refresh") for change in log.listed)


def test_secrets_are_shown_masked() -> None:
    assert (
        show({"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270", "ciphertext": "x"}) == "[secret]"
    )
    assert show(None) == "(none)" and show(["a"]) == '["a"]' and len(show("x" * 500)) == 100


def test_sql_of_new_indexes_policies_and_tables_comes_from_the_kinds_renderers() -> None:
    changes = by_name(replay("preview_allowed.jsonl"))
    assert planned_sql(changes["index-customers_loyalty_tier_idx"]) == [
        'CREATE INDEX CONCURRENTLY IF NOT EXISTS "customers_loyalty_tier_idx" ON "public"."customers" '
        'USING btree ("company_id", "loyalty_tier")'
    ]
    assert planned_sql(changes["policy-customer_badges_tenant_select"]) == [
        'CREATE POLICY "customer_badges_tenant_select" ON "public"."customer_badges" AS PERMISSIVE FOR SELECT '
        'TO "authenticated" USING (company_id = (SELECT app.current_company_id()))'
    ]
    create_table = planned_sql(changes["table-customer_badges"]) or []
    assert create_table[0].startswith('CREATE TABLE "public"."customer_badges" (')
    assert create_table[1:] == [  # every statement the create runs, its owner and comment included
        'ALTER TABLE "public"."customer_badges" ENABLE ROW LEVEL SECURITY',
        'ALTER TABLE "public"."customer_badges" FORCE ROW LEVEL SECURITY',
        'ALTER TABLE "public"."customer_badges" OWNER TO "thorbis_owner"',
        'COMMENT ON TABLE "public"."customer_badges" IS \'A badge a customer earned.\'',
    ]
    assert planned_sql(changes["table-customers"]) == [
        'ALTER TABLE "public"."customers" ADD COLUMN "loyalty_tier" text',
        'ALTER TABLE "public"."customers" DROP COLUMN "notes"',
    ]
    assert planned_sql(changes["trigger-customer_badges-updated-at"]) is None  # computed at apply time


def test_a_column_dropped_on_a_stack_that_allows_it_is_destructive() -> None:
    log = replay("preview_allowed.jsonl")
    assert destructive(log.listed, log.errors) == ["column customers.notes would be dropped"]


def test_a_refusal_of_the_provider_is_destructive_and_said_first() -> None:
    log = replay("preview_refused.jsonl")
    losses = destructive(log.listed, log.errors)
    assert losses == ["column customers.notes would be dropped (refused: thorbis:allowDataLoss is false)"]
    outcome = PreviewOutcome("dev", log.listed, log.unchanged, destructive=losses, refused=True)
    summary = render_markdown(outcome)
    assert outcome.exit_code == EXIT_DESTRUCTIVE
    assert summary.splitlines()[0] == "## thorbis-db preview of stack `dev`: destructive change"
    head = summary.split("**", 1)[0] + summary.split("\n\n", 3)[2]  # the title, the note, the risks
    assert "Destructive change" in head and "column customers.notes would be dropped" in head
    assert "The preview stopped at the refusal" in summary


def test_the_summary_groups_changes_by_kind_with_their_properties_and_sql() -> None:
    log = replay("preview_allowed.jsonl")
    outcome = PreviewOutcome("dev", log.listed, log.unchanged, destructive=destructive(log.listed, log.errors))
    summary = render_markdown(outcome)
    assert "**2 to update, 8 to create**" in summary
    assert "### `thorbisdb:db:Policy`: 4 to create" in summary
    assert "- **update** `table-customers`: columns" in summary
    assert "  - SQL: computed at apply time" in summary  # the trigger
    assert summary.index("Destructive change") < summary.index("### ")
    assert "ciphertext" not in summary


def test_drift_is_called_out_above_the_changes() -> None:
    drift = replay("refresh_drift.jsonl").listed
    summary = render_markdown(PreviewOutcome("dev", [], 576, drift=drift))
    assert summary.splitlines()[0].endswith(": drift")
    assert "`thorbisdb:db:Index` `index-jobs_customer_id_idx`: gone" in summary
    assert summary.index("**Drift**") < summary.index("**No changes**")


def test_access_beyond_the_declaration_is_a_risk_listed_worst_first() -> None:
    """Undeclared privileges and policies found by the refresh (status fields marked Access), by kind, not name."""
    leaks = [
        Change(
            "update",
            "urn:x::exact-privileges",
            "thorbisdb:db:ExactPrivileges",
            ("undeclared",),
            old_outputs={"undeclared": []},
            new_outputs={"undeclared": ["anon: SELECT on table public.jobs", "anon: TRUNCATE on table public.jobs"]},
        ),
        Change(
            "update",
            "urn:x::row-security-customers",
            "thorbisdb:db:RowSecurity",
            ("undeclaredPolicies",),
            old_outputs={"undeclaredPolicies": []},
            new_outputs={"undeclaredPolicies": ["leak: PERMISSIVE FOR SELECT TO public USING (true)"]},
        ),
    ]
    summary = render_markdown(PreviewOutcome("dev", [], 576, drift=leaks))
    risks = summary[summary.index("**Access beyond the declaration**") : summary.index("**Drift**")]
    assert risks.splitlines()[1:4] == [
        "> - `exact-privileges`: anon: TRUNCATE on table public.jobs",
        "> - `exact-privileges`: anon: SELECT on table public.jobs",
        "> - `row-security-customers`: leak: PERMISSIVE FOR SELECT TO public USING (true)",
    ]


@pytest.mark.parametrize(
    ("outcome", "code"),
    [
        (PreviewOutcome("dev"), EXIT_OK),
        (PreviewOutcome("dev", drift=[Change("update", "urn:x::a", "t")]), EXIT_DRIFT),
        (PreviewOutcome("dev", drift=[Change("update", "urn:x::a", "t")], destructive=["x"]), EXIT_DESTRUCTIVE),
        (PreviewOutcome("dev", failure="boom"), EXIT_FAILED),
    ],
)
def test_exit_codes(outcome: PreviewOutcome, code: int) -> None:
    assert outcome.exit_code == code


def test_no_changes_says_so() -> None:
    summary = render_markdown(PreviewOutcome("dev", unchanged=576))
    assert summary == (
        "## thorbis-db preview of stack `dev`: no risk found\n\n"
        "Compared with the live servers: `pulumi preview` reads them first (Pulumi.yaml `refresh: always`).\n\n"
        "**No changes**. 576 object(s) unchanged.\n"
    )


def test_the_verify_table_has_a_row_per_check() -> None:
    table = render_table([CheckResult("RLS on every table", "PASS", "94/94"), CheckResult("Redis", "FAIL", "down")])
    lines = table.splitlines()
    assert lines[0].split() == ["check", "result", "detail"]
    assert lines[2].startswith("RLS on every table  PASS    94/94")
    assert lines[3].split() == ["Redis", "FAIL", "down"]


def test_a_status_field_the_state_never_recorded_is_shown_with_its_expected_value() -> None:
    """Drift of a status field (Expect markers): a role whose password was changed by hand, recorded by a
    create that did not report passwordMatches, shows what the stack expects against what is live."""
    change = Change(
        "update",
        "urn:pulumi:dev::thorbis-db::thorbis:database:Layer$thorbisdb:db:Role::role-reporting",
        "thorbisdb:db:Role",
        properties=("passwordMatches",),
        old_outputs={"name": "reporting", "adopted": False},
        new_outputs={"name": "reporting", "adopted": False, "passwordMatches": False},
    )
    assert differences(change) == [
        Difference("thorbisdb:db:Role", "role-reporting", "passwordMatches", "true", "false")
    ]


def test_make_destroy_refuses_naming_allow_data_loss_and_the_commands() -> None:
    refusal = destroy_refusal("staging", allow_data_loss=False)
    assert refusal is not None
    assert "thorbis:allowDataLoss is false" in refusal and "Nothing was changed" in refusal
    commands = [line.strip().split("  #")[0].strip() for line in refusal.splitlines() if line.startswith("  ")]
    assert commands == [
        "pulumi config set thorbis:allowDataLoss true --stack staging",
        "pulumi up --stack staging",
        "make destroy STACK=staging",
    ]
    assert "unprotect" not in refusal
    assert destroy_refusal("staging", allow_data_loss=True) is None
