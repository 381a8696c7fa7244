"""Password hashing with libpass (the maintained passlib fork), run off the event loop.

New hashes are argon2id. Hashes in the other accepted schemes verify and are flagged for
re-hashing, so a user imported with a legacy hash is upgraded on their next successful login.
"""

from __future__ import annotations

import asyncio
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from passlib.context import CryptContext
from passlib.exc import UnknownHashError
from passlib.registry import register_crypt_handler_path
from passlib.utils import MAX_PASSWORD_SIZE

from app.identity.errors import InvalidValueError
from app.ops.metrics import timed_hashing
from app.ops.priority import lower_thread_priority
from app.settings import Settings

# Schemes a stored hash may use. The first is the default for new hashes; every other one is
# deprecated, so `verify` reports that the hash needs replacing.
ACCEPTED_SCHEMES = (
    "argon2",
    "bcrypt",
    "pbkdf2_sha256",
    "pbkdf2_sha512",
    "django_pbkdf2_sha256",
    "django_pbkdf2_sha1",
    "sha512_crypt",
    "sha256_crypt",
    # Forms that legacy stores keep and imports bring in; the string for each is listed in
    # docs/migration.md.
    "pbkdf2_sha1",
    "django_argon2",
    "django_bcrypt",
    "django_bcrypt_sha256",
    "ldap_salted_sha1",
    "ldap_salted_sha256",
    "ldap_salted_sha512",
    "django_salted_sha1",
    "salted_sha256",
)

# `sha256$<salt>$<hex>` has no handler in libpass; app.transfer.hashes defines it.
register_crypt_handler_path("salted_sha256", "app.transfer.hashes")

# bcrypt uses only the first 72 bytes of a password. Stores that hashed with bcrypt truncated
# silently, while the current `bcrypt` package rejects longer input, so verification truncates.
BCRYPT_MAX_BYTES = 72
BCRYPT_SCHEMES = frozenset({"bcrypt", "django_bcrypt"})


@dataclass(frozen=True, slots=True)
class VerifyResult:
    valid: bool
    replacement_hash: str | None = None


def build_context(settings: Settings) -> CryptContext:
    return CryptContext(
        schemes=list(ACCEPTED_SCHEMES),
        default="argon2",
        deprecated="auto",
        argon2__type="ID",
        argon2__memory_cost=settings.argon2_memory_cost_kib,
        argon2__rounds=settings.argon2_time_cost,
        argon2__parallelism=settings.argon2_parallelism,
    )


class PasswordHasher:
    """Hashes and verifies passwords in a dedicated thread pool.

    argon2-cffi and bcrypt release the GIL while hashing, so the pool uses every core while the
    event loop keeps serving other requests.
    """

    def __init__(self, settings: Settings) -> None:
        self.context = build_context(settings)
        self.min_length = settings.password_min_length
        self.max_length = settings.password_max_length
        self._executor = ThreadPoolExecutor(
            max_workers=settings.hash_threads,
            thread_name_prefix="password-hash",
            initializer=lower_thread_priority,
            initargs=(settings.hash_thread_nice,),
        )
        # Verified against when a login is unknown or has no password, so that such a login
        # costs the same argon2id work as a wrong password for a real user.
        self._timing_hash = self.context.hash(secrets.token_urlsafe(24))

    def check_policy(self, password: str, *, field: str = "password") -> None:
        """Raise InvalidValueError unless `password` has an allowed length.

        There are no composition rules: length is what makes a password strong.
        """
        if len(password) < self.min_length:
            raise InvalidValueError(
                f"password must be at least {self.min_length} characters long", field=field
            )
        if len(password) > self.max_length:
            raise InvalidValueError(
                f"password must be at most {self.max_length} characters long", field=field
            )

    def is_supported_hash(self, stored_hash: str) -> bool:
        return self.context.identify(stored_hash) is not None

    async def hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        work = timed_hashing("hash", self.context.hash)
        return await loop.run_in_executor(self._executor, work, password)

    async def verify(self, password: str, stored_hash: str | None) -> VerifyResult:
        """Check `password` against `stored_hash`, or against a decoy hash when it is None.

        A decoy check always returns invalid. A valid password whose hash uses an old scheme
        or old parameters returns the argon2id hash that should replace it.
        """
        loop = asyncio.get_running_loop()
        work = timed_hashing("verify", self._verify_sync)
        return await loop.run_in_executor(self._executor, work, password, stored_hash)

    def _verify_sync(self, password: str, stored_hash: str | None) -> VerifyResult:
        if len(password) > MAX_PASSWORD_SIZE:
            # passlib refuses longer secrets, so no stored hash can match; the decoy check on
            # a prefix keeps the time the same as for any other wrong password.
            self.context.verify(password[:MAX_PASSWORD_SIZE], self._timing_hash)
            return VerifyResult(valid=False)
        if stored_hash is None:
            self.context.verify(password, self._timing_hash)
            return VerifyResult(valid=False)
        try:
            scheme = self.context.identify(stored_hash)
        except UnknownHashError:
            scheme = None
        if scheme is None:
            self.context.verify(password, self._timing_hash)
            return VerifyResult(valid=False)
        secret: str | bytes = password
        if scheme in BCRYPT_SCHEMES:
            encoded = password.encode("utf-8")
            if len(encoded) > BCRYPT_MAX_BYTES:
                secret = encoded[:BCRYPT_MAX_BYTES]
        try:
            valid, replacement = self.context.verify_and_update(secret, stored_hash)
        except ValueError:
            # A malformed hash of a known scheme: treat it as a failed check.
            return VerifyResult(valid=False)
        if valid and replacement is not None and isinstance(secret, bytes):
            replacement = self.context.hash(password)
        return VerifyResult(valid=valid, replacement_hash=replacement if valid else None)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
