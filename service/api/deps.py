"""What routes receive through FastAPI `Depends`: the gateway's parts, built once in the app's lifespan."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.gateway import Gateway
from service.settings import Settings

# Where KeyGate (service/api/auth.py) leaves the request's Principal; read here by name, auth being built on this.
PRINCIPAL = "skillserve_principal"


def get_root_gateway(request: Request) -> Gateway:
    """The gateway over the whole store: for the operator's routes (projects, keys), never a project's objects."""
    return request.app.state.gateway  # type: ignore[no-any-return]


def get_gateway(request: Request) -> Gateway:
    """The gateway as the caller's project sees it (Gateway.for_project): every route's registry and adapter cache
    reach that project's objects only, so another project's are not found (404), not forbidden. The default
    project's (static keys, auth off) is the whole gateway as before."""
    gateway = get_root_gateway(request)
    principal = (request.scope.get("state") or {}).get(PRINCIPAL)
    return gateway if principal is None else gateway.for_project(principal.project)


def get_settings(request: Request) -> Settings:
    return get_root_gateway(request).settings


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
RootGatewayDep = Annotated[Gateway, Depends(get_root_gateway)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
