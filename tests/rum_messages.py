"""Digital River callback bodies in the Axis "encoded" style of DR's published samples."""

from __future__ import annotations

import base64
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from tests.conftest import RUM_PASSWORD, RUM_USERNAME

RUM_NS = "http://integration.digitalriver.com/RemoteUserManagement/1.0"
COMMON_NS = "http://integration.digitalriver.com/Common/1.0"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"

_DECLARATIONS = (
    f'xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="{XSI_NS}"'
)


def basic_auth(username: str = RUM_USERNAME, password: str = RUM_PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "text/xml; charset=UTF-8"}


def _leaf(name: str, value: str | None) -> str:
    if value is None:
        return f'<{name} xsi:nil="true" {_DECLARATIONS}/>'
    return f'<{name} xsi:type="xsd:string" {_DECLARATIONS}>{value}</{name}>'


def login_request(login_id: str, password: str, *, site_id: str | None = None) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<ns1:LoginRequest xmlns:ns1="{RUM_NS}">'
        f'<userKey xsi:type="ns2:UserKey" xmlns:ns2="{COMMON_NS}" {_DECLARATIONS}>'
        f"{_leaf('userID', None)}{_leaf('externalReferenceID', None)}{_leaf('companyID', None)}"
        f"{_leaf('loginID', login_id)}{_leaf('siteID', site_id)}"
        "</userKey>"
        f"{_leaf('password', password)}"
        f'<extendedAttributes xsi:nil="true" {_DECLARATIONS}/>'
        "</ns1:LoginRequest>"
    ).encode()


def profile_request(
    erid: str, *, site_id: str | None = "headwtr", root: str = "GetUserProfileRequest"
) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<ns1:{root} xmlns:ns1="{RUM_NS}">'
        f'<userKey xsi:type="ns2:UserKey" xmlns:ns2="{COMMON_NS}" {_DECLARATIONS}>'
        f"{_leaf('userID', None)}{_leaf('externalReferenceID', erid)}"
        f"{_leaf('companyID', 'headwtr')}{_leaf('loginID', None)}{_leaf('siteID', site_id)}"
        "</userKey>"
        f"{_leaf('sessionToken', None)}"
        f'<extendedAttributes xmlns:ns3="{COMMON_NS}" {_DECLARATIONS}>'
        f'<item xsi:type="ns3:ExtendedAttributesInfo">{_leaf("name", "crmSession")}'
        f'{_leaf("value", "F3CB68D6-1643-11DD-8402-E6326E64542C/8443")}'
        f'{_leaf("valueDataType", "string")}</item>'
        "</extendedAttributes>"
        f"</ns1:{root}>"
    ).encode()


def parse(body: bytes) -> ElementTree.Element:
    return ElementTree.fromstring(body)  # noqa: S314 (the service's own response)


def child_text(element: ElementTree.Element, *path: str) -> str | None:
    """Return the text at `path` below `element`, matching local names in any namespace."""
    current: ElementTree.Element | None = element
    for name in path:
        assert current is not None
        current = next(
            (child for child in current if child.tag.rsplit("}", 1)[-1] == name), None
        )
        if current is None:
            raise AssertionError(f"element {'/'.join(path)} not found")
    assert current is not None
    return current.text


def is_nil(element: ElementTree.Element, *path: str) -> bool:
    current: ElementTree.Element | None = element
    for name in path:
        assert current is not None
        current = next(
            (child for child in current if child.tag.rsplit("}", 1)[-1] == name), None
        )
    assert current is not None, f"element {'/'.join(path)} not found"
    return current.get(f"{{{XSI_NS}}}nil") == "true"


# --- ValidateSessionRequest and CreateUserProfileRequest bodies ---

DEFAULT_USER_INFO: dict[str, str | None] = {
    "firstName": "Jane",
    "lastName": "Doe",
    "locale": "en_US",
    "homePhone": "952-555-0100",
}
DEFAULT_SHIPPING: dict[str, str | None] = {
    "name1": "Jane Doe",
    "line1": "10380 Bren Road West",
    "city": "Minnetonka",
    "state": "MN",
    "postalCode": "55343",
    "country": "US",
}


def _escaped_leaf(name: str, value: str | None) -> str:
    return _leaf(name, None if value is None else escape(value))


def extended_attributes(items: list[tuple[str, str | None]] | None) -> str:
    """Render `extendedAttributes` with one item per (name, value), or nil for None."""
    if items is None:
        return f'<extendedAttributes xsi:nil="true" {_DECLARATIONS}/>'
    rendered = "".join(
        f'<item xsi:type="ns3:ExtendedAttributesInfo">{_escaped_leaf("name", name)}'
        f'{_escaped_leaf("value", value)}{_leaf("valueDataType", "string")}</item>'
        for name, value in items
    )
    return f'<extendedAttributes xmlns:ns3="{COMMON_NS}" {_DECLARATIONS}>{rendered}</extendedAttributes>'


def session_request(
    token: str | None,
    *,
    attributes: list[tuple[str, str | None]] | None = None,
    login_id: str | None = None,
    erid: str | None = None,
    site_id: str | None = "headwtr",
) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<ns1:ValidateSessionRequest xmlns:ns1="{RUM_NS}">'
        f'<userKey xsi:type="ns2:UserKey" xmlns:ns2="{COMMON_NS}" {_DECLARATIONS}>'
        f"{_leaf('userID', None)}{_escaped_leaf('externalReferenceID', erid)}"
        f"{_leaf('companyID', None)}{_escaped_leaf('loginID', login_id)}"
        f"{_escaped_leaf('siteID', site_id)}"
        "</userKey>"
        f"{_escaped_leaf('sessionToken', token)}"
        f"{extended_attributes(attributes)}"
        "</ns1:ValidateSessionRequest>"
    ).encode()


def _address(name: str, fields: dict[str, str | None] | None) -> str:
    if fields is None:
        return f'<{name} xsi:nil="true" {_DECLARATIONS}/>'
    inner = "".join(_escaped_leaf(key, value) for key, value in fields.items())
    return f'<{name} xsi:type="ns2:AddressInfo">{inner}</{name}>'


def create_request(
    login_id: str,
    password: str,
    *,
    user_info: dict[str, str | None] | None = None,
    shipping: dict[str, str | None] | None = DEFAULT_SHIPPING,
    billing: dict[str, str | None] | None = None,
    attributes: list[tuple[str, str | None]] | None = None,
    root: str = "CreateUserProfileRequest",
) -> bytes:
    """A Create request; `user_info` overrides DEFAULT_USER_INFO (email defaults to the login)."""
    info: dict[str, str | None] = {**DEFAULT_USER_INFO, "email": login_id}
    info.update(user_info or {})
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<ns1:{root} xmlns:ns1="{RUM_NS}">'
        f'<userInfo xsi:type="ns2:UserInfo" xmlns:ns2="{COMMON_NS}" {_DECLARATIONS}>'
        '<userKey xsi:type="ns2:UserKey">'
        f"{_leaf('userID', None)}{_leaf('externalReferenceID', None)}{_leaf('companyID', None)}"
        f"{_escaped_leaf('loginID', login_id)}{_leaf('siteID', 'headwtr')}"
        "</userKey>"
        f"{''.join(_escaped_leaf(key, value) for key, value in info.items())}"
        f"{_address('shippingAddress', shipping)}{_address('billingAddress', billing)}"
        "</userInfo>"
        f"{_escaped_leaf('password', password)}"
        f"{extended_attributes(attributes)}"
        f"</ns1:{root}>"
    ).encode()
