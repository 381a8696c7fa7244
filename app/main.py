"""Application factory: `create_app()` builds the ASGI app; `uvicorn --factory` calls it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.db.engine import Database, open_database
from app.identity.passwords import PasswordHasher
from app.ops import configure_logging, install_operations, operations_started, operations_stopped
from app.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, database: Database | None = None) -> FastAPI:
    """Build the service. Without `database`, the app opens the configured one on startup."""
    settings = settings or get_settings()
    configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = database is None
        app.state.database = database or open_database(settings)
        app.state.hasher = PasswordHasher(settings)
        operations_started(app)
        logger.info("service.started environment=%s", settings.environment)
        if not (settings.rum_username and settings.rum_password):
            logger.warning(
                "rum.credentials_missing: every callback is rejected with 401 until "
                "SSO_RUM_USERNAME and SSO_RUM_PASSWORD are set"
            )
        try:
            yield
        finally:
            app.state.hasher.close()
            if owned:
                await app.state.database.dispose()
            operations_stopped()
            logger.info("service.stopped")

    app = FastAPI(
        title="SSO provider for Digital River",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings

    from app.rum.routes import router as rum_router

    app.include_router(rum_router)

    # Last, so that its middleware wraps every other one.
    install_operations(app)
    return app
