"""Roles, schemas, extensions, privileges and functions, read from `sql/access.yaml`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from psycopg import sql
from pydantic import Field

from components.database.declared import SQL_DIR, read_yaml
from components.database.declared.model import Data
from components.database.kinds.function import FunctionSpec
from components.database.kinds.role import RoleSpec
from config.settings import DEFAULT_COMPANY_CLAIM

ACCESS_FILE = SQL_DIR / "access.yaml"


class RoleData(Data):
    name: str
    login: bool = False
    inherit: bool = True
    bypass_rls: bool = False
    password: str | None = Field(default=None, description="The config key holding its password.")
    member_of: list[str] = Field(default_factory=list)
    admin_member: bool = Field(default=False, description="The admin the stack connects as is made a member.")

    def role_spec(self, members: list[str]) -> RoleSpec:
        """The role without its password, which comes from the stack's config (the key `password` names).
        Whether it is adopted is not declared: a role that exists when it is made is (kinds/role.py)."""
        return RoleSpec(
            name=self.name,
            login=self.login,
            bypass_rls=self.bypass_rls,
            inherit=self.inherit,
            member_of=self.member_of,
            members=members,
            admin_member=self.admin_member,
        )


class SchemaData(Data):
    name: str
    owner: str


class ExtensionData(Data):
    name: str
    schema_name: str | None = Field(default=None, alias="schema")


class FunctionData(Data):
    schema_name: str = Field(alias="schema")
    name: str
    arguments: str
    returns: str
    language: Literal["sql", "plpgsql"]
    volatility: Literal["volatile", "stable", "immutable"]
    security_definer: bool
    search_path: str | None
    execute: list[str]
    body: str

    def function_spec(self, owner: str, company_claim: str = DEFAULT_COMPANY_CLAIM) -> FunctionSpec:
        """The function; `{companyClaim}` in its body is where the claims hold the company (thorbis:companyClaim)."""
        return FunctionSpec(
            schema_name=self.schema_name,
            name=self.name,
            arguments=self.arguments,
            returns=self.returns,
            language=self.language,
            body=self.body.replace("{companyClaim}", claim_path(company_claim)),
            volatility=self.volatility,
            security_definer=self.security_definer,
            search_path=self.search_path,
            owner=owner,
            grant_execute_to=self.execute,
        )


def claim_path(claim: str) -> str:
    """A claim's dotted path as the text[] literal `#>>` takes: a.company_id -> '{a,company_id}'."""
    return sql.Literal("{" + ",".join(claim.split(".")) + "}").as_string()


class AccessModel(Data):
    owner: str
    roles: list[RoleData]
    read_all: list[str] = Field(description="Roles that read every company's rows of every table, by a policy.")
    schemas: list[SchemaData]
    extensions: list[ExtensionData]
    schema_usage: dict[str, list[str]]
    schema_create: dict[str, list[str]] = Field(default_factory=dict)
    table_privileges: dict[str, list[str]]
    functions: list[FunctionData]

    def role_specs(self) -> list[RoleSpec]:
        """Each role, with the roles that declare themselves its members."""
        return [
            role.role_spec([other.name for other in self.roles if role.name in other.member_of]) for role in self.roles
        ]


def load_access(path: Path = ACCESS_FILE) -> AccessModel:
    return AccessModel.model_validate(read_yaml(path))
