"""`python -m app`: serve the bundle named by CLIPSEARCH_BUNDLE_PATH on CLIPSEARCH_HOST:CLIPSEARCH_PORT."""

from __future__ import annotations

import logging

import uvicorn

from app.main import create_app
from app.settings import Settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
