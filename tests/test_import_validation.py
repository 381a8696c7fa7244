"""Per-row validation shared with the admin API: fast paths, identifiers, hash parsing."""

from __future__ import annotations

import base64
import random
import string
import unicodedata
import uuid

import pytest
from email_validator import EmailNotValidError, validate_email

from app.identity.errors import InvalidValueError
from app.identity.identifiers import _FORBIDDEN_CATEGORIES, normalize_login
from app.identity.passwords import ACCEPTED_SCHEMES, build_context
from app.identity.schemas import _check_email
from app.transfer.hashes import canonical_scheme, parse_hash_scheme, parse_with_handler
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


_BASE64 = string.ascii_letters + string.digits + "+/"
_HASH64 = "./" + string.digits + string.ascii_uppercase + string.ascii_lowercase
_BCRYPT64 = "./" + string.ascii_uppercase + string.ascii_lowercase + string.digits


def _canonical_samples(generator: random.Random) -> dict[str, list[str]]:
    """Return random strings in each canonical hash form, including its extreme values."""

    def text(alphabet: str, length: int) -> str:
        return "".join(generator.choice(alphabet) for _ in range(length))

    def number(low: int, high: int) -> int:
        return generator.choice([low, high, generator.randrange(low, high + 1)])

    samples: dict[str, list[str]] = {}
    for _ in range(300):
        salt = bytes(generator.randrange(256) for _ in range(20 + number(4, 16)))
        lanes = number(1, 4)
        forms = {
            "argon2": f"$argon2id$v=19$m={number(8 * lanes, 9_999_999)},"
            f"t={number(1, 999_999_999)},p={lanes}${text(_BASE64, 22)}${text(_BASE64, 43)}",
            "bcrypt": f"$2{generator.choice('aby')}${number(4, 31):02d}$"
            f"{text(_BCRYPT64, 21)}{generator.choice('.Oeu')}"
            f"{text(_BCRYPT64, 30)}{generator.choice('.CGKOSWaeimquy26')}",
            "pbkdf2_sha256": f"$pbkdf2-sha256${number(1, 999_999_999)}$"
            f"{text(_HASH64, 22)}${text(_HASH64, 43)}",
            "django_pbkdf2_sha256": f"pbkdf2_sha256${number(1, 999_999_999)}$"
            f"{text(string.ascii_letters + string.digits, number(1, 64))}${text(_BASE64, 43)}=",
            "sha512_crypt": f"$6${text(_HASH64, number(1, 16))}${text(_HASH64, 86)}",
            "ldap_salted_sha1": "{SSHA}" + base64.b64encode(salt).decode(),
        }
        for scheme, sample in forms.items():
            samples.setdefault(scheme, []).append(sample)
    return samples


def test_canonical_hash_forms_parse_in_libpass() -> None:
    context = build_context(make_settings())
    samples = _canonical_samples(random.Random(11))  # noqa: S311 - test data, not a secret
    for scheme, hashes in samples.items():
        for stored in hashes:
            assert canonical_scheme(context, stored) == scheme, stored
            assert parse_with_handler(context, stored) == scheme, stored


@pytest.mark.parametrize(
    ("stored", "outcome"),
    [
        ("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA", "error: salt too small"),
        ("$argon2id$v=19$m=019456,t=2,p=1$" + "A" * 22 + "$" + "B" * 43, "argon2"),
        ("$argon2id$v=19$m=31,t=2,p=4$" + "A" * 22 + "$" + "B" * 43, "argon2"),
        ("$2b$03$" + "a" * 53, "error: rounds (3) is too low"),
        ("$2b$10$" + "a" * 52, "error: checksum must be exactly 31 chars"),
        ("{SSHA}!!!!", "error: not a valid ldap_salted_sha1 hash"),
        ("{SSHA}" + base64.b64encode(b"x" * 20).decode(), "error: not a valid ldap_salted_sha1"),
        ("$6$rounds=999$salt$" + "a" * 86, "error: rounds (999) is too low"),
    ],
)
def test_near_canonical_hash_uses_handler(stored: str, outcome: str) -> None:
    """A string that misses the canonical pattern gets libpass's verdict, not a pattern's."""
    context = build_context(make_settings())

    assert canonical_scheme(context, stored) is None
    try:
        result = parse_hash_scheme(context, stored)
    except ValueError as error:
        assert outcome.startswith("error: ")
        assert outcome.removeprefix("error: ") in str(error)
    else:
        assert result == outcome


def test_ascii_login_normalisation_matches_unicode_rules() -> None:
    def general(login: str) -> str | None:
        if any(unicodedata.category(character) in _FORBIDDEN_CATEGORIES for character in login):
            return None
        return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", login).casefold())

    for first in range(128):
        for second in range(128):
            login = f"a{chr(first)}{chr(second)}Z"
            try:
                fast: str | None = normalize_login(login)
            except InvalidValueError:
                fast = None
            assert fast == general(login), repr(login)
