"""Domain errors of the user store; each surface (admin API, DR callbacks, CLI) renders them."""

from __future__ import annotations


class DomainError(Exception):
    """An expected failure with a stable machine-readable code and, where known, the field."""

    code = "error"
    status_code = 400

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code


class InvalidValueError(DomainError):
    code = "invalid_value"
    status_code = 422


class ConflictError(DomainError):
    """A value that the database's unique constraints or the ledger of issued identifiers reject."""

    code = "conflict"
    status_code = 409


class NotFoundError(DomainError):
    code = "not_found"
    status_code = 404


class PreconditionFailedError(DomainError):
    code = "precondition_failed"
    status_code = 412


class ImmutableFieldError(DomainError):
    code = "read_only_field"
    status_code = 422
