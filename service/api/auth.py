"""Bearer API keys: inference keys may call the model API, admin keys may also train, import and delete."""

from __future__ import annotations

import hmac

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.deps import SettingsDep
from service.errors import APIError, render
from service.settings import Settings

# Probes must answer without a key; docs and metrics only where the operator says so.
PROBES = ("/health", "/ready")
DOCS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
# The dashboard's static files (and its config.json): the page itself asks for a key and sends it on every API call.
UI = "/ui"


ROLE = "skillserve_role"  # where KeyGate leaves its verdict for the route dependencies


def _token(header: str) -> str | None:
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _matches(token: str, keys: list) -> bool:
    # Compare against every key in constant time so the response time leaks nothing about the keys.
    found = False
    for key in keys:
        found |= hmac.compare_digest(token.encode(), key.get_secret_value().encode())
    return found


def _role(header: str, settings: Settings) -> str | None:
    """"admin", "inference", "" for no key at all, or None for a wrong one; every key is compared once."""
    token = _token(header)
    if token is None:
        return ""
    admin = _matches(token, settings.admin_keys)
    inference = _matches(token, settings.api_keys)
    return "admin" if admin else "inference" if inference else None


def auth_enabled(settings: Settings) -> bool:
    return bool(settings.api_keys or settings.admin_keys)


def _unauthorized(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def _check_key(role: str | None) -> None:
    if role == "":
        raise _unauthorized("missing API key: send `Authorization: Bearer <key>`")
    if role is None:
        raise _unauthorized("invalid API key")


def _request_role(request: Request, settings: Settings) -> str | None:
    state = request.scope.get("state") or {}
    if ROLE in state:  # already decided by KeyGate, before the body was read
        return state[ROLE]  # type: ignore[no-any-return]
    return _role(request.headers.get("authorization", ""), settings)


def require_inference(request: Request, settings: SettingsDep) -> None:
    """Any valid key (inference or admin); open when no keys are configured."""
    if auth_enabled(settings):
        _check_key(_request_role(request, settings))


def require_admin(request: Request, settings: SettingsDep) -> None:
    """An admin key; open when no keys are configured."""
    if not auth_enabled(settings):
        return
    role = _request_role(request, settings)
    _check_key(role)
    if role == "inference":
        raise APIError(
            403,
            "this key may only call the inference API; training, import and delete need an admin key",
            type="permission_error",
            code="admin_key_required",
        )


def public(path: str, settings: Settings) -> bool:
    """Paths anyone may call on an auth-on gateway."""
    if path in PROBES or path == UI or path.startswith(UI + "/"):
        return True
    if path in DOCS:
        return settings.public_docs
    if path == "/metrics":
        return settings.public_metrics
    return False


class KeyGate:
    """Pure ASGI middleware: on an auth-on gateway, a request without a valid key (inference or admin) is
    refused with 401 from its headers alone, before a byte of its body is read or parsed. Which key a
    route needs (admin or not) is still decided by its dependency."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = self.settings
        if scope["type"] != "http" or not auth_enabled(settings) or public(scope["path"], settings):
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        role = _role(header, settings)
        try:
            _check_key(role)
        except APIError as error:
            await render(error)(scope, receive, send)
            return
        scope.setdefault("state", {})[ROLE] = role
        await self.app(scope, receive, send)
