"""Password-hash handling for imports: a libpass handler for one legacy form and strict parsing.

Most legacy formats have a libpass handler already (`ldap_salted_sha1` for `{SSHA}`,
`django_salted_sha1` for `sha1$<salt>$<hex>`, and so on). The one added here is the salted
SHA-256 that some in-house stores keep as `sha256$<salt>$<hex>`. There `<hex>` is the lower-case
hex SHA-256 digest of the UTF-8 salt followed by the UTF-8 password. It is the layout of
Django's legacy salted SHA-1, with SHA-256 in place of SHA-1.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable

from passlib.context import CryptContext
from passlib.exc import UnknownHashError
from passlib.utils import handlers as uh

# Upper bound on a stored hash. The longest accepted form (argon2 with large parameters) is far
# below it, so anything longer is not a hash.
MAX_HASH_LENGTH = 1024

_SALT_CHARACTERS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ./+=_-"


# libpass names its handlers in lower case.
class salted_sha256(uh.HasSalt, uh.GenericHandler):  # type: ignore[misc]
    """Salted SHA-256 in the form `sha256$<salt>$<hex of sha256(salt + password)>`."""

    name = "salted_sha256"
    ident = "sha256$"
    setting_kwds = ("salt", "salt_size")
    checksum_size = 64
    checksum_chars = uh.LOWER_HEX_CHARS
    min_salt_size = 1
    max_salt_size = 64
    default_salt_size = 16
    salt_chars = _SALT_CHARACTERS

    @classmethod
    def from_string(cls, hash: str | bytes) -> salted_sha256:
        salt, checksum = uh.parse_mc2(hash, cls.ident, handler=cls)
        return cls(salt=salt, checksum=checksum.lower() if checksum else checksum)

    def to_string(self) -> str:
        return str(uh.render_mc2(self.ident, self.salt, self.checksum))

    def _calc_checksum(self, secret: str | bytes) -> str:
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        return hashlib.sha256(self.salt.encode("utf-8") + secret).hexdigest()


def _ssha_length_ok(match: re.Match[str]) -> bool:
    # {SSHA} is base64 of a 20-byte SHA-1 digest followed by a salt of 4 to 16 bytes.
    try:
        decoded = base64.b64decode(match["encoded"], validate=True)
    except binascii.Error:
        return False
    return 24 <= len(decoded) <= 36


def _argon2_memory_ok(match: re.Match[str]) -> bool:
    # argon2 needs at least 8 KiB of memory per lane.
    return int(match["memory"]) >= 8 * int(match["lanes"])


def _always(match: re.Match[str]) -> bool:
    return True


# Canonical forms of the most common schemes, as their standard implementations write them:
# default digest lengths, no leading zeros, no optional fields. Every string these accept is
# also accepted by the scheme's libpass handler and identified as that scheme
# (tests/test_import_validation.py checks that on random samples), so a match needs no libpass
# parse. Anything else, valid or not, goes through the handler, which decides and writes the
# error message.
_CANONICAL_FORMS: tuple[tuple[str, re.Pattern[str], Callable[[re.Match[str]], bool]], ...] = (
    (
        "argon2",
        re.compile(
            r"\$argon2id\$v=19\$m=(?P<memory>[1-9][0-9]{0,6}),t=[1-9][0-9]{0,8},"
            r"p=(?P<lanes>[1-4])\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}"
        ),
        _argon2_memory_ok,
    ),
    (
        "bcrypt",
        # The last salt and digest characters carry unused bits, which must be zero.
        re.compile(
            r"\$2[aby]\$(?:0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{21}[.Oeu]"
            r"[./A-Za-z0-9]{30}[.CGKOSWaeimquy26]"
        ),
        _always,
    ),
    (
        "pbkdf2_sha256",
        re.compile(r"\$pbkdf2-sha256\$[1-9][0-9]{0,8}\$[./A-Za-z0-9]{22}\$[./A-Za-z0-9]{43}"),
        _always,
    ),
    (
        "django_pbkdf2_sha256",
        re.compile(r"pbkdf2_sha256\$[1-9][0-9]{0,8}\$[A-Za-z0-9]{1,64}\$[A-Za-z0-9+/]{43}="),
        _always,
    ),
    (
        "sha512_crypt",
        re.compile(r"\$6\$[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{86}"),
        _always,
    ),
    (
        "ldap_salted_sha1",
        re.compile(
            r"\{SSHA\}(?P<encoded>[A-Za-z0-9+/]{30,46}(?:[A-Za-z0-9+/]{2}|[A-Za-z0-9+/]=|==))"
        ),
        _ssha_length_ok,
    ),
)


def canonical_scheme(context: CryptContext, stored_hash: str) -> str | None:
    """Return the scheme of `stored_hash` if it is in one of the canonical forms, else None."""
    for scheme, pattern, extra_check in _CANONICAL_FORMS:
        match = pattern.fullmatch(stored_hash)
        if match is not None:
            accepted = extra_check(match) and scheme in context.schemes()
            return scheme if accepted else None
    return None


def parse_hash_scheme(context: CryptContext, stored_hash: str) -> str:
    """Return the scheme of `stored_hash` once it is known to parse with that scheme's handler.

    A hash in a canonical form of a common scheme is recognised by its pattern alone. Any other
    string is identified and parsed completely by libpass. Raises ValueError with a message for
    the report when the string is too long, names no accepted scheme, or is malformed for the
    scheme its prefix names.
    """
    if len(stored_hash) > MAX_HASH_LENGTH:
        raise ValueError(f"password_hash is longer than {MAX_HASH_LENGTH} characters")
    scheme = canonical_scheme(context, stored_hash)
    if scheme is not None:
        return scheme
    return parse_with_handler(context, stored_hash)


def parse_with_handler(context: CryptContext, stored_hash: str) -> str:
    """Identify and parse `stored_hash` with libpass. Raises ValueError like parse_hash_scheme."""
    try:
        scheme = context.identify(stored_hash)
    except UnknownHashError:
        scheme = None
    if scheme is None:
        raise ValueError(
            "password_hash is not in an accepted format: see the list of accepted hash "
            "strings in docs/migration.md"
        )
    handler = context.handler(scheme)
    candidate = stored_hash
    # Prefix wrappers (django_argon2 wraps argon2) parse through the handler they wrap.
    while isinstance(handler, uh.PrefixWrapper):
        candidate = handler._unwrap_hash(candidate)
        handler = handler.wrapped
    try:
        handler.from_string(candidate)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"password_hash looks like {scheme} but is malformed: {exc}") from None
    return str(scheme)
