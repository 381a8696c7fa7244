"""Password-hash handling for imports: a libpass handler for one legacy form and strict parsing.

Most legacy formats have a libpass handler already (`ldap_salted_sha1` for `{SSHA}`,
`django_salted_sha1` for `sha1$<salt>$<hex>`, and so on). The one added here is the salted
SHA-256 that some in-house stores keep as `sha256$<salt>$<hex>`. There `<hex>` is the lower-case
hex SHA-256 digest of the UTF-8 salt followed by the UTF-8 password. It is the layout of
Django's legacy salted SHA-1, with SHA-256 in place of SHA-1.
"""

from __future__ import annotations

import hashlib

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


def parse_hash_scheme(context: CryptContext, stored_hash: str) -> str:
    """Return the scheme of `stored_hash` after parsing it completely with that scheme's handler.

    Raises ValueError with a message for the report when the string is too long, names no
    accepted scheme, or is malformed for the scheme its prefix names.
    """
    if len(stored_hash) > MAX_HASH_LENGTH:
        raise ValueError(f"password_hash is longer than {MAX_HASH_LENGTH} characters")
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
