"""Bearer API keys: inference keys may call the model API, admin keys may also train, import and delete.

Every request that passes the key check carries a `Principal`: who sent it (the key's id, never the key), with
which role, for which project. Routes and middleware read it with `principal_of(request)` or `PrincipalDep`."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.deps import SettingsDep
from service.errors import APIError, render
from service.settings import Settings

# Probes must answer without a key; docs and metrics only where the operator says so.
PROBES = ("/health", "/ready")
DOCS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
# The dashboard's static files (and its config.json): the page itself asks for a key and sends it on every API call.
UI = "/ui"


PRINCIPAL = "skillserve_principal"  # where KeyGate leaves its verdict for the route dependencies
DEFAULT_PROJECT = "default"  # the project of the static `api_keys` / `admin_keys`, and of an auth-off gateway

Role = Literal["admin", "inference"]


@dataclass(frozen=True)
class Principal:
    """Who sent a request. `key_id` names the key without revealing it (None on an auth-off gateway, where
    everyone is the default project's admin)."""

    key_id: str | None
    role: Role
    project: str = DEFAULT_PROJECT


OPEN = Principal(key_id=None, role="admin")


def key_id(token: str) -> str:
    """A key's public id: a prefix of its SHA-256, safe to log, show and store."""
    return "key_" + hashlib.sha256(token.encode()).hexdigest()[:16]


def _token(header: str) -> str | None:
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _matches(token: str, keys: list) -> bool:
    # Compare against every key in constant time so the response time leaks nothing about the keys.
    found = False
    for key in keys:
        found |= hmac.compare_digest(token.encode(), key.get_secret_value().encode())
    return found


def _principal(header: str, settings: Settings) -> Principal | str | None:
    """The key's principal, "" for no key at all, or None for a wrong one; every key is compared once."""
    token = _token(header)
    if token is None:
        return ""
    admin = _matches(token, settings.admin_keys)
    inference = _matches(token, settings.api_keys)
    if not (admin or inference):
        return None
    return Principal(key_id=key_id(token), role="admin" if admin else "inference")


def auth_enabled(settings: Settings) -> bool:
    return bool(settings.api_keys or settings.admin_keys)


def _unauthorized(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def _check_key(found: Principal | str | None) -> Principal:
    if found == "":
        raise _unauthorized("missing API key: send `Authorization: Bearer <key>`")
    if not isinstance(found, Principal):
        raise _unauthorized("invalid API key")
    return found


def principal_of(request: Request, settings: Settings) -> Principal:
    """Who sent this request; raises 401 for a missing or wrong key. OPEN on an auth-off gateway."""
    if not auth_enabled(settings):
        return OPEN
    state = request.scope.get("state") or {}
    if PRINCIPAL in state:  # already decided by KeyGate, before the body was read
        return state[PRINCIPAL]  # type: ignore[no-any-return]
    return _check_key(_principal(request.headers.get("authorization", ""), settings))


def current_principal(request: Request, settings: SettingsDep) -> Principal:
    return principal_of(request, settings)


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def require_inference(request: Request, settings: SettingsDep) -> None:
    """Any valid key (inference or admin); open when no keys are configured."""
    principal_of(request, settings)


def require_admin(request: Request, settings: SettingsDep) -> None:
    """An admin key; open when no keys are configured."""
    if principal_of(request, settings).role == "inference":
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
        try:
            principal = _check_key(_principal(header, settings))
        except APIError as error:
            await render(error)(scope, receive, send)
            return
        scope.setdefault("state", {})[PRINCIPAL] = principal
        await self.app(scope, receive, send)
