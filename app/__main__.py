"""`python -m app`: serve the bundle named by CLIPSEARCH_BUNDLE_PATH on CLIPSEARCH_HOST:CLIPSEARCH_PORT."""

from __future__ import annotations

import logging
from typing import Any

import uvicorn

from app.protocol import ENVIRONMENT_PROTOCOL, guarded_protocol
from app.settings import Settings


def server_options(settings: Settings) -> dict[str, Any]:
    """How uvicorn serves the app: keep-alive, read time limits for slow clients, connection limit.

    With several workers `settings` must be the environment's (as in main): each worker process
    reads its settings, the protocol's time limits included, from the environment.
    """
    protocol = ENVIRONMENT_PROTOCOL if settings.server_workers > 1 else \
        guarded_protocol(settings.header_timeout_s, settings.body_timeout_s)
    return {"timeout_keep_alive": int(settings.keep_alive_s), "limit_concurrency": settings.max_connections,
            "http": protocol}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings()
    # Factory mode: each worker process builds its own app (and loads its own model) from the
    # same environment.
    uvicorn.run("app.main:create_app", factory=True, host=settings.host, port=settings.port,
                workers=settings.server_workers, **server_options(settings))


if __name__ == "__main__":
    main()
