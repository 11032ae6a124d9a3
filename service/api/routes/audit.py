"""The audit log (service/management/audit.py): a project's admin actions, newest first, read by its admins."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Depends, Query

from adapters.errors import InvalidRequest
from adapters.registry import AuditFilter
from adapters.schema import AUDIT_ID_RE, DEFAULT_PROJECT, KEY_ID_RE
from service.api.auth import PrincipalDep, require_admin
from service.api.deps import GatewayDep
from service.management import audit
from service.protocol.audit import AuditList
from service.protocol.common import MANAGEMENT_ERRORS

router = APIRouter(tags=["audit"])


@router.get(
    "/v1/audit",
    response_model=AuditList,
    responses=MANAGEMENT_ERRORS,
    dependencies=[Depends(require_admin)],
    summary="The audit log of the key's project: who did what and how it ended, newest first (admin)",
)
async def list_audit(
    gw: GatewayDep,
    principal: PrincipalDep,
    after: str | None = Query(None, description="cursor: the id of the last entry of the previous page"),
    limit: int = Query(20, ge=1, le=100),
    action: str | None = Query(None, description="only entries of this action, e.g. `adapter.delete`"),
    outcome: Literal["succeeded", "failed"] | None = Query(None, description="only actions that ended this way"),
    object_id: str | None = Query(None, description="only entries of this object, e.g. `file-abc123` or `shout@3`"),
    actor_key_id: str | None = Query(None, description="only entries of this key, by its public id (`key_` and 16 hex "
                                     "digits, as `actor.key_id` shows it)"),
    start_time: float | None = Query(None, ge=0, description="only entries at or after this time (unix seconds)"),
    end_time: float | None = Query(None, ge=0, description="only entries before this time (unix seconds)"),
) -> AuditList:
    if after is not None and not AUDIT_ID_RE.fullmatch(after):
        raise InvalidRequest(f"after: {after!r} is not an audit entry id", param="after", code="invalid_parameter")
    if actor_key_id is not None and not KEY_ID_RE.fullmatch(actor_key_id):
        # Not echoed: what was sent may be a key itself, pasted where its id belongs.
        raise InvalidRequest("actor_key_id is not a key's id (key_ and 16 hex digits)", param="actor_key_id",
                             code="invalid_parameter")
    if start_time is not None and end_time is not None and end_time <= start_time:
        raise InvalidRequest("end_time must be after start_time", param="end_time", code="invalid_parameter")
    where = AuditFilter(action=action, outcome=outcome, object_id=object_id, actor_key_id=actor_key_id,
                        start_time=start_time, end_time=end_time)
    # Every project's log lies at the root, under audit/<project>/, where the gateway's one writer puts it.
    root = gw.registry.for_project(DEFAULT_PROJECT)
    return await asyncio.to_thread(audit.list_entries, root, principal.project, after, limit, where)
