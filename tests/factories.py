"""Small keyword-only factories; each test sets only the fields it checks."""

from __future__ import annotations

import itertools
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.identity.passwords import PasswordHasher
from app.identity.schemas import UserCreate
from app.identity.service import create_user
from app.models import User

_numbers = itertools.count(1)

DEFAULT_PASSWORD = "correct horse battery"


async def make_user(
    session: AsyncSession,
    hasher: PasswordHasher,
    *,
    login: str | None = None,
    password: str | None = DEFAULT_PASSWORD,
    created_via: str = "admin",
    **fields: Any,
) -> User:
    number = next(_numbers)
    data = UserCreate(
        login=login or f"shopper{number}@example.com",
        password=password,
        **fields,
    )
    user = await create_user(session, hasher, data, created_via=created_via)
    await session.commit()
    return user
