"""Every failure the gateway reports, mapped once to OpenAI's error body and an HTTP status."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters import errors as domain

log = logging.getLogger("skillserve.errors")


class APIError(Exception):
    """An error with its HTTP status and OpenAI error fields; raised by routes, rendered by one handler."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        details: object | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.details = details

    def body(self) -> dict[str, object]:
        error: dict[str, object] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


def overloaded(message: str, retry_after: int = 1, status: int = 429) -> APIError:
    kind = "rate_limit_error" if status == 429 else "server_error"
    return APIError(status, message, type=kind, code="overloaded", headers={"Retry-After": str(retry_after)})


def from_domain(exc: domain.SkillserveError) -> APIError:
    """The one mapping from the adapter domain's exceptions to HTTP."""
    if isinstance(exc, domain.DatasetError):
        lines = [{"line": line, "reason": reason} for line, reason in exc.errors]
        return APIError(400, str(exc), code=exc.code, param=exc.param, details=lines)
    if isinstance(exc, domain.InvalidRequest):
        return APIError(400, str(exc), code=exc.code, param=exc.param)
    if isinstance(exc, domain.RateLimited):
        headers = {"Retry-After": str(exc.retry_after), **exc.headers}
        return APIError(429, str(exc), type=exc.kind, code=exc.code, headers=headers)
    if isinstance(exc, domain.Overloaded):
        return overloaded(str(exc), exc.retry_after, status=503 if exc.unavailable else 429)
    if isinstance(exc, domain.RequestTimeout):
        return APIError(408, str(exc), code=exc.code, param=exc.param)
    if isinstance(exc, domain.ClientGone):
        return APIError(499, str(exc), code=exc.code)
    if isinstance(exc, domain.TrainingDisabled):
        return APIError(503, str(exc), type="server_error", code=exc.code)
    if isinstance(exc, domain.NotFound):
        return APIError(404, str(exc), code=exc.code, param=exc.param)
    if isinstance(exc, domain.AlreadyExists | domain.Conflict):
        return APIError(409, str(exc), code=exc.code, param=exc.param)
    if isinstance(exc, domain.StoreUnavailable):
        return APIError(503, str(exc), type="server_error", code=exc.code, headers={"Retry-After": "5"})
    if isinstance(exc, domain.ChecksumMismatch | domain.ModelError):
        return APIError(500, str(exc), type="server_error", code=exc.code)
    if isinstance(exc, domain.JobRefused):
        # The cluster's own refusal, not a fault of this gateway: 403 when its account lacks the permission
        # (the message names it), else 422: the request was well-formed, the cluster will not run its job.
        return APIError(403 if isinstance(exc, domain.JobForbidden) else 422, str(exc), code=exc.code)
    if isinstance(exc, domain.InvalidAdapter | domain.InvalidName | domain.TemplateError | domain.GraderError):
        return APIError(400, str(exc), code=exc.code, param=exc.param)
    return APIError(500, str(exc), type="server_error", code=exc.code)


def answer_of(exc: domain.SkillserveError) -> tuple[int, dict[str, Any]]:
    """A domain error as the edge answers it, as data: the status and OpenAI's error body. For records that keep
    the HTTP answer a request would have had (a batch's error file), so the mapping stays this one."""
    error = from_domain(exc)
    return error.status, error.body()


class _ErrorResponse(JSONResponse):
    """Error bodies as ASCII JSON: a message may quote what the client sent (a model name), and a lone
    surrogate in it ("\\ud800") must come back escaped, not fail the response with a 500."""

    def render(self, content: object) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def render(error: APIError) -> JSONResponse:
    return _ErrorResponse(error.body(), status_code=error.status, headers=error.headers)



def install(app: FastAPI) -> None:
    """Register the handlers that turn every exception into OpenAI's error format."""

    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError) -> JSONResponse:
        return render(exc)

    @app.exception_handler(domain.SkillserveError)
    async def _domain(_: Request, exc: domain.SkillserveError) -> JSONResponse:
        return render(from_domain(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        # A check of the whole request names the parameter it found at fault in its context.
        param = (first.get("ctx") or {}).get("param") or ".".join(loc) or None
        message = f"{param or 'request'}: {first.get('msg', 'invalid request')}"
        return render(
            APIError(
                400,
                message,
                param=param,
                code="invalid_parameter",
                # Without `input`: it would echo what was sent (dataset rows, prompts) into the error.
                details=jsonable_encoder(
                    [{k: v for k, v in e.items() if k != "input"} for e in errors],
                    custom_encoder={Exception: str},
                ),
            )
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return render(APIError(exc.status_code, str(exc.detail), code=code, headers=dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return render(APIError(500, f"internal error: {type(exc).__name__}", type="server_error"))
