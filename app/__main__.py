"""`python -m app`: serve the bundle named by CLIPSEARCH_BUNDLE_PATH on CLIPSEARCH_HOST:CLIPSEARCH_PORT."""

from __future__ import annotations

import logging

import uvicorn

from app.main import create_app
from app.settings import Settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings()
    if settings.server_workers > 1:
        # Several processes need an import path: each builds its own app from the same environment.
        uvicorn.run("app.main:app", host=settings.host, port=settings.port, workers=settings.server_workers,
                    timeout_keep_alive=int(settings.keep_alive_s))
    else:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                    timeout_keep_alive=int(settings.keep_alive_s))


if __name__ == "__main__":
    main()
