"""An inference `Answer` as HTTP: its body with the headers that say who answered, or its Server-Sent Events, where
an error after the 200 is sent goes to the client in-band, mapped as every other error is (service/errors.py)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from fastapi import Response
from fastapi.responses import StreamingResponse

from adapters.errors import SkillserveError
from service.errors import from_domain
from service.inference.pipeline import Answer, sse


def render(answer: Answer, response: Response) -> Any:
    if answer.events is not None:
        return StreamingResponse(
            in_band_errors(answer.events),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **answer.headers},
        )
    response.headers.update(answer.headers)
    return answer.body


async def in_band_errors(events: AsyncGenerator[str, None]) -> AsyncGenerator[str, None]:
    """Stream the events; a mid-stream error becomes an error event then [DONE] (the 200 is already sent). Closing
    this stream closes `events` at once, so the request's outcome is counted and its target released then."""
    async with aclosing(events):
        try:
            async for event in events:
                yield event
        except SkillserveError as exc:
            yield sse(from_domain(exc).body())
            yield sse("[DONE]")
        except Exception as exc:  # the 200 is sent; all that is left is to tell the client in-band
            yield sse(
                {
                    "error": {
                        "message": f"generation failed: {type(exc).__name__}",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                }
            )
            yield sse("[DONE]")
