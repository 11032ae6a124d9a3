"""Per-minute inference limits of a project and of a key (requests and tokens), one limit across every gateway
replica over one store.

Why the store, and how: the replicas share nothing else (DESIGN.md), and the store is no counter to write per
request. So each replica claims a slice of a scope's budget for the current minute from one small record,
`limits/<scope>/<minute>.json` ({"requests": n, "tokens": n} claimed by all replicas), with a conditional write,
`claim_share` of the limit at a time (or what the request needs, if more). Requests are admitted from the slice held
here without any I/O; the store is written once per slice, not per request. The claims of all replicas never add up
to more than the limit, so N replicas together admit at most the limit in a minute, however a burst is split over
them. The price is on the other side: a slice held by one replica cannot serve another, so a replica may refuse
while up to (N-1) slices lie unspent elsewhere (plus tokens given back there by requests that used fewer than they
were charged). Once a minute's record shows the budget claimed, a replica refuses without I/O until the minute
ends: claims only grow within a minute. While the store cannot be reached, a replica holds the limit alone (up to
N x the limit in all), logged. The `local` backend keeps the claims in memory: one replica only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from adapters.errors import AlreadyExists, Conflict, NotFound, RateLimited, StoreUnavailable
from adapters.limits import MINUTE, CallerLimits, duration_text
from adapters.store import ObjectStore

log = logging.getLogger("skillserve.limits")

PREFIX = "limits"
CLAIM_ATTEMPTS = 8  # conditional writes lost to other replicas before a request is refused (Retry-After 1)


def _take(
    claimed: dict[str, int], want: dict[str, int], need: dict[str, int], limits: dict[str, int]
) -> dict[str, int]:
    """What a claim takes given everyone's claims so far: up to `want` of each metric, at least `need`; {} when
    `need` does not fit what is left."""
    room = {m: limits[m] - claimed.get(m, 0) for m in limits}
    if any(need[m] > room[m] for m in limits):
        return {}
    return {m: max(need[m], min(want[m], room[m])) for m in limits}


class Claims(Protocol):
    """Where the replicas' claims on a scope's budget are kept."""

    def claim(
        self, scope: str, window: int, want: dict[str, int], need: dict[str, int], limits: dict[str, int]
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Claim up to `want` (at least `need`) of `scope`'s budget in minute `window`: (taken, everyone's claims
        after it); `taken` is {} when `need` does not fit."""
        ...


class LocalClaims:
    """Claims kept in this process: one replica, or a replica that cannot reach the store."""

    def __init__(self) -> None:
        self._claimed: dict[tuple[str, int], dict[str, int]] = {}
        self._lock = threading.Lock()

    def claim(
        self, scope: str, window: int, want: dict[str, int], need: dict[str, int], limits: dict[str, int]
    ) -> tuple[dict[str, int], dict[str, int]]:
        with self._lock:
            for old in [k for k in self._claimed if k[1] < window - 1]:
                del self._claimed[old]
            claimed = self._claimed.setdefault((scope, window), {})
            taken = _take(claimed, want, need, limits)
            for metric, n in taken.items():
                claimed[metric] = claimed.get(metric, 0) + n
            return taken, dict(claimed)


class StoreClaims:
    """Claims kept in the object store every replica shares: one record per scope and minute, written with a
    compare-and-swap, so two replicas never both take the same part of a budget."""

    def __init__(self, store: ObjectStore):
        self.store = store

    def claim(
        self, scope: str, window: int, want: dict[str, int], need: dict[str, int], limits: dict[str, int]
    ) -> tuple[dict[str, int], dict[str, int]]:
        key = f"{PREFIX}/{scope}/{window}.json"
        claimed: dict[str, int] = {}
        for _ in range(CLAIM_ATTEMPTS):
            try:
                data, tag = self.store.get_tagged(key)
                claimed = {m: int(n) for m, n in json.loads(data).items()}
            except NotFound:
                claimed, tag = {}, None
            taken = _take(claimed, want, need, limits)
            if not taken:
                return {}, claimed
            after = {**claimed, **{m: claimed.get(m, 0) + n for m, n in taken.items()}}
            body = json.dumps(after).encode()
            try:
                if tag is None:
                    self.store.put_bytes(key, body, if_absent=True)
                    self._sweep(scope, window)  # the first claim of a minute clears the scope's old minutes
                else:
                    self.store.put_bytes(key, body, if_match=tag)
            except (AlreadyExists, Conflict, NotFound):
                continue  # another replica claimed first: read again
            return taken, after
        return {}, claimed

    def _sweep(self, scope: str, window: int) -> None:
        for key in self.store.list(f"{PREFIX}/{scope}/"):
            minute = key.rsplit("/", 1)[-1].removesuffix(".json")
            if minute.isdigit() and int(minute) < window - 1:
                with contextlib.suppress(NotFound):
                    self.store.delete(key)


@dataclass
class _Budget:
    """One scope's budget in one minute, as this replica holds it."""

    window: int
    limits: dict[str, int]
    held: dict[str, int]  # claimed by this replica, not yet spent (below 0: more used than charged)
    claimed: dict[str, int]  # every replica's claims, as last read
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def fits(self, cost: dict[str, int]) -> bool:
        return all(cost[m] <= self.held[m] for m in self.limits)

    def spend(self, cost: dict[str, int], sign: int = 1) -> None:
        for m in self.limits:
            self.held[m] -= sign * cost[m]

    def remaining(self, metric: str) -> int:
        """What every replica together may still admit, as this one knows it."""
        return max(0, self.limits[metric] - self.claimed.get(metric, 0) + self.held[metric])


@dataclass
class Ticket:
    """One admitted request's charge: its rate-limit headers, and the tokens it was charged, corrected once (`settle`)
    to what it used."""

    budgets: list[_Budget]
    charged: int
    headers: dict[str, str]
    settled: bool = False

    def settle(self, used_tokens: int) -> None:
        """Give back what the request was charged beyond its usage (or take what it used beyond), in the minute it was
        charged in; later minutes keep their own budgets."""
        if self.settled:
            return
        self.settled = True
        for budget in self.budgets:
            if "tokens" in budget.limits:
                budget.held["tokens"] += self.charged - used_tokens


class RateLimiter:
    """Admits a request against each of its scopes' per-minute limits (429 with OpenAI's headers when one is spent)."""

    def __init__(self, claims: Claims, share: float = 0.1, clock: Callable[[], float] = time.time):
        self.claims = claims
        self.share = share
        self.clock = clock
        self._fallback = LocalClaims()
        self._budgets: dict[str, _Budget] = {}

    async def admit(self, caller: CallerLimits, tokens: int) -> Ticket:
        """Charge one request of about `tokens` tokens to every scope of `caller`, or raise RateLimited (nothing
        charged) naming the limit that refused."""
        now = self.clock()
        window = int(now // MINUTE)
        charged: list[tuple[_Budget, dict[str, int]]] = []
        try:
            for scope, limits in caller.scopes():
                rated = limits.rated
                cost = {m: n for m, n in (("requests", 1), ("tokens", tokens)) if m in rated}
                charged.append((await self._charge(scope, rated, window, cost, now), cost))
        except RateLimited:
            for budget, cost in charged:
                budget.spend(cost, sign=-1)
            raise
        budgets = [budget for budget, _ in charged]
        return Ticket(budgets, tokens, headers(budgets, (window + 1) * MINUTE - now))

    def _budget(self, scope: str, limits: dict[str, int], window: int) -> _Budget:
        budget = self._budgets.get(scope)
        if budget is None or budget.window != window or budget.limits != limits:
            budget = _Budget(window, limits, dict.fromkeys(limits, 0), {})
            self._budgets[scope] = budget
        return budget

    async def _charge(
        self, scope: str, limits: dict[str, int], window: int, cost: dict[str, int], now: float
    ) -> _Budget:
        budget = self._budget(scope, limits, window)
        if not budget.fits(cost):
            async with budget.lock:  # one claim at a time per scope here: a burst waits for it, then spends from it
                if not budget.fits(cost):
                    await self._claim(scope, budget, cost, now)
        budget.spend(cost)
        return budget

    async def _claim(self, scope: str, budget: _Budget, cost: dict[str, int], now: float) -> None:
        limits = budget.limits
        need = {m: max(0, cost[m] - budget.held[m]) for m in limits}
        # Claims only grow within a minute: what was left at the last read is the most that is left now.
        if all(need[m] <= limits[m] - budget.claimed.get(m, 0) for m in limits):
            want = {m: max(need[m], math.ceil(limits[m] * self.share)) for m in limits}
            try:
                taken, claimed = await asyncio.to_thread(self.claims.claim, scope, budget.window, want, need, limits)
            except StoreUnavailable as exc:
                log.warning("rate limits held by this replica alone: the store is unavailable (%s)", exc)
                taken, claimed = self._fallback.claim(scope, budget.window, want, need, limits)
            budget.claimed = {m: max(claimed.get(m, 0), budget.claimed.get(m, 0)) for m in limits}
            if taken:
                for m, n in taken.items():
                    budget.held[m] += n
                return
        reset = (budget.window + 1) * MINUTE - now
        metric = next((m for m in limits if need[m] > limits[m] - budget.claimed.get(m, 0)), next(iter(limits)))
        too_large = cost[metric] > limits[metric]
        alone = " (this request alone is larger; lower max_tokens)" if too_large and metric == "tokens" else ""
        raise RateLimited(
            f"rate limit reached for {scope} on {metric} per minute: limit {limits[metric]}, remaining "
            f"{budget.remaining(metric)}, requested {cost[metric]}{alone}; try again in {duration_text(reset)}",
            retry_after=max(1, math.ceil(reset)),
            kind=metric,
            headers=headers([budget], reset),
            never_admitted=too_large,
        )


def headers(budgets: list[_Budget], reset: float) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers: for requests and for tokens, the scope with the least left."""
    found: dict[str, str] = {}
    for metric in ("requests", "tokens"):
        limited = [b for b in budgets if metric in b.limits]
        if not limited:
            continue
        tightest = min(limited, key=lambda b: b.remaining(metric))
        found[f"x-ratelimit-limit-{metric}"] = str(tightest.limits[metric])
        found[f"x-ratelimit-remaining-{metric}"] = str(tightest.remaining(metric))
        found[f"x-ratelimit-reset-{metric}"] = duration_text(reset)
    return found


def rate_limiter(backend: str, store: ObjectStore, share: float) -> RateLimiter:
    """The limiter a gateway runs with: claims in the shared store, or (one replica) in memory."""
    return RateLimiter(StoreClaims(store) if backend == "store" else LocalClaims(), share)
