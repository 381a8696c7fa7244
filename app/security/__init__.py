"""Defences against guessing, hostile input and overload: throttling, limits, audit retention.

`install_security(app, settings)` adds the source-address and request-limit middleware, the
admin endpoints for lockouts and login events, the limit responses in the
OpenAPI schema and the background purge of old login events. Call it before
`install_operations`, whose middleware wraps the whole stack.
"""

from __future__ import annotations

from fastapi import FastAPI

from app.security.limits import RequestLimitsMiddleware, document_limit_responses
from app.security.proxy import SourceAddressMiddleware
from app.security.retention import install_purge_task
from app.settings import Settings


def install_security(app: FastAPI, settings: Settings) -> None:
    from app.security.routes import router

    app.include_router(router)
    # Added last, so it runs first: the limits and every route see the source address.
    app.add_middleware(RequestLimitsMiddleware, settings=settings)
    app.add_middleware(SourceAddressMiddleware, settings=settings)
    install_purge_task(app, settings)
    document_limit_responses(app)
