"""ORM models; importing this package registers every table on `Base.metadata`."""

from app.models.admin import ApiKey, AuditEvent
from app.models.base import Base
from app.models.security import LoginEvent, ThrottleCounter
from app.models.session import SsoSession
from app.models.user import IssuedIdentifier, User, UserAddress, UserAttribute

__all__ = [
    "ApiKey",
    "AuditEvent",
    "Base",
    "IssuedIdentifier",
    "LoginEvent",
    "SsoSession",
    "ThrottleCounter",
    "User",
    "UserAddress",
    "UserAttribute",
]
