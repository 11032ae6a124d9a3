"""Bearer API keys: inference keys may call the model API, admin keys may also train, import and delete."""

from __future__ import annotations

import hmac

from fastapi import Request

from service.dependencies import SettingsDep
from service.errors import APIError
from service.settings import Settings


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _matches(token: str, keys: list) -> bool:
    # Compare against every key in constant time so the response time leaks nothing about the keys.
    found = False
    for key in keys:
        found |= hmac.compare_digest(token.encode(), key.get_secret_value().encode())
    return found


def auth_enabled(settings: Settings) -> bool:
    return bool(settings.api_keys or settings.admin_keys)


def _unauthorized(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def require_inference(request: Request, settings: SettingsDep) -> None:
    """Any valid key (inference or admin); open when no keys are configured."""
    if not auth_enabled(settings):
        return
    token = _bearer(request)
    if token is None:
        raise _unauthorized("missing API key: send `Authorization: Bearer <key>`")
    if not (_matches(token, settings.api_keys) | _matches(token, settings.admin_keys)):
        raise _unauthorized("invalid API key")


def require_admin(request: Request, settings: SettingsDep) -> None:
    """An admin key; open when no keys are configured."""
    if not auth_enabled(settings):
        return
    token = _bearer(request)
    if token is None:
        raise _unauthorized("missing API key: send `Authorization: Bearer <key>`")
    if _matches(token, settings.admin_keys):
        return
    if _matches(token, settings.api_keys):
        raise APIError(
            403,
            "this key may only call the inference API; training, import and delete need an admin key",
            type="permission_error",
            code="admin_key_required",
        )
    raise _unauthorized("invalid API key")
