"""What routes receive through FastAPI `Depends`: the gateway's parts, built once in the app's lifespan."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.gateway import Gateway
from service.settings import Settings


def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


def get_settings(request: Request) -> Settings:
    return get_gateway(request).settings


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
