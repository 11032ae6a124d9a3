"""`python -m service`: run the gateway with uvicorn on the configured host and port."""

from __future__ import annotations

import uvicorn

from service.api.deadline import with_header_timeout
from service.app import create_app
from service.settings import Settings


def main() -> None:
    settings = Settings()
    # access_log off: the gateway logs each request itself, as JSON with its request id.
    # A bounded grace period: job event streams stay open for minutes and would otherwise hold shutdown.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        # Slow or idle clients must not hold connections: headers have a deadline, idle keep-alives end.
        http=with_header_timeout(settings.header_timeout_s),
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]
    )


if __name__ == "__main__":  # the engine core is spawned: its children re-import this module
    main()
