"""The gateway's own ASGI middleware: request ids, access logs and request metrics (RequestContext), and the
request body limits (BodyLimit). The key check is service/api/auth.py's KeyGate."""

from __future__ import annotations

import logging
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import errors, logs
from service.metrics import Metrics

log = logging.getLogger("skillserve.http")


class RequestContext:
    """Pure ASGI middleware (streams and disconnects pass untouched): request ids, access logs, metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        token = logs.request_id.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            # The route template keeps label cardinality bounded (no adapter names or job ids in paths).
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(label, scope["method"], str(status)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - started)
            if label not in ("/health", "/metrics", "/ready"):
                log.info(
                    "request",
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": logs.elapsed_ms(started),
                    },
                )
            logs.request_id.reset(token)


class BodyLimit:
    """Pure ASGI middleware: refuse request bodies over their limit with 413, declared or streamed.

    Inference bodies (/v1/...) have a far smaller limit than uploads: the JSON of a request is decoded on a worker
    thread (service/api/bodies.py), but one json.loads holds the interpreter, and so the event loop, for its whole
    length, so its size bounds how long one request can hold every other."""

    def __init__(self, app: ASGIApp, limit: int, inference_limit: int):
        self.app = app
        self.limit = limit
        self.inference_limit = inference_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Fine-tuning files are uploads, however OpenAI's path names them.
        inference = scope["path"].startswith("/v1/") and not scope["path"].startswith("/v1/files")
        limit = min(self.limit, self.inference_limit) if inference else self.limit
        setting = "max_request_bytes" if limit == self.limit else "max_inference_request_bytes"
        message = f"request body too large: the limit is {limit} bytes ({setting})"
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            # Refused before a byte of the body is read.
            await errors.render(errors.APIError(413, message, code="request_too_large"))(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message_ = await receive()
            seen += len(message_.get("body", b""))
            if seen > limit:  # a chunked body that lied by omission: stop reading it
                raise HTTPException(413, message)
            return message_

        await self.app(scope, counted, send)
