"""The audit log's one recording point: a pure ASGI middleware that, after every state-changing request of a known
route, hands who sent it (service/api/auth.py's Principal: the key's id, never the key), the action, the route's
template, its path parameters and how it was answered to the gateway's AuditWriter (service/management/audit.py).

One place rather than a line in every route, so a new admin route is audited the day it is added (named by ACTIONS,
or by its method and template until it has a name: tests/test_audit.py fails on a route without one). Recording costs
the request a copy of at most 64 KiB of its answer and a queue put; nothing it does can fail the request.
"""

from __future__ import annotations

import logging
import time

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters.schema import AuditActor, new_audit_id
from service.api.auth import principal_of
from service.errors import APIError
from service.management.audit import MAX_BODY_BYTES, Answered
from service.settings import Settings

log = logging.getLogger("skillserve.audit")

CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# What changes nothing of a project's objects, though sent with POST: generation, and graders run on one sample.
NOT_ACTIONS = frozenset({
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/fine_tuning/alpha/graders/validate"),
    ("POST", "/v1/fine_tuning/alpha/graders/run"),
})
# The name of each action, what `GET /v1/audit?action=` filters on (docs/audit.md lists them).
ACTIONS = {
    ("POST", "/adapters"): "adapter.train",
    ("POST", "/adapters/import"): "adapter.import",
    ("DELETE", "/adapters/{model}"): "adapter.delete",
    ("POST", "/adapters/{name}/aliases"): "alias.set",
    ("DELETE", "/jobs/{job_id}"): "job.cancel",
    ("POST", "/jobs/{job_id}/checkpoints/{step}/publish"): "checkpoint.publish",
    ("POST", "/v1/files"): "file.upload",
    ("DELETE", "/v1/files/{file_id}"): "file.delete",
    ("POST", "/v1/fine_tuning/jobs"): "fine_tuning.job.create",
    ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel"): "fine_tuning.job.cancel",
    ("DELETE", "/v1/models/{model_id:path}"): "model.delete",
    ("POST", "/v1/evals"): "eval.create",
    ("POST", "/v1/evals/{eval_id}"): "eval.update",
    ("DELETE", "/v1/evals/{eval_id}"): "eval.delete",
    ("POST", "/v1/evals/{eval_id}/runs"): "eval.run.create",
    ("POST", "/v1/evals/{eval_id}/runs/{run_id}"): "eval.run.cancel",
    ("POST", "/v1/evals/{eval_id}/runs/{run_id}/cancel"): "eval.run.cancel",
    ("DELETE", "/v1/evals/{eval_id}/runs/{run_id}"): "eval.run.delete",
    ("POST", "/v1/batches"): "batch.create",
    ("POST", "/v1/batches/{batch_id}/cancel"): "batch.cancel",
    ("POST", "/v1/chat/completions/{completion_id}"): "chat_completion.update",
    ("DELETE", "/v1/chat/completions/{completion_id}"): "chat_completion.delete",
    ("POST", "/v1/chat/completions/{completion_id}/feedback"): "chat_completion.feedback",
    ("POST", "/v1/chat/completions/exports"): "chat_completion.export",
    # The operator's: recorded in the organisation's log and in the log of the project acted on (the entry's
    # `project`), never in the operator's own (service/management/audit.py).
    ("POST", "/v1/organization/projects"): "project.create",
    ("POST", "/v1/organization/projects/{project_id}/archive"): "project.archive",
    ("POST", "/v1/organization/projects/{project_id}/api_keys"): "key.create",
    ("DELETE", "/v1/organization/projects/{project_id}/api_keys/{key_id}"): "key.revoke",
    ("POST", "/v1/organization/projects/{project_id}/api_keys/{key_id}/rotate"): "key.rotate",
}
# Written outside a request, by the code that acts (trainer/job.py publishes a version and records it).
OUTSIDE_REQUESTS = ("adapter.publish",)
DETAIL = "skillserve_audit_detail"  # where a route leaves what its entry should add (`note`)


def action_of(method: str, route: str) -> str | None:
    """The action a request of `method` on the route `route` is, or None when it is none."""
    if method not in CHANGES or (method, route) in NOT_ACTIONS:
        return None
    return ACTIONS.get((method, route), f"{method} {route}")


def action_names() -> list[str]:
    """Every named action, sorted: what the dashboard offers to filter on."""
    return sorted({*ACTIONS.values(), *OUTSIDE_REQUESTS})


def note(request: Request, **detail: object) -> None:
    """Add to this request's audit entry what neither its path nor its answer says (the alias and its new target)."""
    found = request.scope.setdefault("state", {}).setdefault(DETAIL, {})
    found.update({key: str(value) for key, value in detail.items() if value is not None})


class AuditTrail:
    """Pure ASGI middleware, inside KeyGate (so it knows the principal): records every action once it is answered."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in CHANGES:
            await self.app(scope, receive, send)
            return
        status = 500  # what an exception that escapes the app becomes
        body = bytearray()

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and len(body) < MAX_BODY_BYTES:
                body.extend(message.get("body", b"")[: MAX_BODY_BYTES - len(body)])
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            try:
                self._record(scope, status, bytes(body))
            except Exception:  # noqa: BLE001 - the audit log never fails the action it records
                log.exception("audit entry not recorded for %s %s", scope["method"], scope["path"])

    def _record(self, scope: Scope, status: int, body: bytes) -> None:
        route = getattr(scope.get("route"), "path", None)
        action = None if route is None else action_of(scope["method"], route)
        writer = getattr(getattr(scope["app"].state, "gateway", None), "audit", None)
        if route is None or action is None or writer is None:
            return
        try:
            principal = principal_of(Request(scope), self.settings)
        except APIError:  # no key, or a wrong one: KeyGate refused it before any action
            return
        at = time.time()
        writer.offer(Answered(
            id=new_audit_id(at), at=at,
            actor=AuditActor(key_id=principal.key_id, role=principal.role, project=principal.project),
            action=action, method=scope["method"], route=route,
            params={key: str(value) for key, value in (scope.get("path_params") or {}).items()},
            detail=dict((scope.get("state") or {}).get(DETAIL) or {}), status_code=status, body=body,
        ))
