"""Find each request's source address, honouring a forwarding header only from trusted proxies.

`SourceAddressMiddleware`, and for the callbacks `app.rum.asgi`, store the address on
`request.state.source_address`, where the callback authentication, the throttle and the login
events read it. The header named by
`SSO_CLIENT_ADDRESS_HEADER` (X-Forwarded-For by default) is read only when the socket peer is
inside `SSO_TRUSTED_PROXIES`, which is empty by default, so a client can never choose its
own address by sending the header.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from app.settings import IPNetwork, Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# Cached because every request parses its peer's address, and most peers repeat (a load
# balancer, Digital River's callers). The bound keeps forged header values from growing it.
@functools.lru_cache(maxsize=4096)
def _parse_address(value: str) -> IPAddress | None:
    candidate = value.strip()
    if candidate.startswith("[") and "]" in candidate:
        # "[2001:db8::1]:443" as some proxies write IPv6 with a port.
        candidate = candidate[1 : candidate.index("]")]
    elif candidate.count(":") == 1:
        # "203.0.113.7:443": IPv4 with a port.
        candidate = candidate.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=4096)
def _address_text(value: str) -> str | None:
    """Return the address in `value` in its standard text form, or None if it names none."""
    address = _parse_address(value)
    return None if address is None else str(address)


def _is_trusted(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return any(address in network for network in trusted)


def source_address(
    peer: str | None, header_values: Sequence[str], trusted: Sequence[IPNetwork]
) -> str | None:
    """Return the client address for a request from `peer` carrying `header_values`.

    Without a trusted peer the header is ignored. Otherwise the list is read from the right,
    skipping trusted proxies, and the first other address is the client: addresses further
    left were written by the client itself and prove nothing. An unparsable entry stops the
    walk and the last trusted hop is used, so a malformed header never yields an address the
    client chose.
    """
    if not peer:
        # Unix sockets name no IP address.
        return None
    if not trusted:
        return _address_text(peer)
    peer_address = _parse_address(peer)
    if peer_address is None:
        # Test clients name no IP address.
        return None
    if not _is_trusted(peer_address, trusted):
        return str(peer_address)

    hops = [item for value in header_values for item in value.split(",") if item.strip()]
    client = peer_address
    for hop in reversed(hops):
        address = _parse_address(hop)
        if address is None:
            break
        client = address
        if not _is_trusted(address, trusted):
            break
    return str(client)


class SourceAddressResolver:
    """Find the source address of an HTTP request's scope under the configured proxies."""

    __slots__ = ("header", "trusted")

    def __init__(self, settings: Settings) -> None:
        self.trusted = tuple(settings.trusted_proxies)
        self.header = settings.client_address_header.lower().encode("latin-1")

    def __call__(self, scope: Scope) -> str | None:
        client = scope.get("client")
        peer = client[0] if client else None
        values = (
            [value.decode("latin-1") for name, value in scope["headers"] if name == self.header]
            if self.trusted
            else []
        )
        return source_address(peer, values, self.trusted)


class SourceAddressMiddleware:
    """Pure ASGI middleware that sets `request.state.source_address` for HTTP requests."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.resolve = SourceAddressResolver(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["source_address"] = self.resolve(scope)
        await self.app(scope, receive, send)
