"""An adapter's aliases: read them, point one at a version (with a canary split), roll it back or remove it; a
write makes this replica's adapter cache forget the names it resolved through them."""

from __future__ import annotations

import asyncio

from adapters.registry.aliases import Keep
from adapters.schema import Aliases, AliasTarget, EvalGate, check_name
from service.gateway import Gateway


async def get_aliases(gw: Gateway, name: str) -> Aliases:
    check_name(name)
    return await asyncio.to_thread(gw.registry.aliases, name)  # type: ignore[no-any-return]


async def set_alias(
    gw: Gateway,
    name: str,
    alias: str,
    target: AliasTarget | None,
    expected_revision: int | None,
    gate: EvalGate | None | Keep = Keep.GATE,
) -> Aliases:
    """Point `alias` of `name` at `target` (None removes it), if the aliases are still at `expected_revision`; a
    gated alias moves only to a version that passed its eval (adapters/gates.py), `gate` sets or (None) removes
    the gate."""
    check_name(name)
    written: Aliases = await asyncio.to_thread(
        gw.registry.set_alias, name, alias, target, expected_revision=expected_revision, gate=gate
    )
    await gw.cache.forget_aliases(name)
    return written
