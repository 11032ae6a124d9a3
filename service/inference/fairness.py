"""Fair sharing of the engine between projects: one project's burst cannot starve another's requests.

Two places decide who gets the engine. The gateway's queue (`max_queue` requests in flight) would let one project
take every place, so each project may hold at most `max_project_queue` of them (429 beyond, for that project only).
Inside the engine, vLLM's priority policy orders its waiting queue by (priority, arrival): a live request asks for the
number of its project's requests already in flight plus its key's, so a project with one request waiting goes ahead
of the hundredth of a project in a burst (round robin between projects, one request at a time, whenever the engine's
slots are all taken), and within a project a quiet key goes ahead of the later half of a busy key's burst.
Background work (eval rows, batch lines) asks for BACKGROUND_PRIORITY and more, after every live request."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from adapters.errors import Overloaded

# Live requests' priorities lie below this; background work's from it on (service/management/background.py).
FAIR_SPAN = 1 << 20


@dataclass
class Slot:
    """One request's place among its project's requests in flight, held until it is answered."""

    share: FairShare
    project: str
    key: str | None
    priority: int
    held: bool = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.share.leave(self.project, self.key)


class FairShare:
    """Requests in flight per project (and per key): each project's cap, and the priority its next request asks the
    engine for."""

    def __init__(self, max_per_project: int):
        self.max_per_project = max_per_project
        self.in_flight: Counter[str] = Counter()
        self.by_key: Counter[str] = Counter()

    def enter(self, project: str, key: str | None = None) -> Slot:
        """A place for one more of `project`'s requests (sent with `key`), or 429 when the project holds its share
        of the gateway's queue."""
        held = self.in_flight[project]
        if held >= self.max_per_project:
            raise Overloaded(
                f"project {project!r} has {held} requests in flight, its share of this gateway's queue "
                "(max_project_queue); retry shortly",
            )
        priority = min(held + (self.by_key[key] if key is not None else 0), FAIR_SPAN - 1)
        self.in_flight[project] += 1
        if key is not None:
            self.by_key[key] += 1
        return Slot(self, project, key, priority)

    def leave(self, project: str, key: str | None = None) -> None:
        for counts, name in ((self.in_flight, project), (self.by_key, key)):
            if name is not None:
                counts[name] -= 1
                if counts[name] <= 0:
                    del counts[name]
