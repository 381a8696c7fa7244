"""Request dependencies, named once as `Annotated` aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.identity.passwords import PasswordHasher
from app.settings import Settings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """Yield one session per request; the handler commits, anything left open is rolled back."""
    async with request.app.state.database.request_session() as session:
        yield session


# The two accessors below are `async def` on purpose: FastAPI runs a plain `def` dependency in
# its thread pool, and that hand-off costs more than the attribute read it wraps.
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_hasher(request: Request) -> PasswordHasher:
    hasher: PasswordHasher = request.app.state.hasher
    return hasher


SessionDep = Annotated[AsyncSession, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
HasherDep = Annotated[PasswordHasher, Depends(get_hasher)]
