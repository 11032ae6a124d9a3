"""The web dashboard at /ui: static files from service/ui, and what the page needs before it has a key.

The page talks only to the gateway's own API with the user's key; nothing here reads the store or the engine.
Its files and config load without a key (service/auth.py `public`), so an auth-on gateway can show a key prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

from adapters.schema import Hyperparameters
from adapters.templates import TEMPLATE_NAMES
from service.auth import auth_enabled
from service.dependencies import SettingsDep

PATH = "/ui"
STATIC = Path(__file__).resolve().parents[1] / "ui"

router = APIRouter(include_in_schema=False)


@router.get(f"{PATH}/config.json")
async def config(settings: SettingsDep) -> dict[str, Any]:
    """What the page needs before its first API call: whether to ask for a key (else that call would be a 401),
    and the training form's choices from their one source: the built-in templates and the Hyperparameters schema
    (the model POST /adapters validates against, with its defaults, bounds and descriptions)."""
    return {
        "auth": auth_enabled(settings),
        "templates": list(TEMPLATE_NAMES),
        "hyperparameters": Hyperparameters.model_json_schema(),
    }


def install(app: FastAPI) -> None:
    """The config route, then the static files (html=True: /ui/ serves index.html; /ui redirects there)."""
    app.include_router(router)
    app.mount(PATH, StaticFiles(directory=STATIC, html=True), name="ui")
