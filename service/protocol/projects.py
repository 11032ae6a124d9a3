"""OpenAI's admin API for projects and their API keys (/v1/organization/projects ...): the wire types.

Where OpenAI's shapes stop (it makes project keys in its dashboard, not through the API), creating and rotating a
key answer the key object with its `value`, the one time the key is shown."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CreateProject(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="a name for people: the id is made here")


class ProjectObject(BaseModel):
    object: Literal["organization.project"] = "organization.project"
    id: str
    name: str
    created_at: int
    archived_at: int | None = None
    status: Literal["active", "archived"] = "active"


class ProjectList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ProjectObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class CreateApiKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=200, description="a name for people (who holds the key, what for)")
    role: Literal["admin", "inference"] = Field(
        "inference", description="inference: the model API; admin: also train, publish, promote and delete"
    )


class KeyOwner(BaseModel):
    type: Literal["service_account"] = "service_account"
    role: Literal["admin", "inference"]


class ApiKeyObject(BaseModel):
    object: Literal["organization.project.api_key"] = "organization.project.api_key"
    id: str
    name: str
    project_id: str
    redacted_value: str
    created_at: int
    last_used_at: int | None = None
    revoked_at: int | None = None
    owner: KeyOwner
    value: str | None = Field(None, description="the key itself: only in the answer that made it, never again")


class ApiKeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ApiKeyObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class ApiKeyDeleted(BaseModel):
    object: Literal["organization.project.api_key.deleted"] = "organization.project.api_key.deleted"
    id: str
    deleted: bool = True
