"""`python -m app`: serve the bundle named by CLIPSEARCH_BUNDLE_PATH on CLIPSEARCH_HOST:CLIPSEARCH_PORT."""

from __future__ import annotations

import copy
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

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


def log_config() -> dict[str, Any]:
    """uvicorn's own logging, plus the root logger at INFO for the app's messages ("ready: ...",
    reloads, compactions). Each worker process applies this itself: a basicConfig in the parent
    would not reach workers started by spawn, whose messages would then be dropped."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["app"] = {"format": "%(levelname)s %(name)s[%(process)d]: %(message)s"}
    config["handlers"]["app"] = {"formatter": "app", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    config["root"] = {"handlers": ["app"], "level": "INFO"}
    return config


def main() -> None:
    settings = Settings()
    # Factory mode: each worker process builds its own app (and loads its own model) from the
    # same environment.
    uvicorn.run("app.main:create_app", factory=True, host=settings.host, port=settings.port,
                workers=settings.server_workers, log_config=log_config(), **server_options(settings))


if __name__ == "__main__":
    main()
