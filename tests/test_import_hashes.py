"""Imported users keep their legacy password hashes, log in through the DR login callback, and
are re-hashed to argon2id on that first successful login."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest
from argon2.low_level import Type, hash_secret
from passlib import hash as schemes
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.identity.passwords import PasswordHasher
from app.models import User
from app.transfer.hashes import salted_sha256
from tests.rum_messages import basic_auth, child_text, login_request, parse
from tests.transfer_helpers import run_import


def _argon2(password: str, variant: Type, *, memory: int = 19456, time_cost: int = 2) -> str:
    return hash_secret(
        password.encode(),
        b"sixteen-byte-slt",
        time_cost=time_cost,
        memory_cost=memory,
        parallelism=1,
        hash_len=32,
        type=variant,
    ).decode()


def _bcrypt_variant(password: str, prefix: str) -> str:
    hashed = schemes.bcrypt.using(rounds=4, ident="2b").hash(password)
    return prefix + hashed[len("$2b$") :]


# Every accepted form, each with its own password; the names become the logins.
HASH_FACTORIES = {
    "argon2id-current": lambda pw: _argon2(pw, Type.ID),
    "argon2id-old-params": lambda pw: _argon2(pw, Type.ID, memory=8192, time_cost=3),
    "argon2i": lambda pw: _argon2(pw, Type.I),
    "argon2d": lambda pw: _argon2(pw, Type.D),
    "bcrypt-2a": lambda pw: _bcrypt_variant(pw, "$2a$"),
    "bcrypt-2b": lambda pw: _bcrypt_variant(pw, "$2b$"),
    "bcrypt-2y": lambda pw: _bcrypt_variant(pw, "$2y$"),
    "pbkdf2-sha256": lambda pw: schemes.pbkdf2_sha256.using(rounds=1000).hash(pw),
    "pbkdf2-sha512": lambda pw: schemes.pbkdf2_sha512.using(rounds=1000).hash(pw),
    "pbkdf2-sha1": lambda pw: schemes.pbkdf2_sha1.using(rounds=1000).hash(pw),
    "django-pbkdf2-sha256": lambda pw: schemes.django_pbkdf2_sha256.using(rounds=1000).hash(pw),
    "django-pbkdf2-sha1": lambda pw: schemes.django_pbkdf2_sha1.using(rounds=1000).hash(pw),
    "django-argon2": lambda pw: schemes.django_argon2.using(
        memory_cost=1024, rounds=1, parallelism=1
    ).hash(pw),
    "django-bcrypt": lambda pw: schemes.django_bcrypt.using(rounds=4).hash(pw),
    "django-bcrypt-sha256": lambda pw: schemes.django_bcrypt_sha256.using(rounds=4).hash(pw),
    "sha256-crypt": lambda pw: schemes.sha256_crypt.using(rounds=1000).hash(pw),
    "sha512-crypt": lambda pw: schemes.sha512_crypt.using(rounds=1000).hash(pw),
    "ldap-ssha": lambda pw: schemes.ldap_salted_sha1.hash(pw),
    "ldap-ssha256": lambda pw: schemes.ldap_salted_sha256.hash(pw),
    "ldap-ssha512": lambda pw: schemes.ldap_salted_sha512.hash(pw),
    "django-salted-sha1": lambda pw: schemes.django_salted_sha1.hash(pw),
    "salted-sha256": lambda pw: (
        "sha256$NaCl42$" + hashlib.sha256(b"NaCl42" + pw.encode()).hexdigest()
    ),
}


def _password_for(name: str) -> str:
    return f"Pässword for {name}!"


@pytest.fixture(scope="module")
def legacy_users() -> list[dict[str, str]]:
    return [
        {
            "login": f"{name}@legacy.example.com",
            "external_reference_id": f"LEGACY-{name.upper()}",
            "password_hash": factory(_password_for(name)),
        }
        for name, factory in HASH_FACTORIES.items()
    ]


async def _login(client: httpx.AsyncClient, login: str, password: str) -> str | None:
    response = await client.post(
        "/rum/login", content=login_request(login, password), headers=basic_auth()
    )
    assert response.status_code == 200, response.text
    return child_text(parse(response.content), "successful")


async def _stored_hash(session: AsyncSession, login: str) -> str | None:
    session.expire_all()
    return await session.scalar(select(User.password_hash).where(User.login == login))


async def test_every_hash_format_logs_in_and_upgrades(
    session: AsyncSession,
    hasher: PasswordHasher,
    client: httpx.AsyncClient,
    legacy_users: list[dict[str, str]],
) -> None:
    content = "".join(json.dumps(user) + "\n" for user in legacy_users)
    summary, errors = await run_import(session, hasher, content, "ndjson")
    assert errors == []
    assert summary.rows_imported == len(HASH_FACTORIES)

    for name, user in zip(HASH_FACTORIES, legacy_users, strict=True):
        login = user["login"]
        assert await _login(client, login, "wrong password") == "false", name
        assert await _stored_hash(session, login) == user["password_hash"], name

        assert await _login(client, login, _password_for(name)) == "true", name
        upgraded = await _stored_hash(session, login)
        assert upgraded is not None
        assert upgraded.startswith("$argon2id$"), name
        assert not hasher.context.needs_update(upgraded), name
        if name == "argon2id-current":
            assert upgraded == user["password_hash"], "a current hash must not be replaced"

        assert await _login(client, login, _password_for(name)) == "true", name


async def test_bcrypt_long_password_truncated_like_legacy(
    session: AsyncSession, hasher: PasswordHasher, client: httpx.AsyncClient
) -> None:
    password = "x" * 80
    legacy = schemes.django_bcrypt.using(rounds=4).hash(password[:72])
    row = {"login": "long@legacy.example.com", "password_hash": legacy}
    summary, errors = await run_import(session, hasher, json.dumps(row) + "\n", "ndjson")
    assert errors == []
    assert summary.rows_imported == 1
    assert await _login(client, row["login"], password) == "true"


def test_salted_sha256_matches_documented_form() -> None:
    salt, password = "s4lt", "hunter2hunter2"
    digest = hashlib.sha256(f"{salt}{password}".encode()).hexdigest()
    stored = f"sha256${salt}${digest}"
    assert salted_sha256.identify(stored)
    assert salted_sha256.verify(password, stored)
    assert not salted_sha256.verify("hunter2hunter3", stored)
    assert salted_sha256.verify(password, stored.upper().replace("SHA256$S4LT$", "sha256$s4lt$"))


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        ("md5$abc$900150983cd24fb0d6963f7d28e17f72", "not in an accepted format"),
        ("plain-text-password", "not in an accepted format"),
        ("$2b$12$tooshort", "malformed"),
        ("sha256$salt$nothex", "malformed"),
        ("{SSHA}!!!!", "malformed"),
        ("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA", "malformed"),
        ("$argon2id$" + "a" * 1100, "longer than 1024"),
    ],
)
async def test_unusable_hash_is_row_error(
    session: AsyncSession, hasher: PasswordHasher, stored: str, reason: str
) -> None:
    row = {"login": "unusable@example.com", "password_hash": stored}
    summary, errors = await run_import(session, hasher, json.dumps(row) + "\n", "ndjson")
    assert summary.rows_imported == 0
    assert [(error.row, error.field, error.code) for error in errors] == [
        (1, "password_hash", "invalid_value")
    ]
    assert reason in errors[0].message


async def test_plain_password_needs_flag(
    session: AsyncSession, hasher: PasswordHasher, client: httpx.AsyncClient
) -> None:
    row = json.dumps({"login": "plain@example.com", "password": "a long plain password"}) + "\n"
    summary, errors = await run_import(session, hasher, row, "ndjson")
    assert summary.rows_imported == 0
    assert [error.field for error in errors] == ["row"]
    assert "--allow-plain-passwords" in errors[0].message

    summary, errors = await run_import(session, hasher, row, "ndjson", allow_plain_passwords=True)
    assert errors == []
    assert summary.rows_imported == 1
    stored = await _stored_hash(session, "plain@example.com")
    assert stored is not None
    assert stored.startswith("$argon2id$")
    assert await _login(client, "plain@example.com", "a long plain password") == "true"
