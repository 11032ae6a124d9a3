"""Which limits a request is held to: `limits_for(principal, settings)`, the one place they are looked up.

For now they come from settings (docs/gateway.md#limits): a project's are `default_limits` overlaid with its entry in
`project_limits` (Settings.limits_of, which also holds a project's batch lines and eval rows to them), and a key's own
(`key_limits`, by key id) apply on top. Project records may carry them later; these are then the ones to change."""

from __future__ import annotations

from adapters.limits import CallerLimits, Limits
from service.api.auth import Principal
from service.settings import Settings


def limits_for(principal: Principal, settings: Settings) -> CallerLimits:
    project = settings.limits_of(principal.project)
    key = settings.key_limits.get(principal.key_id, Limits()) if principal.key_id is not None else Limits()
    return CallerLimits(principal.project, project, principal.key_id, key)
