"""Authenticate Digital River's calls: HTTP Basic credentials and an optional network allowlist."""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import ipaddress
import logging

from fastapi import Request

from app.settings import Settings

logger = logging.getLogger(__name__)


class CallerRejectedError(Exception):
    """A callback caller that failed authentication (401) or the network allowlist (403)."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message


def request_header(request: Request, name: bytes) -> str | None:
    """Return the first value of the header `name` (lower case), as `request.headers.get` does.

    It reads the ASGI scope's list directly: Starlette's `Headers` lower-cases and encodes the
    name on every lookup, and the callbacks read three headers on each request.
    """
    for key, value in request.scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _basic_credentials(header: str | None) -> tuple[bytes, bytes] | None:
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    username, separator, password = decoded.partition(b":")
    if not separator:
        return None
    return username, password


@functools.lru_cache(maxsize=4)
def _expected_header(username: str, password: str) -> bytes | None:
    """Return the Authorization value that most clients send for these credentials, or None
    for a user name with a colon, which the decoded check splits differently (RFC 7617)."""
    if ":" in username:
        return None
    return b"Basic " + base64.b64encode(f"{username}:{password}".encode())


def check_caller(request: Request, settings: Settings) -> None:
    """Raise CallerRejectedError unless the request comes from an allowed network with the
    agreed credentials.

    A header written exactly as `_expected_header` writes it is accepted after one
    `hmac.compare_digest` over the whole value. Any other header is decoded, and both the user
    name and the password are compared, each with `hmac.compare_digest`, so the time taken
    does not reveal which one was wrong.
    """
    if settings.rum_allowed_networks:
        host = getattr(request.state, "source_address", None) or (
            request.client.host if request.client else None
        )
        try:
            address = ipaddress.ip_address(str(host))
        except ValueError:
            address = None
        allowed = settings.rum_allowed_networks
        if address is None or not any(address in network for network in allowed):
            raise CallerRejectedError(
                403, "forbidden_network", "the caller's address is not in SSO_RUM_ALLOWED_NETWORKS"
            )

    header = request_header(request, b"authorization")
    if header is not None and settings.rum_username and settings.rum_password:
        expected = _expected_header(
            settings.rum_username, settings.rum_password.get_secret_value()
        )
        # Starlette decodes header values as latin-1, so this gives back the bytes as sent.
        if expected is not None and hmac.compare_digest(header.encode("latin-1"), expected):
            return

    expected_user = (settings.rum_username or "").encode()
    expected_password = (
        settings.rum_password.get_secret_value().encode() if settings.rum_password else b""
    )
    given = _basic_credentials(header)
    given_user, given_password = given if given is not None else (b"", b"")
    user_matches = hmac.compare_digest(given_user, expected_user)
    password_matches = hmac.compare_digest(given_password, expected_password)
    configured = bool(expected_user) and bool(expected_password)
    if not (configured and given is not None and user_matches and password_matches):
        raise CallerRejectedError(
            401, "unauthorized", "missing or invalid HTTP Basic credentials for the callbacks"
        )
