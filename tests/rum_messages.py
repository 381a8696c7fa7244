"""Digital River callback bodies in the Axis "encoded" style of DR's published samples."""

from __future__ import annotations

import base64
from xml.etree import ElementTree

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
    return ElementTree.fromstring(body)


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
