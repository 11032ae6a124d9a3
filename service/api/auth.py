"""Bearer API keys: inference keys may call the model API, admin keys may also train, import and delete; operator
keys manage projects and their keys (/v1/organization) and act as the default project's admins.

Keys come from two places: the static `api_keys` / `admin_keys` / `operator_keys` settings (all of the default
project), and the store, where each project's keys lie as hashes (adapters/registry/projects.py). A stored key is
looked up off the event loop by its hash and the answer kept `key_cache_ttl_s` seconds, so a key revoked through
any replica stops working on every replica within that time (docs/security.md).

Every request that passes the key check carries a `Principal`: who sent it (the key's id, never the key), with
which role, for which project. Routes and middleware read it with `principal_of(request)` or `PrincipalDep`."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from adapters.errors import SkillserveError, StoreUnavailable
from adapters.registry.projects import KEY_PREFIX
from adapters.schema import DEFAULT_PROJECT
from service.api.deps import PRINCIPAL, SettingsDep
from service.errors import APIError, from_domain, render
from service.settings import Settings

log = logging.getLogger("skillserve.auth")

# Probes must answer without a key; docs and metrics only where the operator says so.
PROBES = ("/health", "/ready")
DOCS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
# The dashboard's static files (and its config.json): the page itself asks for a key and sends it on every API call.
UI = "/ui"


# DEFAULT_PROJECT (adapters.schema): the project of the static keys, and of an auth-off gateway.
# Stored keys answered (found or not) kept per replica: a bound, however many distinct keys are tried.
KEY_CACHE_ENTRIES = 4096

Role = Literal["admin", "inference", "operator"]


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
    """The static key's principal, "" for no key at all, or None for a key no setting holds; every key is compared
    once."""
    token = _token(header)
    if token is None:
        return ""
    operator = _matches(token, settings.operator_keys)
    admin = _matches(token, settings.admin_keys)
    inference = _matches(token, settings.api_keys)
    if not (operator or admin or inference):
        return None
    role: Role = "operator" if operator else "admin" if admin else "inference"
    return Principal(key_id=key_id(token), role=role)


def auth_enabled(settings: Settings) -> bool:
    return bool(settings.api_keys or settings.admin_keys or settings.operator_keys)


@dataclass
class _Known:
    principal: Principal | None  # None: no such key, or a revoked one
    read_at: float


class StoredKeys:
    """Keys kept in the store, found by their hash off the event loop. Each answer (found, revoked or unknown) is
    kept `ttl` seconds and concurrent first lookups of one key share one read, so the store sees at most one read
    per key per TTL per replica; while the store is unreachable, an answer read before keeps standing."""

    def __init__(self, ttl: float, entries: int = KEY_CACHE_ENTRIES):
        self.ttl = ttl
        self.entries = entries
        self._known: OrderedDict[str, _Known] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[Principal | None]] = {}

    async def principal(self, token: str, registry: Any) -> Principal | None:
        if not token.startswith(KEY_PREFIX):
            return None  # not a key this gateway makes: no store read for it
        digest = hashlib.sha256(token.encode()).hexdigest()
        known = self._known.get(digest)
        if known is not None and time.monotonic() - known.read_at < self.ttl:
            return known.principal
        future = self._inflight.get(digest)
        if future is not None:
            return await asyncio.shield(future)
        future = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            found = await self._read(token, digest, registry, known)
            future.set_result(found)
            return found
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it
            raise
        finally:
            del self._inflight[digest]

    async def _read(self, token: str, digest: str, registry: Any, known: _Known | None) -> Principal | None:
        try:
            record = await asyncio.to_thread(registry.find_api_key, token)
        except StoreUnavailable:
            if known is None:
                raise
            log.warning("store unreachable; key %s judged by what was read before", key_id(token))
            return known.principal
        found = None
        if record is not None and record.revoked_at is None:
            found = Principal(key_id=record.id, role=record.role, project=record.project)
        self._known[digest] = _Known(found, time.monotonic())
        self._known.move_to_end(digest)
        while len(self._known) > self.entries:
            self._known.popitem(last=False)
        return found


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
    """An admin key (an operator key is the default project's admin); open when no keys are configured."""
    if principal_of(request, settings).role == "inference":
        raise APIError(
            403,
            "this key may only call the inference API; training, import and delete need an admin key",
            type="permission_error",
            code="admin_key_required",
        )


def require_operator(request: Request, settings: SettingsDep) -> None:
    """An operator key: projects and their keys. Open when no keys are configured (one team, one default project)."""
    if principal_of(request, settings).role != "operator" and auth_enabled(settings):
        raise APIError(
            403,
            "managing projects and API keys needs an operator key (setting `operator_keys`)",
            type="permission_error",
            code="operator_key_required",
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
    """Pure ASGI middleware: on an auth-on gateway, a request without a valid key (static, or stored and not
    revoked) is refused with 401 from its headers alone, before a byte of its body is read or parsed. Which role a
    route needs is still decided by its dependency; which project it sees, by the principal left here."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings
        self.stored = StoredKeys(settings.key_cache_ttl_s)

    async def _judge(self, scope: Scope, header: str) -> Principal:
        found = _principal(header, self.settings)
        if found is None:  # not a static key: perhaps one of a project's, in the store
            gateway = getattr(scope["app"].state, "gateway", None) if "app" in scope else None
            if gateway is not None:
                found = await self.stored.principal(_token(header) or "", gateway.registry)
        return _check_key(found)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = self.settings
        if scope["type"] != "http" or not auth_enabled(settings) or public(scope["path"], settings):
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        try:
            principal = await self._judge(scope, header)
        except APIError as error:
            await render(error)(scope, receive, send)
            return
        except SkillserveError as exc:  # the store could not be asked: 503, never a 500
            await render(from_domain(exc))(scope, receive, send)
            return
        scope.setdefault("state", {})[PRINCIPAL] = principal
        await self.app(scope, receive, send)
