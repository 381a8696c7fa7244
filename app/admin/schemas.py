"""Request and response bodies of the admin API that the identity schemas do not cover."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.config import JsonDict
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from app.identity.schemas import USER_READ_EXAMPLE, ProfilePatch, UserRead

# Fields a PATCH must not send, with the error code and message each one gets.
_READ_ONLY = "{field} never changes once issued: leave it out of the request"
_OTHER_ENDPOINT = {
    "status": "status is changed with POST /admin/v1/users/{user_key}/disable or /enable",
    "password": "the password is changed with PUT /admin/v1/users/{user_key}/password",
    "password_hash": "the password is changed with PUT /admin/v1/users/{user_key}/password",
}


class UserPatch(ProfilePatch):
    """A PATCH body: the profile fields to change (JSON merge patch, RFC 7396).

    `user_key` and `external_reference_id` are read-only, and `status` and the password have
    their own endpoints; sending any of them is a 422 naming the field.
    """

    user_key: SkipJsonSchema[Any] = None
    external_reference_id: SkipJsonSchema[Any] = None
    status: SkipJsonSchema[Any] = None
    password: SkipJsonSchema[Any] = Field(default=None, repr=False)
    password_hash: SkipJsonSchema[Any] = Field(default=None, repr=False)

    @field_validator("user_key", "external_reference_id", mode="before")
    @classmethod
    def _reject_read_only(cls, value: Any, info: Any) -> Any:
        raise PydanticCustomError("read_only_field", _READ_ONLY.format(field=info.field_name))

    @field_validator("status", "password", "password_hash", mode="before")
    @classmethod
    def _reject_other_endpoint(cls, value: Any, info: Any) -> Any:
        raise PydanticCustomError("use_dedicated_endpoint", _OTHER_ENDPOINT[info.field_name])

    def profile_changes(self) -> ProfilePatch:
        """Return the patch without the rejected fields, keeping which fields were sent."""
        sent = self.model_fields_set & set(ProfilePatch.model_fields)
        return ProfilePatch.model_construct(
            _fields_set=sent, **{name: getattr(self, name) for name in ProfilePatch.model_fields}
        )


class PasswordSet(BaseModel):
    """A new password; it is checked against the length policy and stored as argon2id."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"password": "a long passphrase is best"}]},
    )

    password: str = Field(repr=False, description="8 to 256 characters by default, no other rules.")


class UserPage(BaseModel):
    """One page of users, oldest first; pass `next_cursor` as `cursor` for the next page."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"items": [USER_READ_EXAMPLE], "next_cursor": "eyJrIjoidXNlcnMiLCJ0IjoiMjAyNi0"}
            ]
        }
    )

    items: list[UserRead]
    next_cursor: str | None = Field(description="null on the last page.")


AUDIT_EVENT_EXAMPLE: JsonDict = {
    "id": 42,
    "occurred_at": "2026-12-04T20:05:00.654321Z",
    "actor_key_id": "0f6c1f7e-2b0a-4d3c-9a51-7d2c8e4b6a10",
    "actor_name": "support-team",
    "action": "user.update",
    "target_user_key": "3f0e9c55-4b7a-4d39-a2a4-9d1f3c8e5b21",
    "changed_fields": ["email", "shipping_address.line1"],
    "request_id": "5b0d8c5e0c1e4c8f9d1f2a3b4c5d6e7f",
    "details": {},
}


class AuditEventRead(BaseModel):
    """One admin change: who made it, what it changed, and in which request."""

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={"examples": [AUDIT_EVENT_EXAMPLE]},
    )

    id: int
    occurred_at: datetime
    actor_key_id: uuid.UUID | None = Field(description="null for changes made with the CLI.")
    actor_name: str = Field(description="The API key's name, or `cli`.")
    action: str = Field(description="Such as `user.create`, `user.update`, `api_key.revoke`.")
    target_user_key: uuid.UUID | None
    changed_fields: list[str] = Field(description="Names only; secret values are never stored.")
    request_id: str | None
    details: dict[str, Any]


class AuditEventPage(BaseModel):
    """One page of audit events, oldest first."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [AUDIT_EVENT_EXAMPLE],
                    "next_cursor": None,
                }
            ]
        }
    )

    items: list[AuditEventRead]
    next_cursor: str | None = Field(description="null on the last page.")
