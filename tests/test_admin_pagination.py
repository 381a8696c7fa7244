"""Keyset pagination: cursors, and page walks while other requests insert rows."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections import Counter
from datetime import UTC, datetime

import httpx
import pytest
from fastapi import FastAPI

from app.admin.pagination import Position, decode_cursor, encode_cursor
from app.identity.errors import InvalidValueError
from tests.admin_support import AUDIT, USERS, bearer, create_via_api, new_key

URL_SAFE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def raw_cursor(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


class TestCursor:
    def test_round_trip(self) -> None:
        position = Position(timestamp=datetime(2026, 12, 4, 20, 0, 0, 123456, tzinfo=UTC), id=42)

        cursor = encode_cursor("users", position)

        assert decode_cursor("users", cursor) == position
        assert set(cursor) <= set(URL_SAFE_ALPHABET)

    @pytest.mark.parametrize(
        "cursor",
        [
            "",
            "%%%",
            "a" * 600,
            raw_cursor(["users", "2026-01-01T00:00:00+00:00", 1]),
            raw_cursor({"k": "audit-events", "t": "2026-01-01T00:00:00+00:00", "i": 1}),
            raw_cursor({"k": "users", "t": "2026-01-01T00:00:00", "i": 1}),
            raw_cursor({"k": "users", "t": "not a time", "i": 1}),
            raw_cursor({"k": "users", "t": "2026-01-01T00:00:00+00:00", "i": "1"}),
            raw_cursor({"k": "users", "t": "2026-01-01T00:00:00+00:00", "i": True}),
            raw_cursor({"k": "users", "i": 1}),
        ],
    )
    def test_malformed_rejected(self, cursor: str) -> None:
        with pytest.raises(InvalidValueError) as caught:
            decode_cursor("users", cursor)

        assert caught.value.code == "invalid_cursor"
        assert caught.value.field == "cursor"


async def walk(
    client: httpx.AsyncClient,
    path: str,
    key: str,
    *,
    limit: int,
    between_pages: object = None,
) -> tuple[list[str], int]:
    """Follow `next_cursor` to the end; return every item's identifier and the page count.

    `between_pages`, when given, is awaited after each page and before the next request.
    """
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": str(limit)}
        if cursor is not None:
            params["cursor"] = cursor
        response = await client.get(path, params=params, headers=bearer(key))
        assert response.status_code == 200, response.text
        body = response.json()
        seen += [item.get("user_key") or str(item["id"]) for item in body["items"]]
        pages += 1
        assert pages < 200, "pagination did not end"
        cursor = body["next_cursor"]
        if cursor is None:
            return seen, pages
        if between_pages is not None:
            await between_pages()  # type: ignore[operator]


class TestConcurrentInserts:
    async def test_users_inserted_between_pages(
        self, committed_client: httpx.AsyncClient, committed_app: FastAPI
    ) -> None:
        async with committed_app.state.database.sessionmaker() as session:
            key = await new_key(session, "admin:write")
        existing = [(await create_via_api(committed_client, key))["user_key"] for _ in range(30)]
        inserted: list[str] = []

        async def insert_three() -> None:
            for _ in range(3):
                inserted.append((await create_via_api(committed_client, key))["user_key"])

        seen, pages = await walk(committed_client, USERS, key, limit=7, between_pages=insert_three)

        duplicates = [item for item, count in Counter(seen).items() if count > 1]
        assert duplicates == []
        assert seen[: len(existing)] == existing
        # Rows committed between page requests sort after every cursor handed out so far.
        assert set(inserted) <= set(seen)
        assert len(seen) == len(existing) + len(inserted)
        assert pages > 5

    async def test_users_inserted_during_page_requests(
        self, committed_client: httpx.AsyncClient, committed_app: FastAPI
    ) -> None:
        async with committed_app.state.database.sessionmaker() as session:
            key = await new_key(session, "admin:write")
        existing = [(await create_via_api(committed_client, key))["user_key"] for _ in range(25)]
        seen: list[str] = []
        cursor: str | None = None
        for _ in range(100):
            params = {"limit": "4"} | ({"cursor": cursor} if cursor else {})
            page, *_ = await asyncio.gather(
                committed_client.get(USERS, params=params, headers=bearer(key)),
                create_via_api(committed_client, key),
                create_via_api(committed_client, key),
            )
            assert page.status_code == 200
            seen += [item["user_key"] for item in page.json()["items"]]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break

        assert cursor is None
        assert len(seen) == len(set(seen))
        assert set(existing) <= set(seen)

    async def test_audit_events_inserted_between_pages(
        self, committed_client: httpx.AsyncClient, committed_app: FastAPI
    ) -> None:
        async with committed_app.state.database.sessionmaker() as session:
            key = await new_key(session, "admin:write")
        for _ in range(12):
            await create_via_api(committed_client, key)
        before = (
            await committed_client.get(AUDIT, params={"limit": "200"}, headers=bearer(key))
        ).json()["items"]

        async def change_something() -> None:
            await create_via_api(committed_client, key, first_name=uuid.uuid4().hex[:6])

        seen, _ = await walk(committed_client, AUDIT, key, limit=5, between_pages=change_something)

        assert len(seen) == len(set(seen))
        assert seen[: len(before)] == [str(item["id"]) for item in before]
        assert len(seen) > len(before)

    async def test_rows_leaving_filter_skip_nothing(
        self, committed_client: httpx.AsyncClient, committed_app: FastAPI
    ) -> None:
        """Disabling users already listed must not shift the rest of an `active` listing, as
        an offset-based page would."""
        async with committed_app.state.database.sessionmaker() as session:
            key = await new_key(session, "admin:write")
        existing = [(await create_via_api(committed_client, key))["user_key"] for _ in range(20)]
        seen: list[str] = []
        cursor: str | None = None
        while True:
            params = {"limit": "5", "status": "active"} | ({"cursor": cursor} if cursor else {})
            body = (await committed_client.get(USERS, params=params, headers=bearer(key))).json()
            page = [item["user_key"] for item in body["items"]]
            seen += page
            for user_key in page[:3]:
                response = await committed_client.post(
                    f"{USERS}/{user_key}/disable", headers=bearer(key)
                )
                assert response.status_code == 200
            cursor = body["next_cursor"]
            if cursor is None:
                break

        assert seen == existing
