"""Service configuration, read once from `SSO_`-prefixed environment variables."""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Values that ship in examples and must never guard a real deployment.
PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "changethis", "secret", "password", "admin", "example"}
)


class Settings(BaseSettings):
    """Every setting of the service; each field is read from `SSO_<FIELD NAME>`."""

    model_config = SettingsConfigDict(env_prefix="SSO_", env_file=None, extra="ignore")

    environment: Literal["development", "production"] = "production"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    # Database. With no URL the service runs an embedded PostgreSQL in `data_dir`.
    database_url: SecretStr | None = None
    data_dir: Path = Path(".sso-data")
    db_pool_size: int = Field(default=10, ge=1, le=200)
    db_max_overflow: int = Field(default=5, ge=0, le=200)
    db_pool_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    db_statement_timeout_ms: int = Field(default=5000, ge=100)
    db_statement_cache_size: int = Field(
        default=100, ge=0, description="asyncpg prepared statements per connection; 0 for PgBouncer"
    )

    # Digital River callbacks.
    dr_site_id: str | None = None
    rum_username: str | None = None
    rum_password: SecretStr | None = None
    rum_allowed_networks: Annotated[list[IPNetwork], NoDecode] = []
    max_body_bytes: int = Field(default=65536, ge=1024, le=10 * 1024 * 1024)
    xml_max_depth: int = Field(default=32, ge=4, le=1000)
    xml_max_elements: int = Field(default=2000, ge=16, le=100_000)
    request_timeout_seconds: float = Field(default=10.0, gt=0, le=300)

    # Password hashing: argon2id at OWASP's minimum recommendation by default.
    argon2_memory_cost_kib: int = Field(default=19456, ge=1024)
    argon2_time_cost: int = Field(default=2, ge=1)
    argon2_parallelism: int = Field(default=1, ge=1)
    hash_threads: int = Field(default_factory=lambda: os.cpu_count() or 2, ge=1, le=256)
    password_min_length: int = Field(default=8, ge=1)
    password_max_length: int = Field(default=256, ge=8, le=4096)

    @field_validator("rum_allowed_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if self.password_min_length > self.password_max_length:
            raise ValueError("SSO_PASSWORD_MIN_LENGTH must not exceed SSO_PASSWORD_MAX_LENGTH")
        if self.environment == "development":
            return self
        if not self.rum_username or self.rum_username.strip().lower() in PLACEHOLDER_SECRETS:
            raise ValueError(
                "SSO_RUM_USERNAME is missing or a placeholder: set the user name agreed "
                "with Digital River, or set SSO_ENVIRONMENT=development for local use"
            )
        password = self.rum_password.get_secret_value() if self.rum_password else ""
        if password.strip().lower() in PLACEHOLDER_SECRETS or len(password) < 12:
            raise ValueError(
                "SSO_RUM_PASSWORD is missing, a placeholder or shorter than 12 characters: "
                "set the password agreed with Digital River"
            )
        return self

    @property
    def is_development(self) -> bool:
        return self.environment == "development"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, read from the environment on first use."""
    return Settings()
