"""The tenant-scoped searches (sql/search.yaml) and the two functions each becomes: the matcher reads past
row level security, so what keeps it to the caller's company is checked here on the generated SQL (the
e2e tests attack the live functions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from components.database.declared.model import load_schema
from components.database.declared.search import SEARCH_FILE, SearchData, SearchModel, load_searches
from components.database.declared.tenancy import COMPANY_HELPER

SCHEMA = load_schema()
MODEL = load_searches(SCHEMA)
SPECS = MODEL.function_specs("thorbis_owner")


def test_every_search_is_a_matcher_and_the_function_applications_call() -> None:
    names = [(spec.schema_name, spec.name) for spec in SPECS]
    expected = [
        pair
        for search in MODEL.searches
        for pair in ((MODEL.matcher_schema, search.matcher_name), (MODEL.schema_name, search.name))
    ]
    assert names == expected
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("search", MODEL.searches, ids=[search.name for search in MODEL.searches])
def test_the_matcher_reads_past_rls_only_for_the_claims_company(search: SearchData) -> None:
    """SECURITY DEFINER with an empty search_path, owned by the search owner, callable by the callers only;
    the company is its query's last parameter, bound to the helper that reads the claims, and ANDed to the
    search's own condition; no argument is that parameter."""
    matcher = next(spec for spec in SPECS if spec.name == search.matcher_name)
    assert matcher.security_definer and matcher.search_path == "" and matcher.owner == MODEL.owner
    assert matcher.grant_execute_to == MODEL.callers and matcher.language == "plpgsql"
    query = search.matcher_query().as_string()
    company = f"${len(search.arguments) + 1}"
    assert f'WHERE "{search.table}"."company_id" = {company} AND (' in query
    assert f"{company}" not in search.where
    arguments = ", ".join(f'"{argument.name}"' for argument in search.arguments)
    assert f"USING {arguments}, {COMPANY_HELPER};" in matcher.body


@pytest.mark.parametrize("search", MODEL.searches, ids=[search.name for search in MODEL.searches])
def test_the_function_applications_call_reads_the_rows_under_their_own_rls(search: SearchData) -> None:
    function = next(spec for spec in SPECS if spec.schema_name == MODEL.schema_name and spec.name == search.name)
    assert not function.security_definer and function.search_path is None  # inlined into the caller's query
    assert function.volatility == "stable"  # PostgREST calls it by GET too
    assert function.returns == f'SETOF "public"."{search.table}"'
    assert f'"{MODEL.matcher_schema}"."{search.matcher_name}"' in function.body


def edited(change: dict[str, Any]) -> dict[str, Any]:
    content: dict[str, Any] = yaml.safe_load(SEARCH_FILE.read_text())
    return {**content, "searches": [{**content["searches"][0], **change}]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"table": "customer_tags"}, "customer_tags is not a company table with an id"),
        ({"table": "companies"}, "companies is not a company table with an id"),
        ({"serves": ["jobs_company_open_scheduled_idx"]}, "not indexes of customers"),
    ],
)
def test_a_search_the_schema_cannot_hold_is_refused_naming_it(
    change: dict[str, Any], message: str, tmp_path: Path
) -> None:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(edited(change)))
    with pytest.raises(ValueError, match=f"search search_customers: .*{message}"):
        load_searches(SCHEMA, path)


def test_arguments_must_be_distinct_names() -> None:
    twice = [{"name": "term", "type": "text", "example": "1"}] * 2
    with pytest.raises(ValueError, match="arguments must have distinct names"):
        SearchModel.model_validate(edited({"arguments": twice}))
