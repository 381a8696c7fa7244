"""The floor for profile fetches: a bare ASGI app with asyncpg and no framework.

It does the minimum a RemoteUserFetch response needs: check the Basic credentials, find the ERID
in the body with a regular expression (no XML parser), run one indexed lookup on `users`, and
fill a fixed XML template. The service's throughput divided by this one's is the fraction of the
achievable rate that the framework, the XML parser and the ORM leave.

    BENCH_FLOOR_DSN=postgresql://... BENCH_AUTHORIZATION='Basic ...' \
        .venv/bin/uvicorn bench.floor_app:app --workers 2 --no-access-log
"""

from __future__ import annotations

import hmac
import os
import re
from typing import Any
from xml.sax.saxutils import escape

import asyncpg

_ERID = re.compile(rb"<externalReferenceID[^>]*>([^<]{1,64})</externalReferenceID>")
_QUERY = (
    "SELECT login, external_reference_id, first_name, last_name, email, locale, home_phone "
    "FROM users WHERE lower(external_reference_id) = lower($1) AND status = 'active'"
)
_OPEN = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<ns1:GetUserProfileResponse '
    'xmlns:ns1="http://integration.digitalriver.com/RemoteUserManagement/1.0" '
    'xmlns:ns2="http://integration.digitalriver.com/Common/1.0" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
    'xmlns:xsd="http://www.w3.org/2001/XMLSchema" xsi:type="ns1:GetUserProfileResponse">'
)
_FOUND = (
    "<ns2:userInfo><ns2:userKey><ns2:userID xsi:nil=\"true\"/>"
    "<ns2:externalReferenceID>{erid}</ns2:externalReferenceID>"
    "<ns2:companyID xsi:nil=\"true\"/><ns2:loginID>{login}</ns2:loginID>"
    "<ns2:siteID>headwtr</ns2:siteID></ns2:userKey>"
    "<ns2:firstName>{first}</ns2:firstName><ns2:lastName>{last}</ns2:lastName>"
    "<ns2:email>{email}</ns2:email><ns2:locale>{locale}</ns2:locale>"
    "<ns2:homePhone>{phone}</ns2:homePhone>"
    "<ns2:shippingAddress xsi:nil=\"true\"/><ns2:billingAddress xsi:nil=\"true\"/>"
    "</ns2:userInfo><errorMessage></errorMessage></ns1:GetUserProfileResponse>"
)
_MISSING = (
    _OPEN + '<ns2:userInfo xsi:nil="true"/><errorMessage>User not found</errorMessage>'
    "</ns1:GetUserProfileResponse>"
).encode()
_HEADERS = [(b"content-type", b"text/xml; charset=UTF-8")]

_state: dict[str, Any] = {}


def _text(value: str | None) -> str:
    return escape(value) if value else ""


async def _respond(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                size = int(os.environ.get("BENCH_FLOOR_POOL", "10"))
                _state["pool"] = await asyncpg.create_pool(
                    os.environ["BENCH_FLOOR_DSN"], min_size=size, max_size=size
                )
                _state["authorization"] = os.environ["BENCH_AUTHORIZATION"].encode()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await _state["pool"].close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)

    supplied = dict(scope["headers"]).get(b"authorization", b"")
    if not hmac.compare_digest(supplied, _state["authorization"]):
        await _respond(send, 401, b"")
        return
    match = _ERID.search(body)
    if match is None:
        await _respond(send, 400, b"")
        return
    row = await _state["pool"].fetchrow(_QUERY, match.group(1).decode())
    if row is None:
        await _respond(send, 200, _MISSING)
        return
    answer = _OPEN + _FOUND.format(
        erid=_text(row["external_reference_id"]),
        login=_text(row["login"]),
        first=_text(row["first_name"]),
        last=_text(row["last_name"]),
        email=_text(row["email"]),
        locale=_text(row["locale"]),
        phone=_text(row["home_phone"]),
    )
    await _respond(send, 200, answer.encode())
