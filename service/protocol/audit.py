"""The audit log as GET /v1/audit shows it: entries newest first, in OpenAI's list shape with cursor paging."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from adapters.schema import AuditActor, AuditEntry


class AuditEntryObject(BaseModel):
    """One admin or operator action: who (a key's id, never the key), when, what, and how it ended."""

    id: str
    object: Literal["audit.entry"] = "audit.entry"
    created_at: float = Field(description="when the action was answered (unix seconds)")
    actor: AuditActor
    action: str = Field(description="e.g. `adapter.train`, `alias.set`, `file.delete`, `adapter.publish`")
    method: str | None = Field(None, description="the HTTP method; null for the gateway's own work")
    route: str | None = Field(None, description="the route's template, e.g. `/v1/files/{file_id}`")
    object_id: str | None = Field(None, description="the object made or changed: its id, or name@version")
    params: dict[str, str] = Field(default_factory=dict, description="the route's path parameters")
    detail: dict[str, str] = Field(default_factory=dict)
    status_code: int | None = None
    error_code: str | None = Field(None, description="the error's `code` when the action failed")
    outcome: Literal["succeeded", "failed"]
    project: str | None = Field(
        None, description="the project an operator's action (/v1/organization) was on; null for a project's own"
    )

    @classmethod
    def of(cls, entry: AuditEntry) -> AuditEntryObject:
        return cls(created_at=entry.at, **entry.model_dump(exclude={"at"}))


class AuditList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AuditEntryObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
