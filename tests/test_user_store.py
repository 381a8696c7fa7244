"""The user store's guarantees, checked against PostgreSQL through the service and raw SQL."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from passlib.hash import bcrypt, pbkdf2_sha256
from sqlalchemy import func, select, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.engine import create_engine, create_sessionmaker
from app.identity.errors import ConflictError, DomainError, InvalidValueError
from app.identity.passwords import PasswordHasher
from app.identity.schemas import Address, UserCreate
from app.identity.service import (
    LoginOutcome,
    authenticate,
    create_user,
    erase_user,
    find_user,
)
from app.models import IssuedIdentifier, User
from tests.conftest import make_settings
from tests.factories import DEFAULT_PASSWORD, make_user


class TestCreateUser:
    async def test_generated_identifiers(self, session: AsyncSession, hasher: PasswordHasher) -> None:
        user = await make_user(session, hasher, login="Émile@Example.com")

        assert isinstance(user.user_key, uuid.UUID)
        assert user.external_reference_id == user.external_reference_id.upper()
        assert user.login == "Émile@Example.com"
        assert user.login_normalized == "émile@example.com"
        assert user.password_hash is not None
        assert user.password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")

    async def test_explicit_erid_kept(self, session: AsyncSession, hasher: PasswordHasher) -> None:
        user = await make_user(
            session, hasher, external_reference_id="D05B4D68-F49D-11DA-8019-88F835DA4C6C"
        )

        assert user.external_reference_id == "D05B4D68-F49D-11DA-8019-88F835DA4C6C"

    async def test_addresses_and_attributes_stored(
        self, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        user = await make_user(
            session,
            hasher,
            shipping_address=Address(line1="1 Main St", city="Minnetonka", country="US"),
            attributes={"crmSession": "F3CB68D6"},
        )

        found = await find_user(session, user_key=user.user_key)
        assert found is not None
        assert [(a.kind, a.city, a.country) for a in found.addresses] == [
            ("shipping", "Minnetonka", "US")
        ]
        assert {a.name: a.value for a in found.attributes} == {"crmSession": "F3CB68D6"}

    async def test_login_conflict_after_normalisation(
        self, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        await make_user(session, hasher, login="Émile@Example.com")

        with pytest.raises(ConflictError) as caught:
            await make_user(session, hasher, login="e\u0301mile@example.COM")

        assert caught.value.field == "login"

    async def test_erid_conflict_any_case(self, session: AsyncSession, hasher: PasswordHasher) -> None:
        await make_user(session, hasher, external_reference_id="abc-1")

        with pytest.raises(ConflictError) as caught:
            await make_user(session, hasher, external_reference_id="ABC-1")

        assert caught.value.field == "external_reference_id"
        assert caught.value.code == "conflict"

    async def test_erased_erid_reserved(self, session: AsyncSession, hasher: PasswordHasher) -> None:
        user = await make_user(session, hasher, external_reference_id="gone-1")
        await erase_user(session, user)
        await session.commit()

        with pytest.raises(ConflictError) as caught:
            await make_user(session, hasher, external_reference_id="GONE-1")

        assert caught.value.code == "identifier_reserved"
        assert caught.value.field == "external_reference_id"

    async def test_erased_login_reusable(self, session: AsyncSession, hasher: PasswordHasher) -> None:
        user = await make_user(session, hasher, login="reuse@example.com")
        first_erid = user.external_reference_id
        await erase_user(session, user)
        await session.commit()

        second = await make_user(session, hasher, login="reuse@example.com")

        assert second.external_reference_id != first_erid

    async def test_password_and_hash_together_rejected(
        self, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        data = UserCreate(login="both@example.com", password="long enough", password_hash="$2b$")

        with pytest.raises(InvalidValueError) as caught:
            await create_user(session, hasher, data, created_via="admin")

        assert caught.value.field == "password_hash"

    async def test_unknown_hash_scheme_rejected(
        self, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        data = UserCreate(login="hash@example.com", password_hash="md5:abcdef")

        with pytest.raises(InvalidValueError, match="supported scheme"):
            await create_user(session, hasher, data, created_via="admin")

    async def test_short_password_rejected(self, session: AsyncSession, hasher: PasswordHasher) -> None:
        data = UserCreate(login="short@example.com", password="1234567")

        with pytest.raises(InvalidValueError, match="at least 8") as caught:
            await create_user(session, hasher, data, created_via="admin")

        assert caught.value.field == "password"


class TestErase:
    async def test_personal_data_removed(self, session: AsyncSession, hasher: PasswordHasher) -> None:
        user = await make_user(
            session,
            hasher,
            email="x@example.com",
            first_name="Ann",
            billing_address=Address(city="Paris", country="FR"),
            attributes={"a": "b"},
        )

        user_key, erid = user.user_key, user.external_reference_id
        await erase_user(session, user)
        await session.commit()

        erased = await find_user(session, user_key=user_key)
        assert erased is not None
        assert erased.status == "erased"
        assert erased.erased_at is not None
        assert (erased.login, erased.email, erased.first_name, erased.password_hash) == (
            None,
            None,
            None,
            None,
        )
        assert erased.addresses == []
        assert erased.attributes == []
        assert erased.external_reference_id == erid


class TestAuthenticate:
    async def test_correct_password(self, session: AsyncSession, hasher: PasswordHasher) -> None:
        await make_user(session, hasher, login="Auth@Example.com")

        result = await authenticate(session, hasher, "auth@example.com", DEFAULT_PASSWORD)

        assert result.outcome is LoginOutcome.SUCCESS

    async def test_wrong_password(self, session: AsyncSession, hasher: PasswordHasher) -> None:
        await make_user(session, hasher, login="wrong@example.com")

        result = await authenticate(session, hasher, "wrong@example.com", "not the password")

        assert result.outcome is LoginOutcome.WRONG_PASSWORD

    async def test_unknown_login(self, session: AsyncSession, hasher: PasswordHasher) -> None:
        result = await authenticate(session, hasher, "nobody@example.com", DEFAULT_PASSWORD)

        assert result.outcome is LoginOutcome.UNKNOWN_LOGIN
        assert result.user is None

    async def test_disabled_only_after_correct_password(
        self, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        await make_user(session, hasher, login="off@example.com", status="disabled")

        wrong = await authenticate(session, hasher, "off@example.com", "not the password")
        right = await authenticate(session, hasher, "off@example.com", DEFAULT_PASSWORD)

        assert wrong.outcome is LoginOutcome.WRONG_PASSWORD
        assert right.outcome is LoginOutcome.DISABLED

    @pytest.mark.parametrize(
        "legacy_hash",
        [
            bcrypt.using(rounds=4).hash(DEFAULT_PASSWORD),
            pbkdf2_sha256.using(rounds=1000).hash(DEFAULT_PASSWORD),
        ],
        ids=["bcrypt", "pbkdf2_sha256"],
    )
    async def test_legacy_hash_upgraded(
        self, session: AsyncSession, hasher: PasswordHasher, legacy_hash: str
    ) -> None:
        user = await make_user(
            session, hasher, login="legacy@example.com", password=None, password_hash=legacy_hash
        )

        result = await authenticate(session, hasher, "legacy@example.com", DEFAULT_PASSWORD)
        stored = await session.scalar(select(User.password_hash).where(User.id == user.id))

        assert result.outcome is LoginOutcome.SUCCESS
        assert stored is not None
        assert stored.startswith("$argon2id$")
        assert hasher.context.verify(DEFAULT_PASSWORD, stored)


async def _expect_database_error(session: AsyncSession, sql: str, **params: object) -> str:
    """Run `sql` in a savepoint and return the database's error text; fail if it succeeds."""
    try:
        async with session.begin_nested():
            await session.execute(text(sql), params)
    except DBAPIError as exc:
        return str(exc.orig)
    raise AssertionError(f"statement succeeded but should have failed: {sql}")


class TestRawSqlGuarantees:
    async def test_duplicate_erid_rejected(self, session: AsyncSession, hasher: PasswordHasher) -> None:
        user = await make_user(session, hasher, external_reference_id="raw-dup")

        error = await _expect_database_error(
            session,
            "INSERT INTO users (external_reference_id, login, login_normalized) "
            "VALUES (:erid, 'raw@example.com', 'raw@example.com')",
            erid=user.external_reference_id.upper(),
        )

        assert "uq_users_external_reference_id_lower" in error

    async def test_erid_change_rejected(self, session: AsyncSession, hasher: PasswordHasher) -> None:
        user = await make_user(session, hasher)

        error = await _expect_database_error(
            session, "UPDATE users SET external_reference_id = 'NEW-ONE' WHERE id = :id", id=user.id
        )

        assert "immutable" in error

    async def test_user_key_change_rejected(self, session: AsyncSession, hasher: PasswordHasher) -> None:
        user = await make_user(session, hasher)

        error = await _expect_database_error(
            session, "UPDATE users SET user_key = gen_random_uuid() WHERE id = :id", id=user.id
        )

        assert "immutable" in error

    async def test_erased_erid_reuse_rejected(
        self, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        user = await make_user(session, hasher, external_reference_id="raw-erased")
        await erase_user(session, user)
        await session.commit()

        error = await _expect_database_error(
            session,
            "INSERT INTO users (external_reference_id, login, login_normalized) "
            "VALUES ('raw-erased', 'new@example.com', 'new@example.com')",
        )

        assert "external_reference_id" in error

    async def test_delete_rejected(self, session: AsyncSession, hasher: PasswordHasher) -> None:
        user = await make_user(session, hasher)

        error = await _expect_database_error(session, "DELETE FROM users WHERE id = :id", id=user.id)

        assert "not allowed" in error

    async def test_ledger_keeps_identifiers_after_delete_attempt(
        self, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        user = await make_user(session, hasher, external_reference_id="ledger-1")

        error = await _expect_database_error(
            session, "DELETE FROM issued_identifiers WHERE user_key = :key", key=user.user_key
        )
        count = await session.scalar(
            select(func.count()).select_from(IssuedIdentifier).where(
                IssuedIdentifier.user_key == user.user_key
            )
        )

        assert "not allowed" in error
        assert count == 1

    async def test_ledger_records_every_row_of_one_insert(
        self, session: AsyncSession
    ) -> None:
        inserted = (
            await session.execute(
                text(
                    "INSERT INTO users (external_reference_id, login, login_normalized) "
                    "SELECT 'bulk-' || n, 'bulk' || n || '@example.com', "
                    "'bulk' || n || '@example.com' FROM generate_series(1, 25) AS n "
                    "RETURNING user_key, external_reference_id"
                )
            )
        ).all()
        recorded = (
            await session.execute(
                select(IssuedIdentifier.user_key, IssuedIdentifier.external_reference_id).where(
                    IssuedIdentifier.user_key.in_([row.user_key for row in inserted])
                )
            )
        ).all()

        expected = sorted((row.user_key, row.external_reference_id) for row in inserted)
        assert len(inserted) == 25
        assert sorted(recorded) == expected

    async def test_exact_erid_duplicate_rejected(
        self, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        await make_user(session, hasher, external_reference_id="exact-dup")

        error = await _expect_database_error(
            session,
            "INSERT INTO users (external_reference_id, login, login_normalized) "
            "VALUES ('exact-dup', 'dup@example.com', 'dup@example.com')",
        )

        assert "uq_users_external_reference_id_lower" in error

    async def test_erased_row_cannot_regain_personal_data(
        self, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        user = await make_user(session, hasher)
        user_id = user.id
        await erase_user(session, user)
        await session.commit()

        error = await _expect_database_error(
            session, "UPDATE users SET email = 'back@example.com' WHERE id = :id", id=user_id
        )

        assert "erased" in error

    async def test_erid_format_checked(self, session: AsyncSession) -> None:
        error = await _expect_database_error(
            session,
            "INSERT INTO users (external_reference_id, login, login_normalized) "
            "VALUES ('has space', 'fmt@example.com', 'fmt@example.com')",
        )

        assert "ck_users_erid_format" in error


class TestConcurrentCreation:
    """Many clients creating the same user at once leave exactly one."""

    async def _create_concurrently(
        self, url: URL, hasher: PasswordHasher, payloads: list[UserCreate]
    ) -> tuple[list[object], int]:
        engine = create_engine(url, make_settings(db_pool_size=20, db_max_overflow=40))
        sessions = create_sessionmaker(engine)

        async def attempt(data: UserCreate) -> object:
            async with sessions() as session:
                try:
                    user = await create_user(session, hasher, data, created_via="admin")
                    await session.commit()
                    return user.user_key
                except DomainError as exc:
                    return exc

        try:
            results = await asyncio.gather(*(attempt(data) for data in payloads))
            async with sessions() as session:
                count = await session.scalar(select(func.count()).select_from(User))
        finally:
            await engine.dispose()
        return list(results), count or 0

    async def test_same_login_fifty_times(self, fresh_database_url: URL, hasher: PasswordHasher) -> None:
        payloads = [
            UserCreate(login=variant, password_hash=pbkdf2_sha256.using(rounds=1000).hash("x" * 8))
            for variant in ["Race@Example.com", "race@example.com", "RACE@EXAMPLE.COM"] * 17
        ][:50]

        results, count = await self._create_concurrently(fresh_database_url, hasher, payloads)

        conflicts = [r for r in results if isinstance(r, ConflictError)]
        assert count == 1
        assert len(conflicts) == 49
        assert {c.field for c in conflicts} == {"login"}

    async def test_same_erid_differently_cased(
        self, fresh_database_url: URL, hasher: PasswordHasher
    ) -> None:
        payloads = [
            UserCreate(
                login=f"erid-race-{number}@example.com",
                external_reference_id="race-erid" if number % 2 else "RACE-ERID",
            )
            for number in range(50)
        ]

        results, count = await self._create_concurrently(fresh_database_url, hasher, payloads)

        conflicts = [r for r in results if isinstance(r, ConflictError)]
        assert count == 1
        assert len(conflicts) == 49
        assert {c.field for c in conflicts} == {"external_reference_id"}
