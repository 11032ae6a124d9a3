"""Fair sharing of the engine between projects: one project's burst cannot starve another's requests.

Two places decide who gets the engine. The gateway's queue (`max_queue` requests in flight) would let one project
take every place, so each project may hold at most `max_project_queue` of them (429 beyond, for that project only).
Inside the engine, vLLM's priority policy orders its waiting queue by (priority, arrival): a live request asks for the
number of its project's requests already in flight, so a project with one request waiting goes ahead of the
hundredth of a project in a burst: round robin between projects, at the granularity of one request, whenever the
engine's slots are all taken. Background work (eval rows, batch lines) asks for BACKGROUND_PRIORITY and more, after
every live request."""

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
    priority: int
    held: bool = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.share.leave(self.project)


class FairShare:
    """Requests in flight per project: each project's cap, and the priority its next request asks the engine for."""

    def __init__(self, max_per_project: int):
        self.max_per_project = max_per_project
        self.in_flight: Counter[str] = Counter()

    def enter(self, project: str) -> Slot:
        """A place for one more of `project`'s requests, or 429 when it holds its share of the gateway's queue."""
        held = self.in_flight[project]
        if held >= self.max_per_project:
            raise Overloaded(
                f"project {project!r} has {held} requests in flight, its share of this gateway's queue "
                "(max_project_queue); retry shortly",
            )
        self.in_flight[project] += 1
        return Slot(self, project, min(held, FAIR_SPAN - 1))

    def leave(self, project: str) -> None:
        self.in_flight[project] -= 1
        if self.in_flight[project] <= 0:
            del self.in_flight[project]
