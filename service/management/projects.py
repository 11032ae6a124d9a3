"""Projects and their API keys, the use cases behind /v1/organization (operator keys only): create, list, read and
archive projects; create, list, read, revoke and rotate a project's keys. Every store call runs off the event loop.
A revoked key stops working on every replica within `key_cache_ttl_s` (service/api/auth.StoredKeys)."""

from __future__ import annotations

import asyncio

from adapters.schema import ApiKeyRecord, KeyRole, ProjectRecord
from service.gateway import Gateway
from service.protocol.common import page
from service.protocol.projects import (
    ApiKeyDeleted,
    ApiKeyList,
    ApiKeyObject,
    KeyOwner,
    ProjectList,
    ProjectObject,
)


def _time(value: float | None) -> int | None:
    return None if value is None else int(value)


def project_object(record: ProjectRecord) -> ProjectObject:
    return ProjectObject(
        id=record.id, name=record.name, created_at=int(record.created_at), archived_at=_time(record.archived_at),
        status="archived" if record.archived_at else "active",
    )


def key_object(record: ApiKeyRecord, value: str | None = None) -> ApiKeyObject:
    return ApiKeyObject(
        id=record.id, name=record.name, project_id=record.project, redacted_value=record.redacted,
        created_at=int(record.created_at), revoked_at=_time(record.revoked_at), owner=KeyOwner(role=record.role),
        value=value,
    )


async def create_project(gw: Gateway, name: str) -> ProjectObject:
    return project_object(await asyncio.to_thread(gw.registry.create_project, name))


async def list_projects(gw: Gateway, after: str | None, limit: int, include_archived: bool) -> ProjectList:
    projects = await asyncio.to_thread(gw.registry.list_projects)
    shown = [p for p in projects if include_archived or not p.archived_at]
    chosen, more = page(shown, after, limit, lambda p: p.id)
    data = [project_object(p) for p in chosen]
    return ProjectList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                       has_more=more)


async def get_project(gw: Gateway, project_id: str) -> ProjectObject:
    return project_object(await asyncio.to_thread(gw.registry.get_project, project_id))


async def archive_project(gw: Gateway, project_id: str) -> ProjectObject:
    return project_object(await asyncio.to_thread(gw.registry.archive_project, project_id))


async def create_key(gw: Gateway, project_id: str, role: KeyRole, name: str) -> ApiKeyObject:
    record, value = await asyncio.to_thread(gw.registry.create_api_key, project_id, role, name)
    return key_object(record, value)


async def list_keys(gw: Gateway, project_id: str, after: str | None, limit: int) -> ApiKeyList:
    await asyncio.to_thread(gw.registry.get_project, project_id)  # 404 for an unknown project
    keys = await asyncio.to_thread(gw.registry.list_api_keys, project_id)
    chosen, more = page(keys, after, limit, lambda k: k.id)
    data = [key_object(k) for k in chosen]
    return ApiKeyList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                      has_more=more)


async def get_key(gw: Gateway, project_id: str, key_id: str) -> ApiKeyObject:
    return key_object(await asyncio.to_thread(gw.registry.get_api_key, project_id, key_id))


async def revoke_key(gw: Gateway, project_id: str, key_id: str) -> ApiKeyDeleted:
    record = await asyncio.to_thread(gw.registry.revoke_api_key, project_id, key_id)
    return ApiKeyDeleted(id=record.id)


async def rotate_key(gw: Gateway, project_id: str, key_id: str) -> ApiKeyObject:
    record, value = await asyncio.to_thread(gw.registry.rotate_api_key, project_id, key_id)
    return key_object(record, value)
