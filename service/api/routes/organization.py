"""OpenAI's admin API for projects and their keys, for operator keys (service/management/projects.py): the routes
reach the whole store (RootGatewayDep), never a project's objects."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from adapters.errors import InvalidRequest
from adapters.schema import AUDIT_ID_RE
from service.api.auth import require_operator
from service.api.deps import RootGatewayDep
from service.management import audit, projects
from service.protocol.audit import AuditList
from service.protocol.common import MANAGEMENT_ERRORS as ERRORS
from service.protocol.projects import (
    ApiKeyDeleted,
    ApiKeyList,
    ApiKeyObject,
    CreateApiKey,
    CreateProject,
    ProjectList,
    ProjectObject,
)

router = APIRouter(tags=["organization"], dependencies=[Depends(require_operator)])
PROJECT = "/v1/organization/projects/{project_id}"


@router.post("/v1/organization/projects", response_model=ProjectObject, responses=ERRORS,
             summary="Create a project (operator)")
async def create_project(body: CreateProject, gw: RootGatewayDep) -> ProjectObject:
    return await projects.create_project(gw, body.name)


@router.get("/v1/organization/projects", response_model=ProjectList, responses=ERRORS,
            summary="Every project, the default one first (operator)")
async def list_projects(
    gw: RootGatewayDep,
    after: str | None = Query(None, description="cursor: the id of the last project of the previous page"),
    limit: int = Query(100, ge=1, le=10_000),
    include_archived: bool = Query(False),
) -> ProjectList:
    return await projects.list_projects(gw, after, limit, include_archived)


@router.get(PROJECT, response_model=ProjectObject, responses=ERRORS, summary="One project (operator)")
async def get_project(project_id: str, gw: RootGatewayDep) -> ProjectObject:
    return await projects.get_project(gw, project_id)


@router.post(PROJECT + "/archive", response_model=ProjectObject, responses=ERRORS,
             summary="Archive a project: every key of it revoked, its objects kept (operator)")
async def archive_project(project_id: str, gw: RootGatewayDep) -> ProjectObject:
    return await projects.archive_project(gw, project_id)


@router.post(PROJECT + "/api_keys", response_model=ApiKeyObject, responses=ERRORS,
             summary="Create a key of the project; its `value` is shown in this answer only (operator)")
async def create_key(project_id: str, body: CreateApiKey, gw: RootGatewayDep) -> ApiKeyObject:
    return await projects.create_key(gw, project_id, body.role, body.name)


@router.get(PROJECT + "/api_keys", response_model=ApiKeyList, responses=ERRORS,
            summary="The project's keys, revoked ones included, never their values (operator)")
async def list_keys(
    project_id: str,
    gw: RootGatewayDep,
    after: str | None = Query(None, description="cursor: the id of the last key of the previous page"),
    limit: int = Query(100, ge=1, le=10_000),
) -> ApiKeyList:
    return await projects.list_keys(gw, project_id, after, limit)


@router.get(PROJECT + "/api_keys/{key_id}", response_model=ApiKeyObject, responses=ERRORS,
            summary="One key of the project (operator)")
async def get_key(project_id: str, key_id: str, gw: RootGatewayDep) -> ApiKeyObject:
    return await projects.get_key(gw, project_id, key_id)


@router.delete(PROJECT + "/api_keys/{key_id}", response_model=ApiKeyDeleted, responses=ERRORS,
               summary="Revoke a key: refused by every replica within key_cache_ttl_s; its record kept (operator)")
async def revoke_key(project_id: str, key_id: str, gw: RootGatewayDep) -> ApiKeyDeleted:
    return await projects.revoke_key(gw, project_id, key_id)


@router.post(PROJECT + "/api_keys/{key_id}/rotate", response_model=ApiKeyObject, responses=ERRORS,
             summary="A new key with the same name and role, the old one revoked; the new `value` shown once "
             "(operator)")
async def rotate_key(project_id: str, key_id: str, gw: RootGatewayDep) -> ApiKeyObject:
    return await projects.rotate_key(gw, project_id, key_id)


@router.get(
    "/v1/organization/audit_logs",
    response_model=AuditList,
    responses=ERRORS,
    summary="The organisation's audit log: every operator action on projects and keys, newest first (operator)",
)
async def list_audit_logs(
    gw: RootGatewayDep,
    project_ids: Annotated[list[str] | None, Query(alias="project_ids[]", description="only actions on these")] = None,
    event_types: Annotated[list[str] | None, Query(alias="event_types[]", description="only these actions")] = None,
    after: str | None = Query(None, description="cursor: the id of the last entry of the previous page"),
    limit: int = Query(20, ge=1, le=100),
) -> AuditList:
    if after is not None and not AUDIT_ID_RE.fullmatch(after):
        raise InvalidRequest(f"after: {after!r} is not an audit entry id", param="after", code="invalid_parameter")
    return await asyncio.to_thread(
        audit.list_organization_entries, gw.registry, after, limit, project_ids or [], event_types or []
    )
