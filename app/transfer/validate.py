"""Check one imported record with the same rules as the admin API and turn it into staging rows.

Field rules come from `app.identity.schemas` (the `UserCreate` model) and login and ERID rules
from `app.identity.identifiers`, so an import accepts exactly what the admin API accepts. Checks
that need the whole file or the database (duplicates, existing users, reserved identifiers) run
later in SQL.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from passlib.context import CryptContext
from pydantic import ValidationError

from app.identity.errors import InvalidValueError
from app.identity.identifiers import generate_erid, normalize_login, validate_erid
from app.identity.schemas import UserCreate
from app.models.user import ADDRESS_FIELDS
from app.transfer.formats import ADDRESS_OBJECTS
from app.transfer.hashes import parse_hash_scheme


class ImportedUser(UserCreate):
    """A user as an import file describes it: `UserCreate` plus the `user_key` to keep."""

    user_key: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class RowError:
    row: int
    field: str
    code: str
    message: str


@dataclass(slots=True)
class StagedUser:
    """One record ready for the staging tables.

    Invalid records are staged too, with `valid` False and only the identifiers that passed
    their own checks, so that the duplicate checks also see them.
    """

    row: int
    valid: bool
    user_key: uuid.UUID | None
    user_key_given: bool
    external_reference_id: str | None
    erid_given: bool
    login: str | None = None
    login_normalized: str | None = None
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    locale: str | None = None
    home_phone: str | None = None
    status: str | None = None
    password_hash: str | None = None
    plain_password: str | None = field(default=None, repr=False)
    addresses: list[tuple[Any, ...]] = field(default_factory=list)
    attributes: list[tuple[str, str]] = field(default_factory=list)

    def user_record(self) -> tuple[Any, ...]:
        """Return the values in the column order of the `import_rows` staging table."""
        return (
            self.row,
            self.valid,
            self.user_key,
            self.user_key_given,
            self.external_reference_id,
            self.erid_given,
            self.login,
            self.login_normalized,
            self.email,
            self.first_name,
            self.last_name,
            self.locale,
            self.home_phone,
            self.status,
            self.password_hash,
        )


def _location(error: Any) -> str:
    parts = [str(part) for part in error["loc"]]
    return ".".join(parts) if parts else "row"


def _message(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return "unknown field: use the admin API's field names"
    return message


class RowValidator:
    """Validate records one at a time; it keeps nothing per row, so memory stays flat."""

    def __init__(
        self,
        context: CryptContext,
        *,
        allow_plain_passwords: bool,
        password_min_length: int,
        password_max_length: int,
    ) -> None:
        self.context = context
        self.allow_plain_passwords = allow_plain_passwords
        self.password_min_length = password_min_length
        self.password_max_length = password_max_length

    def validate(self, row: int, data: dict[str, Any]) -> tuple[StagedUser, list[RowError]]:
        """Return the staging form of `data` and the errors found in it (empty when valid)."""
        try:
            user = ImportedUser.model_validate(data)
        except ValidationError as exc:
            field_errors = [
                RowError(row, _location(error), "invalid_value", _message(error))
                for error in exc.errors(include_url=False)
            ]
            field_errors.extend(
                self._identifier_errors(row, data, already={e.field for e in field_errors})
            )
            return self._identifiers_only(row, data), field_errors

        errors: list[RowError] = []
        login_normalized: str | None = None
        try:
            login_normalized = normalize_login(user.login)
        except InvalidValueError as exc:
            errors.append(RowError(row, "login", "invalid_value", exc.message))
        password_hash, plain_password = self._password(row, user, errors)

        user_key_given = user.user_key is not None
        erid_given = user.external_reference_id is not None
        staged = StagedUser(
            row=row,
            valid=not errors,
            user_key=user.user_key if user_key_given else uuid.uuid4(),
            user_key_given=user_key_given,
            external_reference_id=user.external_reference_id if erid_given else generate_erid(),
            erid_given=erid_given,
            login=user.login,
            login_normalized=login_normalized,
            email=user.email,
            first_name=user.first_name,
            last_name=user.last_name,
            locale=user.locale,
            home_phone=user.home_phone,
            status=user.status,
            password_hash=password_hash,
            plain_password=plain_password,
        )
        if errors:
            return staged, errors
        for kind in ADDRESS_OBJECTS:
            address = getattr(user, kind)
            if address is not None:
                values = tuple(getattr(address, name) for name in ADDRESS_FIELDS)
                staged.addresses.append((kind.removesuffix("_address"), *values))
        staged.attributes.extend((user.attributes or {}).items())
        return staged, errors

    def _password(
        self, row: int, user: ImportedUser, errors: list[RowError]
    ) -> tuple[str | None, str | None]:
        if user.password is not None and user.password_hash is not None:
            errors.append(
                RowError(
                    row,
                    "password_hash",
                    "invalid_value",
                    "give either password or password_hash, not both",
                )
            )
            return None, None
        if user.password_hash is not None:
            try:
                parse_hash_scheme(self.context, user.password_hash)
            except ValueError as exc:
                errors.append(RowError(row, "password_hash", "invalid_value", str(exc)))
                return None, None
            return user.password_hash, None
        if user.password is not None:
            if not self.allow_plain_passwords:
                errors.append(
                    RowError(
                        row,
                        "password",
                        "invalid_value",
                        "plain passwords are imported only with --allow-plain-passwords",
                    )
                )
                return None, None
            length = len(user.password)
            if not self.password_min_length <= length <= self.password_max_length:
                errors.append(
                    RowError(
                        row,
                        "password",
                        "invalid_value",
                        f"password must be {self.password_min_length} to "
                        f"{self.password_max_length} characters long",
                    )
                )
                return None, None
            return None, user.password
        return None, None

    def _identifier_errors(
        self, row: int, data: dict[str, Any], *, already: set[str]
    ) -> list[RowError]:
        """Return the login error that `UserCreate` cannot see, when the login is a string."""
        login = data.get("login")
        if "login" in already or not isinstance(login, str):
            return []
        try:
            normalize_login(login)
        except InvalidValueError as exc:
            return [RowError(row, "login", "invalid_value", exc.message)]
        return []

    @staticmethod
    def _identifiers_only(row: int, data: dict[str, Any]) -> StagedUser:
        """Stage an invalid record with whichever of its identifiers pass their own checks."""
        user_key: uuid.UUID | None = None
        raw_key = data.get("user_key")
        if isinstance(raw_key, str):
            try:
                user_key = uuid.UUID(raw_key)
            except ValueError:
                user_key = None
        erid: str | None = None
        raw_erid = data.get("external_reference_id")
        if isinstance(raw_erid, str):
            try:
                erid = validate_erid(raw_erid)
            except InvalidValueError:
                erid = None
        login_normalized: str | None = None
        raw_login = data.get("login")
        if isinstance(raw_login, str):
            try:
                login_normalized = normalize_login(raw_login)
            except InvalidValueError:
                login_normalized = None
        return StagedUser(
            row=row,
            valid=False,
            user_key=user_key,
            user_key_given=user_key is not None,
            external_reference_id=erid,
            erid_given=erid is not None,
            login=raw_login if login_normalized else None,
            login_normalized=login_normalized,
        )
