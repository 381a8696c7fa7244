"""The audit trail of admin changes.

`record_audit_event` adds the event to the caller's session and flushes but never commits.
The event and the change it describes therefore commit together, and a change that fails
leaves no event. Events store the names of changed fields and never the values of secrets.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.admin.pagination import Page, fetch_page
from app.models import AuditEvent

AUDIT_CURSOR_KIND = "audit-events"


@dataclass(frozen=True, slots=True)
class Actor:
    """The author of a change: an API key (id and name) or a command-line user (no key id)."""

    key_id: uuid.UUID | None
    name: str


CLI_ACTOR = Actor(key_id=None, name="cli")


async def record_audit_event(
    session: AsyncSession,
    *,
    actor: Actor,
    action: str,
    target_user_key: uuid.UUID | None = None,
    changed_fields: Iterable[str] = (),
    request_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add one audit event to the caller's transaction and flush it."""
    event = AuditEvent(
        actor_key_id=actor.key_id,
        actor_name=actor.name,
        action=action,
        target_user_key=target_user_key,
        changed_fields=list(changed_fields),
        request_id=request_id,
        details=details or {},
    )
    session.add(event)
    await session.flush()
    return event


async def list_audit_events(
    session: AsyncSession,
    *,
    target_user_key: uuid.UUID | None = None,
    action: str | None = None,
    actor_key_id: uuid.UUID | None = None,
    occurred_after: datetime | None = None,
    occurred_before: datetime | None = None,
    limit: int,
    cursor: str | None = None,
) -> Page[AuditEvent]:
    """Return one page of events, oldest first, matching every filter given."""
    query = select(AuditEvent)
    if target_user_key is not None:
        query = query.where(AuditEvent.target_user_key == target_user_key)
    if action is not None:
        query = query.where(AuditEvent.action == action)
    if actor_key_id is not None:
        query = query.where(AuditEvent.actor_key_id == actor_key_id)
    if occurred_after is not None:
        query = query.where(AuditEvent.occurred_at > occurred_after)
    if occurred_before is not None:
        query = query.where(AuditEvent.occurred_at < occurred_before)
    return await fetch_page(
        session,
        query,
        kind=AUDIT_CURSOR_KIND,
        timestamp_column=AuditEvent.occurred_at,
        id_column=AuditEvent.id,
        limit=limit,
        cursor=cursor,
    )
