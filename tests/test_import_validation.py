"""Per-row validation shared with the admin API: email fast path, identifiers, hash parsing."""

from __future__ import annotations

import random
import string
import uuid

import pytest
from email_validator import EmailNotValidError, validate_email

from app.identity.passwords import ACCEPTED_SCHEMES, build_context
from app.identity.schemas import _check_email
from app.transfer.hashes import parse_hash_scheme
from app.transfer.validate import RowValidator
from tests.conftest import make_settings


def _accepted_by_email_validator(value: str) -> bool:
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


def _accepted_by_schema(value: str) -> bool:
    try:
        _check_email(value)
    except ValueError:
        return False
    return True


EDGE_ADDRESSES = [
    "a@example.com",
    "A.B+tag@Example.COM",
    "a@localhost",
    "a@x.test",
    "a@x.local",
    "a@example.invalid",
    "a@in-addr.arpa",
    "a@b.c",
    "a@b.123",
    "a@123.456",
    "a@-b.com",
    "a@b-.com",
    "a.@b.com",
    ".a@b.com",
    "a..b@b.com",
    "a@b..com",
    "x" * 64 + "@b.com",
    "x" * 65 + "@b.com",
    "a@" + ("b" * 63 + ".") * 3 + "com",
    "a@" + ("b" * 63 + ".") * 4 + "com",
    "a@" + "b" * 64 + ".com",
    "a@xn--bcher-kva.com",
    "a@xn--zz.com",
    "é@a.com",
    "a@ü.com",
    '"quoted"@example.com',
    "a@[127.0.0.1]",
]


def test_email_fast_path_matches_email_validator() -> None:
    generator = random.Random(7)  # noqa: S311 - test data, not a secret
    alphabet = string.ascii_letters + string.digits + ".-@+_!#$%&'*/=?^`{|}~\"(),:;<>[]\\ "
    endings = ["@example.com", "@a.b", "@x.y.z", "@1.com", "@a.test", "", ".com", "@EXAMPLE.org"]
    cases = list(EDGE_ADDRESSES)
    for _ in range(20000):
        length = generator.randrange(1, 30)
        local = "".join(generator.choice(alphabet) for _ in range(length))
        cases.append(local + generator.choice(endings))
    mismatches = [
        case for case in cases if _accepted_by_schema(case) != _accepted_by_email_validator(case)
    ]
    assert mismatches == []


@pytest.fixture(scope="module")
def validator() -> RowValidator:
    return RowValidator(
        build_context(make_settings()),
        allow_plain_passwords=False,
        password_min_length=8,
        password_max_length=256,
    )


def test_generated_identifiers(validator: RowValidator) -> None:
    staged, errors = validator.validate(2, {"login": "new@example.com"})
    assert errors == []
    assert staged.user_key_given is False
    assert staged.erid_given is False
    assert isinstance(staged.user_key, uuid.UUID)
    assert staged.external_reference_id is not None
    assert staged.external_reference_id == staged.external_reference_id.upper()
    assert staged.login_normalized == "new@example.com"
    assert staged.status == "active"


def test_invalid_row_keeps_checkable_identifiers(validator: RowValidator) -> None:
    staged, errors = validator.validate(
        3,
        {
            "login": "ÉMILE@example.com",
            "external_reference_id": "KEEP-1",
            "user_key": "not-a-uuid",
            "email": "broken",
        },
    )
    assert {(error.field, error.code) for error in errors} == {
        ("user_key", "invalid_value"),
        ("email", "invalid_value"),
    }
    assert staged.valid is False
    assert staged.external_reference_id == "KEEP-1"
    assert staged.login_normalized == "émile@example.com"
    assert staged.user_key is None


def test_both_password_forms_rejected() -> None:
    validator = RowValidator(
        build_context(make_settings()),
        allow_plain_passwords=True,
        password_min_length=8,
        password_max_length=256,
    )
    _, errors = validator.validate(
        2,
        {
            "login": "both@example.com",
            "password": "long enough password",
            "password_hash": "{SSHA}jkD32mUwrEGfWypIamCDiMKa5GphLIXQ",
        },
    )
    assert [(error.field, error.message) for error in errors] == [
        ("password_hash", "give either password or password_hash, not both")
    ]
    _, errors = validator.validate(3, {"login": "short@example.com", "password": "short"})
    assert [error.field for error in errors] == ["password"]


def test_every_accepted_scheme_parses() -> None:
    context = build_context(make_settings())
    for scheme in ACCEPTED_SCHEMES:
        handler = context.handler(scheme)
        sample = handler.using(**_cheap(scheme)).hash("sample password")
        assert parse_hash_scheme(context, sample) == scheme


def _cheap(scheme: str) -> dict[str, int]:
    if scheme in ("argon2", "django_argon2"):
        return {"memory_cost": 1024, "rounds": 1}
    if "bcrypt" in scheme:
        return {"rounds": 4}
    if "pbkdf2" in scheme or scheme.endswith("_crypt"):
        return {"rounds": 1000}
    return {}
