"""What one project (and one key) may use: inference requests and tokens per minute, training jobs at once, training
tokens per day, stored bytes. Pure data and arithmetic; the gateway enforces them (service/inference/ratelimit.py for
the per-minute limits, service/management for training and storage)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

MINUTE = 60
DAY = 86400


class Limits(BaseModel):
    """Limits of one project or one key; null = no limit. A project's limits are the gateway's default overlaid with
    its own (`Limits.over`), field by field."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(None, ge=0, description="inference requests per minute")
    tokens_per_minute: int | None = Field(
        None, ge=0, description="inference tokens per minute: prompt + max_tokens up front, corrected to the usage"
    )
    concurrent_jobs: int | None = Field(None, ge=0, description="training jobs queued or running at once")
    training_tokens_per_day: int | None = Field(
        None, ge=0, description="tokens the training jobs created in the last 24 hours may plan to train on"
    )
    stored_bytes: int | None = Field(None, ge=0, description="bytes of uploaded files kept in the store")

    def over(self, base: Limits) -> Limits:
        """`base` with the fields this one sets replaced."""
        return base.model_copy(update=self.model_dump(exclude_unset=True))

    @property
    def rated(self) -> dict[str, int]:
        """The per-minute limits that are set, by what they count ("requests", "tokens")."""
        found = {"requests": self.requests_per_minute, "tokens": self.tokens_per_minute}
        return {metric: limit for metric, limit in found.items() if limit is not None}


@dataclass(frozen=True)
class CallerLimits:
    """The limits one request is held to: its project's (shared by every key of the project) and its key's own."""

    project: str
    project_limits: Limits = field(default_factory=Limits)
    key_id: str | None = None
    key_limits: Limits = field(default_factory=Limits)

    def scopes(self) -> list[tuple[str, Limits]]:
        """(scope, limits) for every scope with a per-minute limit: `project=<name>`, `key=<id>`."""
        found = [(f"project={self.project}", self.project_limits)]
        if self.key_id is not None:
            found.append((f"key={self.key_id}", self.key_limits))
        return [(scope, limits) for scope, limits in found if limits.rated]


def estimated_tokens(chars: int, max_tokens: int) -> int:
    """What a request is charged up front: its prompt at about four characters a token (rounded up), plus the most
    it may generate. Corrected to the real usage when it finishes."""
    return math.ceil(chars / 4) + max_tokens


def duration_text(seconds: float) -> str:
    """A reset time as OpenAI's x-ratelimit-reset-* headers write it: `250ms`, `12s`, `1m30s`."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"
