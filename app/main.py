"""The app factory: wires settings, state, routers, middleware and error handlers; nothing else.

Serve it with `python -m app`, or `uvicorn --factory app.main:create_app`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata

import anyio.to_thread
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.formparsers import MultiPartParser

from app.access import Access, KeyGate
from app.deps import in_collection, read_open, read_with_key
from app.errors import install_error_handlers
from app.metrics import RequestMetricsMiddleware
from app.middleware import BodySizeLimit, HeadAsGet, JSONErrors
from app.routes import ask, captions, classify, collections, docs, embed, explain, health, items, page, search
from app.routes.responses import UNAUTHORIZED, UNKNOWN_COLLECTION
from app.server import ServerState
from app.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    access = Access(settings)
    server = ServerState(settings, writes_enabled=access.writes_enabled)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Routes run in threads; with too few, concurrent queries could not fill a batch.
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, 2 * settings.max_batch)
        server.start_loading()
        try:
            yield
        finally:
            server.close()  # a load still under way is abandoned, not waited for

    locked = access.locked
    docs_locked = locked and not settings.public_docs
    app = FastAPI(title="clipsearch", version=_version(), lifespan=lifespan,
                  description="Search your own images and texts with a CLIP model: text→image, image→text, "
                              "image→image and weighted composed queries; captions, and answers to questions "
                              "about images.",
                  # Locked docs are served by app.routes.docs, behind the key, instead.
                  openapi_url=None if docs_locked else "/openapi.json",
                  docs_url=None if docs_locked else "/docs", redoc_url=None if docs_locked else "/redoc")
    app.state.server = server
    install_error_handlers(app)
    # Keys guard every router but liveness, readiness and the page (the gate, app.access, checks them;
    # the header is declared only when one is set, so the OpenAPI schema says what the server asks for).
    guarded = [Depends(read_with_key if locked else read_open)]
    answered = UNAUTHORIZED if locked else None
    per_collection = (search.router, items.router, embed.router, classify.router, explain.router, captions.router,
                      ask.router, health.described)
    for router in (*per_collection, collections.router, health.operations):
        app.include_router(router, dependencies=guarded, responses=answered)
    # Each collection's routes under /collections/{collection}/ too: today's paths are the default's.
    for router in per_collection:
        app.include_router(router, prefix="/collections/{collection}", dependencies=[*guarded, Depends(in_collection)],
                           responses={**(answered or {}), **UNKNOWN_COLLECTION})
    if docs_locked:
        app.include_router(docs.router, dependencies=[Depends(read_with_key)])
    for router in (health.router, page.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=page.STATIC_DIR), name="static")
    # Added innermost first: a request meets BodySizeLimit, JSONErrors, the key gate (before any body
    # is read), the metrics (which count a HEAD as a HEAD, and the gate's refusals), HeadAsGet, then CORS.
    if settings.allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.allowed_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", "X-API-Key"])
    app.add_middleware(HeadAsGet)
    app.add_middleware(RequestMetricsMiddleware, metrics=server.metrics)
    app.add_middleware(KeyGate, access=access, metrics=server.metrics, docs_open=not docs_locked)
    app.add_middleware(JSONErrors)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    # Keep whole uploads in memory (the body limit bounds them) instead of spooling them to disk.
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, settings.max_upload_bytes + 1)
    return app


def _version() -> str:
    try:
        return metadata.version("clipsearch")
    except metadata.PackageNotFoundError:
        return "unknown"
