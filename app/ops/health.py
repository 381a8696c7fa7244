"""Liveness and readiness endpoints for container health checks and load balancers."""

from __future__ import annotations

import asyncio
from functools import lru_cache
from typing import Any, Final

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.db.migrate import current_revision, head_revision

# Longer than the pool's checkout timeout, so a saturated pool reports itself as not ready.
READINESS_TIMEOUT_SECONDS: Final = 5.0

logger = structlog.get_logger("sso.health")
router = APIRouter(tags=["operations"])


@lru_cache(maxsize=1)
def expected_revision() -> str | None:
    """Return the newest migration shipped with this build (read from disk once)."""
    return head_revision()


@router.get("/healthz", summary="Liveness: the process is running and serving requests")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: the database is reachable and its schema is at this build's migration",
    responses={503: {"description": "Not ready; `checks` names what failed"}},
)
async def readyz(request: Request) -> JSONResponse:
    head = expected_revision()
    checks: dict[str, Any] = {"database": "ok", "migrations": "ok"}
    revision: str | None = None
    try:
        async with asyncio.timeout(READINESS_TIMEOUT_SECONDS):
            engine = request.app.state.database.engine
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            revision = await current_revision(engine)
    except (TimeoutError, SQLAlchemyError, OSError) as exc:
        checks["database"] = "unreachable"
        checks["migrations"] = "unknown"
        _log_transition(request, ready=False, reason="database_unreachable", error=exc)
    else:
        if revision != head:
            checks["migrations"] = "behind" if revision is not None else "not_applied"
            _log_transition(request, ready=False, reason="migrations_not_at_head")

    ready = all(value == "ok" for value in checks.values())
    if ready:
        _log_transition(request, ready=True)
    body = {
        "status": "ready" if ready else "not_ready",
        "checks": checks,
        "revision": revision,
        "expected_revision": head,
    }
    return JSONResponse(body, status_code=200 if ready else 503)


def _log_transition(
    request: Request, *, ready: bool, reason: str | None = None, error: Exception | None = None
) -> None:
    """Log when readiness changes, not on every probe, so a failing probe does not flood logs."""
    state = request.app.state
    previous = getattr(state, "ready", None)
    state.ready = ready
    if previous == ready:
        return
    if ready:
        logger.info("readiness.ready")
        return
    fields: dict[str, Any] = {"reason": reason}
    if error is not None:
        fields["error"] = type(error).__name__
        fields["detail"] = str(error).splitlines()[0][:300] if str(error) else ""
    logger.warning("readiness.not_ready", **fields)
