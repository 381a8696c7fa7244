"""Record the outcome of each Digital River callback in `login_events`.

Rows are added to the caller's transaction, so a callback's outcome and its record commit
together. They never hold a password or a token.
"""

from __future__ import annotations

import uuid

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import LoginEvent


def request_id_of(request: Request) -> str | None:
    # The scope's "state" dict, read directly: `request.state` would wrap it in a new object.
    request_id = request.scope.get("state", {}).get("request_id")
    return request_id or request.headers.get("x-request-id")


def source_address_of(request: Request) -> str | None:
    address = request.scope.get("state", {}).get("source_address")
    if address:
        return str(address)
    return request.client.host if request.client else None


def record_event(
    session: AsyncSession,
    request: Request,
    *,
    kind: str,
    outcome: str,
    reason: str | None = None,
    user_key: uuid.UUID | None = None,
    external_reference_id: str | None = None,
    site_id: str | None = None,
) -> None:
    """Add one callback outcome to the session; the handler's commit writes it."""
    session.add(
        LoginEvent(
            kind=kind,
            outcome=outcome,
            reason=reason,
            user_key=user_key,
            external_reference_id=external_reference_id,
            source_address=source_address_of(request),
            site_id=site_id,
            request_id=request_id_of(request),
        )
    )
