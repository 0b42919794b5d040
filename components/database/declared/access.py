"""Roles, schemas, extensions, privileges and functions, read from `sql/access.yaml`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field

from components.database.declared import SQL_DIR
from components.database.declared.model import Data
from components.database.kinds.function import FunctionSpec
from components.database.kinds.role import RoleSpec

ACCESS_FILE = SQL_DIR / "access.yaml"


class RoleData(Data):
    name: str
    login: bool = False
    inherit: bool = True
    bypass_rls: bool = False
    password: str | None = Field(default=None, description="The config key holding its password.")
    member_of: list[str] = Field(default_factory=list)

    def role_spec(self) -> RoleSpec:
        """The role without its password, which comes from the stack's config (the key `password` names),
        nor whether it is adopted, which the platform says (ConnectionSpec.platform_owns_roles)."""
        return RoleSpec(
            name=self.name,
            login=self.login,
            bypass_rls=self.bypass_rls,
            inherit=self.inherit,
            member_of=self.member_of,
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

    def function_spec(self, owner: str) -> FunctionSpec:
        return FunctionSpec(
            schema_name=self.schema_name,
            name=self.name,
            arguments=self.arguments,
            returns=self.returns,
            language=self.language,
            body=self.body,
            volatility=self.volatility,
            security_definer=self.security_definer,
            search_path=self.search_path,
            owner=owner,
            grant_execute_to=self.execute,
        )


class AccessModel(Data):
    owner: str
    roles: list[RoleData]
    schemas: list[SchemaData]
    extensions: list[ExtensionData]
    schema_usage: dict[str, list[str]]
    table_privileges: dict[str, list[str]]
    functions: list[FunctionData]


def load_access(path: Path = ACCESS_FILE) -> AccessModel:
    return AccessModel.model_validate(yaml.safe_load(path.read_text()))
