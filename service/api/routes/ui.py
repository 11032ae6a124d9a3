"""The web dashboard at /ui: static files from service/api/ui, and what the page needs before it has a key.

The page talks only to the gateway's own API with the user's key; nothing here reads the store or the engine.
Its files and config load without a key (service/api/auth.py `public`), so an auth-on gateway can show a key prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

from adapters.schema import Hyperparameters, Method
from adapters.templates import TEMPLATE_NAMES
from service.api.audit import action_names
from service.api.auth import auth_enabled
from service.api.deps import SettingsDep

PATH = "/ui"
STATIC = Path(__file__).resolve().parents[1] / "ui"

# The page runs only its own scripts and talks only to this gateway: an injected script could read the key from
# session storage, and a framing page could trick a click on Delete. Inline styles stay allowed (the chart sets them).
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(include_in_schema=False)


class DashboardFiles(StaticFiles):
    """The dashboard's files, each with the security headers above."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


@router.get(f"{PATH}/config.json")
async def config(settings: SettingsDep) -> dict[str, Any]:
    """What the page needs before its first API call: whether to ask for a key (else that call would be a 401),
    and the training form's choices from their one source: the built-in templates and the Hyperparameters schema
    (the model POST /adapters validates against, with its defaults, bounds and descriptions), the methods, and the
    audit log's action names (the Audit page's filter)."""
    return {
        "auth": auth_enabled(settings),
        "templates": list(TEMPLATE_NAMES),
        "hyperparameters": Hyperparameters.model_json_schema(),
        "methods": list(get_args(Method.model_fields["type"].annotation)),
        "audit_actions": action_names(),
    }


def install(app: FastAPI) -> None:
    """The config route, then the static files (html=True: /ui/ serves index.html; /ui redirects there)."""
    app.include_router(router)
    app.mount(PATH, DashboardFiles(directory=STATIC, html=True), name="ui")
