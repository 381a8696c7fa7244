"""Operations: health and readiness probes, Prometheus metrics and structured request logs."""

from __future__ import annotations

from fastapi import FastAPI

from app.middleware import wrap_middleware_stack
from app.ops.health import router as health_router
from app.ops.logging import RequestContextMiddleware, configure_logging, get_request_id
from app.ops.metrics import instrument_pools, mark_worker_stopped
from app.ops.metrics import router as metrics_router

__all__ = [
    "configure_logging",
    "get_request_id",
    "install_operations",
    "operations_started",
    "operations_stopped",
]


def install_operations(app: FastAPI) -> None:
    """Add `/healthz`, `/readyz`, `/metrics` and the request-context middleware.

    The middleware wraps the whole stack, Starlette's error handling included, so the request
    id header, the access line and the metrics also cover 500s for unhandled exceptions.
    """
    app.include_router(health_router)
    app.include_router(metrics_router)
    wrap_middleware_stack(app, RequestContextMiddleware)


def operations_started(app: FastAPI) -> None:
    """Start publishing the database pools' numbers (needed with several workers)."""
    app.state.pool_publisher = instrument_pools(app.state.database)


def operations_stopped(app: FastAPI) -> None:
    publisher = getattr(app.state, "pool_publisher", None)
    if publisher is not None:
        publisher.cancel()
    mark_worker_stopped()
