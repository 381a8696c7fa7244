"""Rules for logins and external reference ids (ERIDs).

Login normalisation is Unicode NFKC followed by case folding, then NFKC again because case
folding can produce text that is no longer normalised (this is the `toNFKC_Casefold` idea of
Unicode's UAX #31, built from Python's `unicodedata`). It is used rather than the PRECIS
UsernameCaseMapped profile because PRECIS rejects characters that logins in existing user stores
do contain (inner spaces, symbols, compatibility forms such as full-width letters), and a
migration must accept every login the old store accepted. `Émile@Example.com`,
`émile@example.com` and the decomposed `E` + U+0301 form all normalise to one login.
"""

from __future__ import annotations

import re
import unicodedata
import uuid

from app.identity.errors import InvalidValueError

LOGIN_MAX_LENGTH = 256
ERID_MAX_LENGTH = 64
ERID_RE = re.compile(r"[A-Za-z0-9._:@-]{1,64}")

# Unicode categories never allowed in a login: controls, format characters, surrogates,
# private use and unassigned code points.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})


def normalize_login(login: str, *, field: str = "login") -> str:
    """Return the normalised form of `login`, the key that makes logins unique.

    Raises InvalidValueError for empty logins, surrounding white space, control or
    unassigned characters, and logins longer than 256 characters.
    """
    if not login:
        raise InvalidValueError("login must not be empty", field=field)
    if login != login.strip():
        raise InvalidValueError(
            "login must not start or end with white space: remove the surrounding spaces",
            field=field,
        )
    if len(login) > LOGIN_MAX_LENGTH:
        raise InvalidValueError(
            f"login is longer than {LOGIN_MAX_LENGTH} characters", field=field
        )
    if login.isascii() and login.isprintable():
        # Printable ASCII has no forbidden character, NFKC leaves it unchanged, and its case
        # folding is lower(), so this is the result of the general path below, only faster.
        folded = login.lower()
    else:
        for character in login:
            if unicodedata.category(character) in _FORBIDDEN_CATEGORIES:
                raise InvalidValueError(
                    f"login contains the control or unassigned character U+{ord(character):04X}",
                    field=field,
                )
        folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", login).casefold())
    if folded != folded.strip() or not folded:
        raise InvalidValueError("login normalises to white space", field=field)
    return folded


def validate_erid(value: str, *, field: str = "external_reference_id") -> str:
    """Return `value` if it is a valid ERID: 1 to 64 of `A-Z a-z 0-9 . _ : @ -`."""
    if not ERID_RE.fullmatch(value):
        raise InvalidValueError(
            "external_reference_id must be 1 to 64 characters of A-Z, a-z, 0-9 and . _ : @ -",
            field=field,
        )
    return value


def generate_erid() -> str:
    """Return a new ERID in the form of Digital River's samples: an upper-case UUID."""
    return str(uuid.uuid4()).upper()
