"""Service configuration, read once from `SSO_`-prefixed environment variables."""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.identity.schemas import ATTRIBUTE_NAME_RE
from app.rum.password_cipher import decode_key, read_key_file

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Values that ship in examples and must never guard a real deployment.
PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "changethis", "secret", "password", "admin", "example"}
)


class Settings(BaseSettings):
    """Every setting of the service; each field is read from `SSO_<FIELD NAME>`."""

    # Validation errors leave out the input, because it includes secrets such as the password
    # key and SSO_RUM_PASSWORD, and startup errors are logged.
    model_config = SettingsConfigDict(
        env_prefix="SSO_", env_file=None, extra="ignore", hide_input_in_errors=True
    )

    environment: Literal["development", "production"] = "production"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    # Database. With no URL the service runs an embedded PostgreSQL in `data_dir`.
    database_url: SecretStr | None = None
    data_dir: Path = Path(".sso-data")
    db_pool_size: int = Field(default=10, ge=1, le=200)
    db_max_overflow: int = Field(default=5, ge=0, le=200)
    db_driver_pool_size: int = Field(
        default=10, ge=1, le=200, description="connections for the callbacks' driver statements"
    )
    db_pool_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    db_statement_timeout_ms: int = Field(default=5000, ge=100)
    db_lock_timeout_ms: int = Field(default=3000, ge=100)
    db_pool_recycle_seconds: int = Field(
        default=1800, ge=-1, description="replace pooled connections older than this; -1 never"
    )
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

    # --- Brute-force protection, source addresses, request limits, login-event retention ---
    # The source address comes from `client_address_header` only when the socket peer is in
    # `trusted_proxies` (empty by default: the header is never trusted).
    trusted_proxies: Annotated[list[IPNetwork], NoDecode] = []
    client_address_header: str = Field(default="X-Forwarded-For", min_length=1, max_length=64)
    # Per account: `max_failures` failed logins within `window_seconds` lock it for
    # base * 2^(earlier lockouts) seconds, capped at the max. The defaults let at most 35
    # guesses through in the first hour of an attack and 20 in each later hour.
    throttle_account_max_failures: int = Field(default=5, ge=1, le=1000)
    throttle_account_window_seconds: int = Field(default=900, ge=1, le=86_400)
    throttle_lockout_base_seconds: int = Field(default=60, ge=1, le=86_400)
    throttle_lockout_max_seconds: int = Field(default=900, ge=1, le=86_400)
    # Quiet time after which an account's or address's lockout count starts again at zero.
    throttle_lockout_reset_seconds: int = Field(default=86_400, ge=60, le=30 * 86_400)
    # Per source address; 0 switches address throttling off. Off by default because behind
    # Digital River every callback comes from DR's servers, so a per-address limit would count
    # all shoppers together and could block DR itself.
    throttle_address_max_failures: int = Field(default=0, ge=0, le=1_000_000)
    throttle_address_window_seconds: int = Field(default=300, ge=1, le=86_400)
    throttle_address_block_base_seconds: int = Field(default=60, ge=1, le=86_400)
    throttle_address_block_max_seconds: int = Field(default=900, ge=1, le=86_400)
    # Longest run of text between two tags in a callback; DR's fields are far shorter.
    xml_max_text_length: int = Field(default=16_384, ge=256, le=10 * 1024 * 1024)
    # Request line plus headers. `sso-provider serve` stops buffering an incomplete head at this
    # size, and the app rejects a larger complete head with 431.
    max_header_bytes: int = Field(default=16_384, ge=1024, le=1024 * 1024)
    # uvicorn's HTTP/1.1 parser. httptools (llhttp, in C) served 31 % more profile fetches per
    # second than h11 (pure Python) in one `bench/run.sh --workers 1` pair (docs/benchmarks.md).
    # Both apply `max_header_bytes` while a head is still arriving (app/ops/http_protocol.py).
    http_parser: Literal["h11", "httptools"] = "httptools"
    # Body limit for every path outside /rum (the callbacks use `max_body_bytes`).
    max_api_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    login_event_retention_days: int = Field(default=90, ge=1, le=3650)
    login_event_purge_batch_size: int = Field(default=1000, ge=1, le=100_000)
    # Seconds between background purges in each replica; 0 leaves purging to the command.
    login_event_purge_interval_seconds: int = Field(default=3600, ge=0, le=7 * 86_400)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_trusted_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @model_validator(mode="after")
    def _check_throttle(self) -> Settings:
        if self.throttle_lockout_base_seconds > self.throttle_lockout_max_seconds:
            raise ValueError(
                "SSO_THROTTLE_LOCKOUT_BASE_SECONDS must not exceed SSO_THROTTLE_LOCKOUT_MAX_SECONDS"
            )
        if self.throttle_address_block_base_seconds > self.throttle_address_block_max_seconds:
            raise ValueError(
                "SSO_THROTTLE_ADDRESS_BLOCK_BASE_SECONDS must not exceed "
                "SSO_THROTTLE_ADDRESS_BLOCK_MAX_SECONDS"
            )
        return self
    # --- end of brute-force protection and limits ---

    # --- SSO session tokens, registration, encrypted passwords, extended attributes ---
    # A token lives `session_lifetime_minutes`, never less than Digital River's 60-minute
    # session. With sliding renewal, each successful validation moves the expiry to now plus
    # the lifetime, but never past `session_max_lifetime_minutes` after the token was issued.
    session_lifetime_minutes: int = Field(default=480, ge=60, le=30 * 1440)
    session_sliding_renewal: bool = False
    session_max_lifetime_minutes: int = Field(default=1440, ge=60, le=90 * 1440)
    # Names of `extendedAttributes` items that may carry a session token, besides
    # `sessionToken`; comma-separated, tried in request order.
    rum_session_token_attributes: Annotated[list[str], NoDecode] = []
    # A repeated registration (same login and password) of a user created by a Create request
    # this many seconds ago or less gets the same ERID instead of "Email already used".
    rum_registration_retry_window_seconds: int = Field(default=600, ge=0, le=86_400)
    # Decryption of the `password` element of Login and Create requests. The key is Base64 of
    # 32 bytes, given directly or in a file; docs/callbacks.md describes the byte format.
    rum_password_cipher: Literal["none", "aes-256-gcm", "aes-256-cbc"] = "none"  # noqa: S105
    rum_password_key: SecretStr | None = None
    rum_password_key_file: Path | None = None
    # Extended attribute names stored from Create requests and returned in Login, Profile,
    # Session and Create responses; comma-separated, other names are ignored.
    rum_stored_attributes: Annotated[list[str], NoDecode] = []
    rum_returned_attributes: Annotated[list[str], NoDecode] = []
    _rum_password_key_bytes: bytes | None = PrivateAttr(default=None)

    @field_validator(
        "rum_session_token_attributes",
        "rum_stored_attributes",
        "rum_returned_attributes",
        mode="before",
    )
    @classmethod
    def _split_attribute_names(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator(
        "rum_session_token_attributes", "rum_stored_attributes", "rum_returned_attributes"
    )
    @classmethod
    def _check_attribute_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not ATTRIBUTE_NAME_RE.fullmatch(name):
                raise ValueError(
                    f"attribute name {name!r} must be 1 to 128 characters of A-Z, a-z, 0-9 "
                    "and _ . : -"
                )
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _check_sessions_and_cipher(self) -> Settings:
        if self.session_max_lifetime_minutes < self.session_lifetime_minutes:
            raise ValueError(
                "SSO_SESSION_MAX_LIFETIME_MINUTES must not be less than "
                "SSO_SESSION_LIFETIME_MINUTES"
            )
        key_given = self.rum_password_key is not None or self.rum_password_key_file is not None
        if self.rum_password_cipher == "none":  # noqa: S105
            if key_given:
                raise ValueError(
                    "SSO_RUM_PASSWORD_KEY or SSO_RUM_PASSWORD_KEY_FILE is set but "
                    "SSO_RUM_PASSWORD_CIPHER is none: set the cipher agreed with Digital River "
                    "(aes-256-gcm or aes-256-cbc) or remove the key"
                )
            self._rum_password_key_bytes = None
            return self
        if self.rum_password_key is not None and self.rum_password_key_file is not None:
            raise ValueError(
                "set only one of SSO_RUM_PASSWORD_KEY and SSO_RUM_PASSWORD_KEY_FILE"
            )
        if self.rum_password_key is not None:
            self._rum_password_key_bytes = decode_key(
                self.rum_password_key.get_secret_value(), "SSO_RUM_PASSWORD_KEY"
            )
        elif self.rum_password_key_file is not None:
            self._rum_password_key_bytes = read_key_file(self.rum_password_key_file)
        else:
            raise ValueError(
                f"SSO_RUM_PASSWORD_CIPHER is {self.rum_password_cipher} but no key is set: set "
                "SSO_RUM_PASSWORD_KEY or SSO_RUM_PASSWORD_KEY_FILE to the Base64 of the 32-byte "
                "key agreed with Digital River"
            )
        return self

    @property
    def rum_password_key_bytes(self) -> bytes | None:
        """The decoded password decryption key, or None when no cipher is configured."""
        return self._rum_password_key_bytes
    # --- end of SSO session tokens, registration, encrypted passwords, attributes ---

    # --- Operations: hashing thread priority ---
    # Niceness added to each password-hashing thread (Linux). The event loop keeps its normal
    # priority, so argon2id work yields the CPU to request handling and only uses what is left.
    # Off by default: on a host shared with other busy processes, niced hashing falls behind
    # them too. Set 10 where the service has its cores to itself (a container with CPU limits).
    hash_thread_nice: int = Field(default=0, ge=0, le=19)
    # --- end of operations ---

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
