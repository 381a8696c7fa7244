"""Security headers on every response the app sends.

Admin API responses carry personal data, password hashes (in exports) and new API keys, so no
response may be cached, sniffed as another content type, framed or leak its URL in a
`Referer`. Every response gets:

- `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`, `X-Frame-Options: DENY`;
- `Cache-Control: no-store`, unless the route set its own, and except for the static files of
  the documentation pages;
- a `Content-Security-Policy`. JSON, XML and plain-text responses get one that allows nothing,
  as OWASP's REST security cheat sheet advises for APIs. The documentation pages get one that
  allows only the service's own scripts, styles and spec. The inline script of Swagger UI is
  allowed by its SHA-256 hash, computed from the page as sent, so nothing else inline runs.
  That policy also stops ReDoc's request for Redocly's logo on its CDN.

`create_app` puts the middleware outside the whole stack (`wrap_middleware_stack`), Starlette's
error middleware included, so a 500 for an unhandled exception gets the headers too.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.paths import route_path

DOCS_PAGES: Final = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
# fastapi-offline serves the Swagger UI and ReDoc scripts, styles and icons under this prefix.
DOCS_STATIC_PREFIX: Final = "/static-offline-docs/"

API_POLICY: Final = (
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
# ReDoc and Swagger UI set inline styles while they render, and ReDoc runs its search in a
# worker created from a blob: URL. `data:` images are Swagger UI's icons.
DOCS_POLICY: Final = (
    "default-src 'none'; script-src 'self'{script_hashes}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
COMMON_HEADERS: Final = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
_API_POLICY_BYTES: Final = API_POLICY.encode("ascii")
# The headers an API response gets when it sets none of them itself.
API_RESPONSE_HEADERS: Final = (
    *COMMON_HEADERS,
    (b"content-security-policy", _API_POLICY_BYTES),
    (b"cache-control", b"no-store"),
)
_INLINE_SCRIPT: Final = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def script_hashes(page: bytes) -> list[str]:
    """Return the CSP source expressions (`'sha256-...'`) of the page's inline scripts."""
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode("ascii") + "'"
        for script in _INLINE_SCRIPT.findall(page)
    ]


def docs_policy(page: bytes) -> str:
    return DOCS_POLICY.format(script_hashes="".join(" " + h for h in script_hashes(page)))


def _with_headers(message: Message, policy: bytes, *, cacheable: bool = False) -> Message:
    headers = list(message.get("headers", ()))
    present = {name.lower() for name, _ in headers}
    additions = [header for header in COMMON_HEADERS if header[0] not in present]
    if b"content-security-policy" not in present:
        additions.append((b"content-security-policy", policy))
    if not cacheable and b"cache-control" not in present:
        additions.append((b"cache-control", b"no-store"))
    return {**message, "headers": headers + additions}


class SecurityHeadersMiddleware:
    """Pure ASGI middleware that adds the headers above to each HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        if path in DOCS_PAGES:
            await self._send_docs_page(scope, receive, send)
            return
        cacheable = path.startswith(DOCS_STATIC_PREFIX)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = _with_headers(message, _API_POLICY_BYTES, cacheable=cacheable)
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _send_docs_page(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The policy names the hashes of the page's inline scripts, so the page is held until
        # its last body part. These pages are a few kilobytes of HTML.
        start: Message | None = None
        parts: list[bytes] = []

        async def send_when_complete(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            parts.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            page = b"".join(parts)
            await send(_with_headers(start, docs_policy(page).encode("ascii")))
            await send({"type": "http.response.body", "body": page})

        await self.app(scope, receive, send_when_complete)
