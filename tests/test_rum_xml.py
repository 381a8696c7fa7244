"""Tests for app.rum.xml: request parsing, hostile input and response rendering.

The request samples follow Digital River's published examples, written in the Apache Axis 1.x
"encoded" style that DR sends.
"""

# The samples contain passwords on purpose, and the standard library parser reads only the
# responses that app.rum.xml renders.
# ruff: noqa: S314

from __future__ import annotations

import socket
import tracemalloc
import xml.etree.ElementTree as stdlib_etree
from collections.abc import Iterator
from dataclasses import FrozenInstanceError

import pytest

from app.rum.xml import (
    COMMON_NAMESPACE,
    RUM_NAMESPACE,
    XSI_NAMESPACE,
    Address,
    CreateUserRequest,
    ExtendedAttribute,
    LoginRequest,
    ProfileRequest,
    RumRequest,
    SessionValidationRequest,
    UserInfo,
    UserKey,
    XMLRequestError,
    parse_document,
    parse_request,
    render_create_failure,
    render_create_success,
    render_error,
    render_login_failure,
    render_login_success,
    render_profile,
    render_session_failure,
    render_session_success,
)

MAX_DEPTH = 32
MAX_ELEMENTS = 2_000

LOGIN_ID = "demo@digitalriver.com"
PASSWORD = "123123"
ERID = "D05B4D68-F49D-11DA-8019-88F835DA4C6C"
SITE_ID = "headwtr"
COMPANY_ID = "headwtr"
CRM_SESSION = "F3CB68D6-1643-11DD-8402-E6326E64542C/8443"

XSD_NAMESPACE = "http://www.w3.org/2001/XMLSchema"
NAMESPACES = (
    f'xmlns:xsd="{XSD_NAMESPACE}" xmlns:xsi="{XSI_NAMESPACE}"'  # repeated on each Axis element
)
NIL = f"{{{XSI_NAMESPACE}}}nil"
XSI_TYPE = f"{{{XSI_NAMESPACE}}}type"


def parse(body: bytes | str) -> RumRequest:
    data = body.encode("utf-8") if isinstance(body, str) else body
    return parse_request(data, max_depth=MAX_DEPTH, max_elements=MAX_ELEMENTS)


def reject(body: bytes | str, code: str, **limits: int) -> XMLRequestError:
    """Parse the body, assert that it raises XMLRequestError with this code, and return it."""
    data = body.encode("utf-8") if isinstance(body, str) else body
    limits = {"max_depth": MAX_DEPTH, "max_elements": MAX_ELEMENTS} | limits
    with pytest.raises(XMLRequestError) as caught:
        parse_request(data, **limits)
    assert caught.value.code == code, caught.value.message
    return caught.value


def rum_document(root: str, children: str, prefix: str = "ns1") -> str:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<{prefix}:{root} '
        f'xmlns:{prefix}="{RUM_NAMESPACE}" {NAMESPACES}>{children}</{prefix}:{root}>'
    )


# DR's RemoteLogin request as Axis writes it: ns1 on the root, unqualified children, xsi:type on
# every leaf, namespace declarations repeated on each element and nil for unused key fields.
AXIS_LOGIN_REQUEST = f"""<?xml version="1.0" encoding="UTF-8"?>
<ns1:LoginRequest xmlns:ns1="{RUM_NAMESPACE}" {NAMESPACES}>
  <userKey xsi:type="ns2:UserKey" xmlns:ns2="{COMMON_NAMESPACE}" {NAMESPACES}>
    <userID xsi:type="xsd:string" xsi:nil="true" {NAMESPACES}/>
    <externalReferenceID xsi:type="xsd:string" xsi:nil="true" {NAMESPACES}/>
    <companyID xsi:type="xsd:string" xsi:nil="true" {NAMESPACES}/>
    <loginID xsi:type="xsd:string" {NAMESPACES}>{LOGIN_ID}</loginID>
    <siteID xsi:type="xsd:string" xsi:nil="true" {NAMESPACES}/>
  </userKey>
  <password xsi:type="xsd:string" {NAMESPACES}>{PASSWORD}</password>
  <extendedAttributes xsi:type="ns3:ExtendedAttributesInfoArray" xsi:nil="true"
      xmlns:ns3="{COMMON_NAMESPACE}" {NAMESPACES}/>
</ns1:LoginRequest>
"""

CRM_SESSION_ITEMS = f"""
  <extendedAttributes xsi:type="ns3:ExtendedAttributesInfoArray" xmlns:ns3="{COMMON_NAMESPACE}">
    <item xsi:type="ns3:ExtendedAttributesInfo">
      <name xsi:type="xsd:string">crmSession</name>
      <value xsi:type="xsd:string">{CRM_SESSION}</value>
      <valueDataType xsi:type="xsd:string">string</valueDataType>
    </item>
  </extendedAttributes>"""

AXIS_PROFILE_REQUEST = f"""<?xml version="1.0" encoding="UTF-8"?>
<ns1:GetUserProfileRequest xmlns:ns1="{RUM_NAMESPACE}" {NAMESPACES}>
  <userKey xsi:type="ns2:UserKey" xmlns:ns2="{COMMON_NAMESPACE}">
    <userID xsi:type="xsd:string" xsi:nil="true"/>
    <externalReferenceID xsi:type="xsd:string">{ERID}</externalReferenceID>
    <companyID xsi:type="xsd:string">{COMPANY_ID}</companyID>
    <loginID xsi:type="xsd:string" xsi:nil="true"/>
    <siteID xsi:type="xsd:string">{SITE_ID}</siteID>
  </userKey>
  <sessionToken xsi:type="xsd:string" xsi:nil="true"/>{CRM_SESSION_ITEMS}
</ns1:GetUserProfileRequest>
"""

ADDRESS_CHILDREN = """
      <name1>Émile Zola</name1>
      <name2 xsi:nil="true"/>
      <companyName>Headwater</companyName>
      <line1>10 Rue de Médicis</line1>
      <line2>Bât. B</line2>
      <line3/>
      <city>Paris</city>
      <state>IDF</state>
      <postalCode>75006</postalCode>
      <country>FR</country>
      <countryName>France</countryName>
      <email>emile@example.com</email>
      <phoneNumber>+33 1 23 45 67 89</phoneNumber>"""

EMILE_ADDRESS = Address(
    name1="Émile Zola",
    name2=None,
    company_name="Headwater",
    line1="10 Rue de Médicis",
    line2="Bât. B",
    line3=None,
    city="Paris",
    state="IDF",
    postal_code="75006",
    country="FR",
    country_name="France",
    email="emile@example.com",
    phone_number="+33 1 23 45 67 89",
)

AXIS_CREATE_REQUEST = f"""<?xml version="1.0" encoding="UTF-8"?>
<ns1:CreateUserProfileRequest xmlns:ns1="{RUM_NAMESPACE}" {NAMESPACES}>
  <userInfo xsi:type="ns2:UserInfo" xmlns:ns2="{COMMON_NAMESPACE}">
    <userKey xsi:type="ns2:UserKey">
      <userID xsi:nil="true"/>
      <externalReferenceID xsi:nil="true"/>
      <companyID xsi:nil="true"/>
      <loginID xsi:type="xsd:string">emile@example.com</loginID>
      <siteID xsi:type="xsd:string">{SITE_ID}</siteID>
    </userKey>
    <firstName xsi:type="xsd:string">Émile</firstName>
    <lastName xsi:type="xsd:string">Zola</lastName>
    <email xsi:type="xsd:string">emile@example.com</email>
    <locale xsi:type="xsd:string">fr_FR</locale>
    <homePhone xsi:type="xsd:string">+33 1 23 45 67 89</homePhone>
    <shippingAddress xsi:type="ns2:AddressInfo">{ADDRESS_CHILDREN}
    </shippingAddress>
    <billingAddress xsi:type="ns2:AddressInfo">{ADDRESS_CHILDREN}
    </billingAddress>
  </userInfo>
  <password xsi:type="xsd:string">J'accuse!</password>{CRM_SESSION_ITEMS}
</ns1:CreateUserProfileRequest>
"""


# ---------------------------------------------------------------------------------------------
# Login requests
# ---------------------------------------------------------------------------------------------


def test_login_axis_encoded_sample() -> None:
    request = parse(AXIS_LOGIN_REQUEST)

    assert isinstance(request, LoginRequest)
    assert request.login_id == LOGIN_ID
    assert request.password == PASSWORD
    assert request.site_id is None
    assert request.extended_attributes == ()


def test_login_sample_with_extended_attribute() -> None:
    body = rum_document(
        "LoginRequest",
        f"<userKey><loginID>{LOGIN_ID}</loginID><siteID>{SITE_ID}</siteID></userKey>"
        f"<password>{PASSWORD}</password>{CRM_SESSION_ITEMS}",
    )

    request = parse(body)

    assert isinstance(request, LoginRequest)
    assert request.site_id == SITE_ID
    assert request.extended_attributes == (
        ExtendedAttribute(name="crmSession", value=CRM_SESSION, value_data_type="string"),
    )


LOGIN_CHILDREN = f"<userKey><loginID>{LOGIN_ID}</loginID></userKey><password>{PASSWORD}</password>"


@pytest.mark.parametrize(
    "body",
    [
        rum_document("LoginRequest", LOGIN_CHILDREN, prefix="ns2"),
        rum_document("LoginRequest", LOGIN_CHILDREN, prefix="common"),
        # Default namespace: the children inherit the RemoteUserManagement namespace.
        f'<LoginRequest xmlns="{RUM_NAMESPACE}">{LOGIN_CHILDREN}</LoginRequest>',
        # Children qualified in the Common namespace, with a prefix and as a default namespace.
        f'<r:LoginRequest xmlns:r="{RUM_NAMESPACE}" xmlns:c="{COMMON_NAMESPACE}">'
        f"<c:userKey><c:loginID>{LOGIN_ID}</c:loginID></c:userKey>"
        f"<c:password>{PASSWORD}</c:password></r:LoginRequest>",
        f'<r:LoginRequest xmlns:r="{RUM_NAMESPACE}">'
        f'<userKey xmlns="{COMMON_NAMESPACE}"><loginID>{LOGIN_ID}</loginID></userKey>'
        f"<password>{PASSWORD}</password></r:LoginRequest>",
        # Reversed order, unknown elements and an unknown namespace.
        rum_document(
            "LoginRequest",
            f'<x:futureFlag xmlns:x="urn:example:future">true</x:futureFlag>'
            f"<password>{PASSWORD}</password><unknown><loginID>wrong</loginID></unknown>"
            f"<userKey><siteID xsi:nil='true'/><extra/><loginID>{LOGIN_ID}</loginID></userKey>",
        ),
        # A prefix bound to the RemoteUserManagement namespace twice over.
        f'<a:LoginRequest xmlns:a="{RUM_NAMESPACE}"><b:userKey xmlns:b="{RUM_NAMESPACE}">'
        f"<b:loginID>{LOGIN_ID}</b:loginID></b:userKey><a:password>{PASSWORD}</a:password>"
        "</a:LoginRequest>",
    ],
    ids=[
        "prefix-ns2",
        "prefix-common",
        "default-namespace",
        "children-in-common-prefixed",
        "children-in-common-default",
        "reversed-with-unknown-elements",
        "children-in-rum-namespace",
    ],
)
def test_login_namespace_variants(body: str) -> None:
    request = parse(body)

    assert isinstance(request, LoginRequest)
    assert request.login_id == LOGIN_ID
    assert request.password == PASSWORD


def test_login_password_kept_exactly() -> None:
    password = "  pass word\twith tabs &amp; &lt;ünïcödé&gt; 密码 "
    body = rum_document(
        "LoginRequest",
        f"<userKey><loginID>{LOGIN_ID}</loginID></userKey><password>{password}</password>",
    )

    request = parse(body)

    assert isinstance(request, LoginRequest)
    assert request.password == "  pass word\twith tabs & <ünïcödé> 密码 "


def test_login_password_cdata_and_references() -> None:
    body = rum_document(
        "LoginRequest",
        f"<userKey><loginID>{LOGIN_ID}</loginID></userKey>"
        "<password><![CDATA[<&>]]>&#13;&#x1F511;</password>",
    )

    request = parse(body)

    assert isinstance(request, LoginRequest)
    assert request.password == "<&>\r\U0001f511"


def test_login_non_ascii_login_id() -> None:
    body = rum_document(
        "LoginRequest",
        "<userKey><loginID>Émile.Zoła@exämple.com</loginID></userKey><password>é</password>",
    )

    request = parse(body)

    assert isinstance(request, LoginRequest)
    assert request.login_id == "Émile.Zoła@exämple.com"
    assert request.password == "é"


def test_login_empty_password_is_blank() -> None:
    body = rum_document(
        "LoginRequest", f"<userKey><loginID>{LOGIN_ID}</loginID></userKey><password/>"
    )

    request = parse(body)

    assert isinstance(request, LoginRequest)
    assert request.password == ""


@pytest.mark.parametrize("login_id", ["", "   ", "\n\t "])
def test_login_blank_login_id_is_empty_string(login_id: str) -> None:
    body = rum_document(
        "LoginRequest",
        f"<userKey><loginID>{login_id}</loginID></userKey><password>{PASSWORD}</password>",
    )

    request = parse(body)

    assert isinstance(request, LoginRequest)
    assert request.login_id == ""


def test_login_identifier_not_stripped() -> None:
    body = rum_document(
        "LoginRequest",
        f"<userKey><loginID> {LOGIN_ID} </loginID></userKey><password>{PASSWORD}</password>",
    )

    request = parse(body)

    assert isinstance(request, LoginRequest)
    assert request.login_id == f" {LOGIN_ID} "


@pytest.mark.parametrize("nil_value", ["true", "1", " true "])
def test_login_nil_site_id_values(nil_value: str) -> None:
    body = rum_document(
        "LoginRequest",
        f'<userKey><loginID>{LOGIN_ID}</loginID><siteID xsi:nil="{nil_value}">{SITE_ID}</siteID>'
        f"</userKey><password>{PASSWORD}</password>",
    )

    request = parse(body)

    assert isinstance(request, LoginRequest)
    assert request.site_id is None


def test_login_nil_false_keeps_value() -> None:
    body = rum_document(
        "LoginRequest",
        f'<userKey><loginID>{LOGIN_ID}</loginID><siteID xsi:nil="false">{SITE_ID}</siteID>'
        f"</userKey><password>{PASSWORD}</password>",
    )

    request = parse(body)

    assert isinstance(request, LoginRequest)
    assert request.site_id == SITE_ID


def test_login_nil_in_other_namespace_ignored() -> None:
    body = rum_document(
        "LoginRequest",
        f'<userKey><loginID>{LOGIN_ID}</loginID><siteID xmlns:o="urn:other" o:nil="true">'
        f"{SITE_ID}</siteID></userKey><password>{PASSWORD}</password>",
    )

    request = parse(body)

    assert isinstance(request, LoginRequest)
    assert request.site_id == SITE_ID


def test_login_first_duplicate_child_wins() -> None:
    body = rum_document(
        "LoginRequest",
        f"<userKey><loginID>{LOGIN_ID}</loginID><loginID>second</loginID></userKey>"
        f"<password>{PASSWORD}</password><password>second</password>",
    )

    request = parse(body)

    assert isinstance(request, LoginRequest)
    assert request.login_id == LOGIN_ID
    assert request.password == PASSWORD


@pytest.mark.parametrize(
    ("children", "path"),
    [
        (f"<password>{PASSWORD}</password>", "userKey/loginID"),
        (f'<userKey xsi:nil="true"/><password>{PASSWORD}</password>', "userKey/loginID"),
        (f"<userKey/><password>{PASSWORD}</password>", "userKey/loginID"),
        (
            f'<userKey><loginID xsi:nil="true"/></userKey><password>{PASSWORD}</password>',
            "userKey/loginID",
        ),
        (f"<userKey><loginID>{LOGIN_ID}</loginID></userKey>", "password"),
        (
            f'<userKey><loginID>{LOGIN_ID}</loginID></userKey><password xsi:nil="true"/>',
            "password",
        ),
        # A loginID outside userKey does not count.
        (f"<loginID>{LOGIN_ID}</loginID><password>{PASSWORD}</password>", "userKey/loginID"),
    ],
    ids=[
        "no-user-key",
        "nil-user-key",
        "empty-user-key",
        "nil-login-id",
        "no-password",
        "nil-password",
        "login-id-at-root",
    ],
)
def test_login_missing_field(children: str, path: str) -> None:
    error = reject(rum_document("LoginRequest", children), "missing_field")

    assert path in error.message
    assert "LoginRequest" in error.message


def test_request_dataclasses_frozen() -> None:
    request = parse(AXIS_LOGIN_REQUEST)
    assert isinstance(request, LoginRequest)

    with pytest.raises(FrozenInstanceError):
        request.password = "changed"  # type: ignore[misc]
    assert not hasattr(request, "__dict__")


# ---------------------------------------------------------------------------------------------
# Profile requests
# ---------------------------------------------------------------------------------------------


def test_profile_axis_sample() -> None:
    request = parse(AXIS_PROFILE_REQUEST)

    assert isinstance(request, ProfileRequest)
    assert request.external_reference_id == ERID
    assert request.site_id == SITE_ID
    assert request.company_id == COMPANY_ID
    assert request.login_id is None
    assert request.session_token is None
    assert request.extended_attributes == (
        ExtendedAttribute(name="crmSession", value=CRM_SESSION, value_data_type="string"),
    )


def test_profile_get_user_request_synonym() -> None:
    body = AXIS_PROFILE_REQUEST.replace("GetUserProfileRequest", "GetUserRequest")

    request = parse(body)

    assert isinstance(request, ProfileRequest)
    assert request.external_reference_id == ERID
    assert request.site_id == SITE_ID


def test_profile_session_token_read() -> None:
    body = AXIS_PROFILE_REQUEST.replace(
        '<sessionToken xsi:type="xsd:string" xsi:nil="true"/>',
        "<sessionToken>token-1</sessionToken>",
    )

    request = parse(body)

    assert isinstance(request, ProfileRequest)
    assert request.session_token == "token-1"


@pytest.mark.parametrize("root", ["GetUserProfileRequest", "GetUserRequest"])
def test_profile_missing_erid(root: str) -> None:
    body = rum_document(
        root,
        f'<userKey><externalReferenceID xsi:nil="true"/><siteID>{SITE_ID}</siteID></userKey>',
    )

    error = reject(body, "missing_field")

    assert "userKey/externalReferenceID" in error.message
    assert root in error.message


def test_profile_login_id_without_erid() -> None:
    body = rum_document(
        "GetUserProfileRequest", f"<userKey><loginID>{LOGIN_ID}</loginID></userKey>"
    )

    reject(body, "missing_field")


# ---------------------------------------------------------------------------------------------
# Session validation requests
# ---------------------------------------------------------------------------------------------


def test_session_token_with_user_key_hint() -> None:
    body = rum_document(
        "ValidateSessionRequest",
        f'<userKey><userID xsi:nil="true"/><loginID>{LOGIN_ID}</loginID>'
        f"<siteID>{SITE_ID}</siteID></userKey>"
        "<sessionToken>opaque-token-Ω</sessionToken>",
    )

    request = parse(body)

    assert isinstance(request, SessionValidationRequest)
    assert request.session_token == "opaque-token-Ω"
    assert request.user_key_hint == UserKey(login_id=LOGIN_ID, site_id=SITE_ID)
    assert request.site_id == SITE_ID
    assert request.extended_attributes == ()


def test_session_token_in_extended_attributes() -> None:
    body = rum_document(
        "ValidateSessionRequest",
        '<userKey xsi:nil="true"/><sessionToken xsi:nil="true"/>' + CRM_SESSION_ITEMS,
    )

    request = parse(body)

    assert isinstance(request, SessionValidationRequest)
    assert request.session_token is None
    assert request.user_key_hint is None
    assert request.site_id is None
    assert request.extended_attributes[0].name == "crmSession"
    assert request.extended_attributes[0].value == CRM_SESSION


def test_session_nil_user_key_no_hint() -> None:
    body = rum_document(
        "ValidateSessionRequest",
        '<userKey><userID xsi:nil="true"/><loginID xsi:nil="true"/></userKey>'
        "<sessionToken>t</sessionToken>",
    )

    request = parse(body)

    assert isinstance(request, SessionValidationRequest)
    assert request.user_key_hint is None


@pytest.mark.parametrize(
    "children",
    [
        "",
        '<sessionToken xsi:nil="true"/><extendedAttributes xsi:nil="true"/>',
        "<sessionToken/><extendedAttributes/>",
        f"<userKey><loginID>{LOGIN_ID}</loginID></userKey>",
        # An item without a name carries no token.
        "<extendedAttributes><item><name/><value>t</value></item></extendedAttributes>",
    ],
    ids=["empty", "nil", "empty-elements", "user-key-only", "nameless-item"],
)
def test_session_missing_token(children: str) -> None:
    error = reject(rum_document("ValidateSessionRequest", children), "missing_field")

    assert "sessionToken" in error.message


# ---------------------------------------------------------------------------------------------
# Create-user requests
# ---------------------------------------------------------------------------------------------


def test_create_user_profile_request_full() -> None:
    request = parse(AXIS_CREATE_REQUEST)

    assert isinstance(request, CreateUserRequest)
    assert request.login_id == "emile@example.com"
    assert request.password == "J'accuse!"
    assert request.first_name == "Émile"
    assert request.last_name == "Zola"
    assert request.email == "emile@example.com"
    assert request.locale == "fr_FR"
    assert request.home_phone == "+33 1 23 45 67 89"
    assert request.shipping_address == EMILE_ADDRESS
    assert request.billing_address == EMILE_ADDRESS
    assert request.site_id == SITE_ID
    assert request.extended_attributes[0].value == CRM_SESSION


def test_create_synonym_inner_password() -> None:
    body = rum_document(
        "CreateUserRequest",
        "<userInfo><userKey><loginID>new@example.com</loginID></userKey>"
        f"<password>inner</password><address>{ADDRESS_CHILDREN}</address>"
        '<billingAddress xsi:nil="true"/></userInfo>',
    )

    request = parse(body)

    assert isinstance(request, CreateUserRequest)
    assert request.login_id == "new@example.com"
    assert request.password == "inner"
    assert request.shipping_address == EMILE_ADDRESS
    assert request.billing_address is None
    assert request.first_name is None
    assert request.site_id is None
    assert request.extended_attributes == ()


def test_create_root_password_preferred() -> None:
    body = rum_document(
        "CreateUserProfileRequest",
        "<userInfo><userKey><loginID>a</loginID></userKey><password>inner</password></userInfo>"
        "<password>outer</password>",
    )

    request = parse(body)

    assert isinstance(request, CreateUserRequest)
    assert request.password == "outer"


def test_create_nil_root_password_uses_inner() -> None:
    body = rum_document(
        "CreateUserProfileRequest",
        "<userInfo><userKey><loginID>a</loginID></userKey><password>inner</password></userInfo>"
        '<password xsi:nil="true"/>',
    )

    request = parse(body)

    assert isinstance(request, CreateUserRequest)
    assert request.password == "inner"


def test_create_shipping_address_preferred() -> None:
    body = rum_document(
        "CreateUserProfileRequest",
        "<userInfo><userKey><loginID>a</loginID></userKey>"
        "<address><city>Lyon</city></address><shippingAddress><city>Paris</city></shippingAddress>"
        "</userInfo><password>p</password>",
    )

    request = parse(body)

    assert isinstance(request, CreateUserRequest)
    assert request.shipping_address == Address(city="Paris")


def test_create_empty_optional_strings_are_none() -> None:
    body = rum_document(
        "CreateUserProfileRequest",
        "<userInfo><userKey><loginID>a</loginID><siteID/></userKey><firstName/>"
        '<lastName></lastName><email xsi:nil="true"/><shippingAddress/></userInfo>'
        "<password>p</password>",
    )

    request = parse(body)

    assert isinstance(request, CreateUserRequest)
    assert request.first_name is None
    assert request.last_name is None
    assert request.email is None
    assert request.site_id is None
    assert request.shipping_address == Address()


@pytest.mark.parametrize(
    ("children", "path"),
    [
        ("<password>p</password>", "userInfo/userKey/loginID"),
        (
            "<userInfo><firstName>a</firstName></userInfo><password>p</password>",
            "userInfo/userKey/loginID",
        ),
        # loginID at the root userKey is not where DR puts it for create.
        (
            "<userKey><loginID>a</loginID></userKey><password>p</password>",
            "userInfo/userKey/loginID",
        ),
        ("<userInfo><userKey><loginID>a</loginID></userKey></userInfo>", "password"),
        (
            '<userInfo><userKey><loginID>a</loginID></userKey><password xsi:nil="true"/>'
            '</userInfo><password xsi:nil="true"/>',
            "userInfo/password",
        ),
    ],
    ids=["no-user-info", "no-user-key", "root-user-key", "no-password", "nil-passwords"],
)
def test_create_missing_field(children: str, path: str) -> None:
    error = reject(rum_document("CreateUserProfileRequest", children), "missing_field")

    assert path in error.message


# ---------------------------------------------------------------------------------------------
# Extended attributes and root dispatch
# ---------------------------------------------------------------------------------------------


def test_extended_attributes_skip_nameless_items() -> None:
    items = (
        "<extendedAttributes>"
        "<item><name>first</name><value>1</value><valueDataType>string</valueDataType></item>"
        '<item><name xsi:nil="true"/><value>skipped</value></item>'
        "<item><name></name><value>skipped</value></item>"
        "<item><name>  </name><value>skipped</value></item>"
        "<item><value>skipped</value></item>"
        '<item xsi:nil="true"/>'
        "<notAnItem><name>skipped</name></notAnItem>"
        "<item><valueDataType>boolean</valueDataType><name>hasAcceptedTermsNConditions</name>"
        "<value>true</value></item>"
        '<item><name>nilValue</name><value xsi:nil="true"/></item>'
        "<item><name>emptyValue</name><value/></item>"
        "<item><name>spaced</name><value> padded </value></item>"
        "</extendedAttributes>"
    )
    body = rum_document(
        "LoginRequest",
        f"<userKey><loginID>{LOGIN_ID}</loginID></userKey><password>p</password>{items}",
    )

    request = parse(body)

    assert isinstance(request, LoginRequest)
    assert request.extended_attributes == (
        ExtendedAttribute("first", "1", "string"),
        ExtendedAttribute("hasAcceptedTermsNConditions", "true", "boolean"),
        ExtendedAttribute("nilValue", None, None),
        ExtendedAttribute("emptyValue", None, None),
        ExtendedAttribute("spaced", " padded ", None),
    )


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (rum_document("DeleteUserRequest", ""), f"{{{RUM_NAMESPACE}}}DeleteUserRequest"),
        (
            f'<c:LoginRequest xmlns:c="{COMMON_NAMESPACE}"/>',
            f"{{{COMMON_NAMESPACE}}}LoginRequest",
        ),
        ("<LoginRequest/>", "LoginRequest"),
        (
            '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"/>',
            "{http://schemas.xmlsoap.org/soap/envelope/}Envelope",
        ),
        (rum_document("LoginResponse", ""), f"{{{RUM_NAMESPACE}}}LoginResponse"),
    ],
    ids=["unknown-name", "wrong-namespace", "no-namespace", "soap-envelope", "response-root"],
)
def test_unknown_root(body: str, named: str) -> None:
    error = reject(body, "unknown_root")

    assert named in error.message
    assert "LoginRequest" in error.message


# ---------------------------------------------------------------------------------------------
# Encodings
# ---------------------------------------------------------------------------------------------

NON_ASCII_LOGIN = rum_document(
    "LoginRequest", "<userKey><loginID>Émile</loginID></userKey><password>mötley</password>"
)


def login_id_of(body: bytes) -> str:
    request = parse(body)
    assert isinstance(request, LoginRequest)
    return request.login_id


def test_encoding_utf8_with_bom() -> None:
    assert login_id_of(b"\xef\xbb\xbf" + NON_ASCII_LOGIN.encode("utf-8")) == "Émile"


def test_encoding_utf8_without_declaration() -> None:
    body = NON_ASCII_LOGIN.split("\n", 1)[1].encode("utf-8")

    assert login_id_of(body) == "Émile"


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be"])
def test_encoding_utf16_with_bom(codec: str) -> None:
    text = NON_ASCII_LOGIN.replace('encoding="UTF-8"', 'encoding="UTF-16"')
    bom = {"utf-16": b"", "utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff"}[codec]

    assert login_id_of(bom + text.encode(codec)) == "Émile"


def test_encoding_utf16_bom_without_declaration() -> None:
    text = NON_ASCII_LOGIN.split("\n", 1)[1]

    assert login_id_of(text.encode("utf-16")) == "Émile"


@pytest.mark.parametrize(
    ("codec", "declared"),
    [("utf-16-le", "UTF-16LE"), ("utf-16-be", "UTF-16BE"), ("utf-16-le", "UTF-16")],
)
def test_encoding_utf16_without_bom_declared(codec: str, declared: str) -> None:
    text = NON_ASCII_LOGIN.replace('encoding="UTF-8"', f'encoding="{declared}"')

    assert login_id_of(text.encode(codec)) == "Émile"


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_encoding_utf16_without_bom_rejected(codec: str) -> None:
    text = NON_ASCII_LOGIN.split("\n", 1)[1]

    error = reject(text.encode(codec), "invalid_encoding")

    assert "byte order mark" in error.message
    assert "UTF-16" in error.message


def test_encoding_latin1_declared() -> None:
    text = NON_ASCII_LOGIN.replace('encoding="UTF-8"', 'encoding="ISO-8859-1"')

    assert login_id_of(text.encode("latin-1")) == "Émile"


def test_encoding_ascii_declared() -> None:
    text = AXIS_LOGIN_REQUEST.replace('encoding="UTF-8"', 'encoding="US-ASCII"')

    assert login_id_of(text.encode("ascii")) == LOGIN_ID


def test_encoding_invalid_utf8() -> None:
    body = rum_document(
        "LoginRequest", "<userKey><loginID>X</loginID></userKey><password>Y</password>"
    ).encode("utf-8")
    body = body.replace(b">X<", b">\xc3\x28<")

    bad_offset = body.index(b"\xc3")

    error = reject(body, "invalid_encoding")

    assert "UTF-8" in error.message
    assert f"offset {bad_offset}" in error.message


@pytest.mark.parametrize(
    "bad_bytes",
    [b"\xe9", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80", b"\xef\xbf"],
    ids=["latin1-e-acute", "encoded-surrogate", "overlong-slash", "five-byte", "truncated"],
)
def test_encoding_invalid_utf8_sequences(bad_bytes: bytes) -> None:
    body = b"<a>" + bad_bytes + b"</a>"

    reject(body, "invalid_encoding")


def test_encoding_invalid_utf16() -> None:
    lone_surrogate = b"\x00\xd8"
    body = b"\xff\xfe" + "<a>".encode("utf-16-le") + lone_surrogate + "</a>".encode("utf-16-le")

    error = reject(body, "invalid_encoding")

    assert "UTF-16LE" in error.message


@pytest.mark.parametrize(
    ("body", "declared"),
    [
        (NON_ASCII_LOGIN.replace("UTF-8", "UTF-16").encode("utf-8"), "UTF-16"),
        (NON_ASCII_LOGIN.replace("UTF-8", "ISO-8859-1").encode("utf-8"), "ISO-8859-1"),
        (NON_ASCII_LOGIN.replace("UTF-8", "US-ASCII").encode("utf-8"), "US-ASCII"),
        (b"\xef\xbb\xbf" + NON_ASCII_LOGIN.replace("UTF-8", "UTF-16").encode("utf-8"), "UTF-16"),
        (NON_ASCII_LOGIN.encode("utf-16"), "UTF-8"),
        (NON_ASCII_LOGIN.encode("utf-16-le"), "UTF-8"),
        (NON_ASCII_LOGIN.replace("UTF-8", "UTF-16BE").encode("utf-16-le"), "UTF-16BE"),
        (
            b"\xfe\xff" + NON_ASCII_LOGIN.replace("UTF-8", "UTF-16LE").encode("utf-16-be"),
            "UTF-16LE",
        ),
    ],
    ids=[
        "utf16-declared-utf8-bytes",
        "latin1-declared-utf8-bytes",
        "ascii-declared-non-ascii-bytes",
        "utf8-bom-utf16-declared",
        "utf16-bom-utf8-declared",
        "utf16le-no-bom-utf8-declared",
        "utf16le-no-bom-utf16be-declared",
        "utf16be-bom-utf16le-declared",
    ],
)
def test_encoding_mismatch(body: bytes, declared: str) -> None:
    error = reject(body, "encoding_mismatch")

    assert declared in error.message


@pytest.mark.parametrize(
    "body",
    [
        b'<?xml version="1.0" encoding="windows-1252"?><a/>',
        b'<?xml version="1.0" encoding="klingon"?><a/>',
        b'<?xml version="1.0" encoding="UTF-32"?><a/>',
        "<a/>".encode("utf-32"),
    ],
    ids=["windows-1252", "unknown-name", "utf32-declared", "utf32-bom"],
)
def test_encoding_unsupported(body: bytes) -> None:
    error = reject(body, "unsupported_encoding")

    assert "UTF-8" in error.message


# ---------------------------------------------------------------------------------------------
# Malformed documents
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"", "no element found"),
        (b"<a><b></a>", "mismatched tag"),
        (b"<a/><b/>", "junk after document element"),
        (b"<a>&unknown;</a>", "undefined entity"),
        (b"<a", "unclosed token"),
        (b"plain text", "syntax error"),
        (b'<a xmlns:p="urn:x"><q:b/></a>', "unbound prefix"),
        (b'<a x="1" x="2"/>', "duplicate attribute"),
    ],
    ids=[
        "empty",
        "mismatched-tag",
        "two-roots",
        "undefined-entity",
        "truncated",
        "not-xml",
        "unbound-prefix",
        "duplicate-attribute",
    ],
)
def test_malformed_documents(body: bytes, detail: str) -> None:
    error = reject(body, "malformed")

    assert detail in error.message
    assert "line 1" in error.message


def test_malformed_reports_line_and_column() -> None:
    error = reject(b"<a>\n  <b>\n</a>", "malformed")

    assert "line 3, column 3" in error.message


@pytest.mark.parametrize(
    "body",
    [b"<a>\x00</a>", b"<a/>\x00", b"\x00<a/>\x00", b'<a x="\x00"/>'],
    ids=["in-text", "after-root", "leading-and-trailing", "in-attribute"],
)
def test_nul_byte_rejected(body: bytes) -> None:
    error = reject(body, "malformed")

    assert "NUL" in error.message


def test_nul_character_in_utf16_rejected() -> None:
    body = "<a>\x00</a>".encode("utf-16")

    error = reject(body, "malformed")

    assert "NUL" in error.message


@pytest.mark.parametrize("leading", [b" ", b"\n", b"\r\n\t ", b"<!-- c -->"])
def test_late_xml_declaration_rejected(leading: bytes) -> None:
    body = (
        leading
        + b'<?xml version="1.0" encoding="UTF-8"?>'
        + AXIS_LOGIN_REQUEST.split("\n", 1)[1].encode()
    )

    error = reject(body, "malformed")

    assert "declaration" in error.message


def test_leading_whitespace_accepted() -> None:
    body = b"\n  " + AXIS_LOGIN_REQUEST.split("\n", 1)[1].encode()

    assert login_id_of(body) == LOGIN_ID


def test_comments_and_instructions_ignored() -> None:
    body = AXIS_LOGIN_REQUEST.replace(
        "<password", "<!-- comment --><?app instruction?><password"
    ).replace(f"{LOGIN_ID}</loginID>", f"{LOGIN_ID}<!-- inner --></loginID>")

    assert login_id_of(body.encode()) == LOGIN_ID


# ---------------------------------------------------------------------------------------------
# Attack corpus
# ---------------------------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<lolz>&lol9;</lolz>
"""


def quadratic_blowup() -> bytes:
    entity = "A" * 100_000
    references = "&a;" * 20_000
    return f'<!DOCTYPE r [<!ENTITY a "{entity}">]><r>{references}</r>'.encode()


def nested_document(depth: int) -> bytes:
    return b"<a>" * depth + b"</a>" * depth


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    "body",
    [
        BILLION_LAUGHS,
        quadratic_blowup(),
        b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>',
        b'<!DOCTYPE r SYSTEM "file:///etc/passwd"><r/>',
        b'<!DOCTYPE r [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><r/>',
        b"<!DOCTYPE r [<!ENTITY % a \"<!ENTITY b 'x'>\"> %a;]><r>&b;</r>",
        b'<!DOCTYPE r PUBLIC "-//X//DTD X//EN" "file:///etc/passwd"><r/>',
        b'<!DOCTYPE r [<!ENTITY u SYSTEM "file:///dev/zero" NDATA n>]><r/>',
        b"<!DOCTYPE r [<!ELEMENT r ANY>]>",
        b"<!DOCTYPE r>",
        b'<?xml version="1.0"?>\n<!DOCTYPE r [<!ATTLIST r a CDATA "default">]><r/>',
        rum_document("LoginRequest", "").replace("<ns1:", "<!DOCTYPE x><ns1:", 1).encode(),
    ],
    ids=[
        "billion-laughs",
        "quadratic-blowup",
        "external-entity-file",
        "external-dtd-file",
        "parameter-entity-external",
        "parameter-entity-internal",
        "public-dtd",
        "unparsed-entity",
        "dtd-only",
        "bare-doctype",
        "attribute-defaults",
        "doctype-before-rum-root",
    ],
)
def test_attack_dtd_rejected(body: bytes) -> None:
    error = reject(body, "dtd_forbidden")

    assert "DOCTYPE" in error.message
    assert "root:" not in error.message
    assert "lol" not in error.message


@pytest.fixture
def listening_socket() -> Iterator[socket.socket]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        yield server
    finally:
        server.close()


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    "template",
    [
        '<!DOCTYPE r [<!ENTITY x SYSTEM "http://127.0.0.1:{port}/secret">]><r>&x;</r>',
        '<!DOCTYPE r SYSTEM "http://127.0.0.1:{port}/schema.dtd"><r/>',
        '<!DOCTYPE r [<!ENTITY % p SYSTEM "http://127.0.0.1:{port}/p.dtd"> %p;]><r/>',
    ],
    ids=["general-entity", "external-dtd", "parameter-entity"],
)
def test_attack_network_entity_not_fetched(listening_socket: socket.socket, template: str) -> None:
    port = listening_socket.getsockname()[1]

    reject(template.format(port=port), "dtd_forbidden")

    listening_socket.setblocking(False)
    with pytest.raises(BlockingIOError):
        listening_socket.accept()


@pytest.mark.timeout(5)
def test_attack_xinclude_not_processed(listening_socket: socket.socket) -> None:
    port = listening_socket.getsockname()[1]
    body = rum_document(
        "LoginRequest",
        f"<userKey><loginID>{LOGIN_ID}</loginID></userKey><password>p</password>"
        f'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="http://127.0.0.1:{port}/x"/>'
        '<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="file:///etc/passwd"/>',
    )

    assert login_id_of(body.encode()) == LOGIN_ID
    listening_socket.setblocking(False)
    with pytest.raises(BlockingIOError):
        listening_socket.accept()


@pytest.mark.timeout(5)
def test_attack_deep_nesting_rejected() -> None:
    error = reject(nested_document(10_000), "too_deep")

    assert str(MAX_DEPTH) in error.message
    assert "line 1" in error.message


@pytest.mark.timeout(5)
def test_attack_deep_nesting_within_rum_root() -> None:
    body = rum_document("LoginRequest", "<userKey>" * 100_000 + "</userKey>" * 100_000)

    reject(body, "too_deep")


@pytest.mark.timeout(5)
def test_attack_unclosed_deep_nesting_rejected() -> None:
    reject(b"<a>" * 200_000, "too_deep")


@pytest.mark.timeout(5)
def test_attack_too_many_elements() -> None:
    body = b"<a>" + b"<b/>" * 1_000_000 + b"</a>"

    error = reject(body, "too_many_elements")

    assert str(MAX_ELEMENTS) in error.message


@pytest.mark.timeout(5)
def test_attack_many_attributes_allowed() -> None:
    attributes = " ".join(f'a{i}="{i}"' for i in range(10_000))
    body = f"<r {attributes}/>".encode()

    root = parse_document(body, max_depth=MAX_DEPTH, max_elements=MAX_ELEMENTS)

    assert len(root.attrib) == 10_000


def test_limits_boundaries_accepted() -> None:
    deep = parse_document(nested_document(5), max_depth=5, max_elements=5)
    wide = parse_document(b"<a>" + b"<b/>" * 9 + b"</a>", max_depth=2, max_elements=10)

    assert deep.tag == "a"
    assert len(wide) == 9


def test_limits_one_over_rejected() -> None:
    with pytest.raises(XMLRequestError) as too_deep:
        parse_document(nested_document(6), max_depth=5, max_elements=100)
    with pytest.raises(XMLRequestError) as too_many:
        parse_document(b"<a>" + b"<b/>" * 10 + b"</a>", max_depth=2, max_elements=10)

    assert too_deep.value.code == "too_deep"
    assert too_many.value.code == "too_many_elements"


def test_limits_siblings_do_not_add_depth() -> None:
    body = b"<a>" + b"<b><c/></b>" * 50 + b"</a>"

    root = parse_document(body, max_depth=3, max_elements=101)

    assert len(root) == 50


@pytest.mark.parametrize(("max_depth", "max_elements"), [(0, 10), (10, 0), (-1, -1)])
def test_limits_invalid_values(max_depth: int, max_elements: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        parse_document(b"<a/>", max_depth=max_depth, max_elements=max_elements)


@pytest.mark.timeout(10)
def test_large_text_node_linear_memory() -> None:
    password = "p" * 1_000_000
    body = rum_document(
        "LoginRequest",
        f"<userKey><loginID>{LOGIN_ID}</loginID></userKey><password>{password}</password>",
    ).encode()

    tracemalloc.start()
    try:
        request = parse(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert isinstance(request, LoginRequest)
    assert request.password == password
    # About twice the body size was measured on Python 3.11 with expat 2.5, because the text
    # pieces and the joined string coexist briefly. Eight times leaves room for other versions.
    assert peak < 8 * len(body), f"peak {peak} bytes for a {len(body)}-byte body"


@pytest.mark.timeout(10)
def test_large_text_node_in_utf16() -> None:
    password = "é" * 500_000
    text = rum_document(
        "LoginRequest",
        f"<userKey><loginID>{LOGIN_ID}</loginID></userKey><password>{password}</password>",
    ).replace("UTF-8", "UTF-16")

    request = parse(text.encode("utf-16"))

    assert isinstance(request, LoginRequest)
    assert request.password == password


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------

RUM = f"{{{RUM_NAMESPACE}}}"
COMMON = f"{{{COMMON_NAMESPACE}}}"
USER_KEY_TAGS = [
    f"{COMMON}userID",
    f"{COMMON}externalReferenceID",
    f"{COMMON}companyID",
    f"{COMMON}loginID",
    f"{COMMON}siteID",
]
ADDRESS_TAGS = [
    f"{COMMON}{name}"
    for name in (
        "name1",
        "name2",
        "companyName",
        "line1",
        "line2",
        "line3",
        "city",
        "state",
        "postalCode",
        "country",
        "countryName",
        "email",
        "phoneNumber",
    )
]


def read_response(body: bytes, root_name: str) -> stdlib_etree.Element:
    """Parse a rendered response with the standard library and check its root element."""
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = stdlib_etree.fromstring(body)
    assert root.tag == f"{RUM}{root_name}"
    assert root.get(XSI_TYPE) == f"ns1:{root_name}"
    assert f'<ns1:{root_name} xmlns:ns1="{RUM_NAMESPACE}"'.encode() in body
    assert f'xmlns:xsd="{XSD_NAMESPACE}"'.encode() in body
    return root


def tags(element: stdlib_etree.Element) -> list[str]:
    return [child.tag for child in element]


def is_nil(element: stdlib_etree.Element) -> bool:
    return element.get(NIL) == "true" and element.text is None and len(element) == 0


def assert_user_key(
    user_key: stdlib_etree.Element,
    erid: str | None,
    company_id: str | None,
    login_id: str | None,
    site_id: str | None,
) -> None:
    assert user_key.tag == f"{COMMON}userKey"
    assert tags(user_key) == USER_KEY_TAGS
    user_id_element, erid_element, company_element, login_element, site_element = user_key
    assert is_nil(user_id_element)
    for element, expected in [
        (erid_element, erid),
        (company_element, company_id),
        (login_element, login_id),
        (site_element, site_id),
    ]:
        if expected is None:
            assert is_nil(element), element.tag
        else:
            assert element.text == expected, element.tag
            assert element.get(NIL) is None, element.tag


CRM_ATTRIBUTE = ExtendedAttribute("crmSession", CRM_SESSION, "string")


def assert_crm_attributes(element: stdlib_etree.Element) -> None:
    assert element.tag == f"{COMMON}extendedAttributes"
    assert tags(element) == [f"{COMMON}item"]
    item = element[0]
    assert tags(item) == [f"{COMMON}name", f"{COMMON}value", f"{COMMON}valueDataType"]
    assert item[0].text == "crmSession"
    assert item[1].text == CRM_SESSION
    assert item[2].text == "string"


STATUS_SUCCESS_RENDERERS = [
    (render_login_success, "LoginResponse"),
    (render_session_success, "ValidateSessionResponse"),
    (render_create_success, "CreateUserProfileResponse"),
]
STATUS_FAILURE_RENDERERS = [
    (render_login_failure, "LoginResponse"),
    (render_session_failure, "ValidateSessionResponse"),
    (render_create_failure, "CreateUserProfileResponse"),
]


@pytest.mark.parametrize(("render", "root_name"), STATUS_SUCCESS_RENDERERS)
def test_render_status_success(render: object, root_name: str) -> None:
    body = render(LOGIN_ID, ERID, SITE_ID, [CRM_ATTRIBUTE])  # type: ignore[operator]

    root = read_response(body, root_name)

    assert tags(root) == ["successful", f"{COMMON}userKey", f"{COMMON}extendedAttributes"]
    assert root[0].text == "true"
    assert_user_key(root[1], ERID, None, LOGIN_ID, SITE_ID)
    assert_crm_attributes(root[2])


@pytest.mark.parametrize(("render", "root_name"), STATUS_SUCCESS_RENDERERS)
def test_render_status_success_minimal(render: object, root_name: str) -> None:
    body = render(LOGIN_ID, ERID, None)  # type: ignore[operator]

    root = read_response(body, root_name)

    assert tags(root) == ["successful", f"{COMMON}userKey"]
    assert_user_key(root[1], ERID, None, LOGIN_ID, None)


@pytest.mark.parametrize(("render", "root_name"), STATUS_FAILURE_RENDERERS)
def test_render_status_failure(render: object, root_name: str) -> None:
    body = render("5", "Invalid login")  # type: ignore[operator]

    root = read_response(body, root_name)

    assert tags(root) == ["successful", "errorCode", "errorMessage"]
    assert root[0].text == "false"
    assert root[1].text == "5"
    assert root[2].text == "Invalid login"


def test_render_login_success_exact_bytes() -> None:
    body = render_login_success(LOGIN_ID, ERID, SITE_ID)

    assert (
        body
        == (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f'<ns1:LoginResponse xmlns:ns1="{RUM_NAMESPACE}" xmlns:ns2="{COMMON_NAMESPACE}" '
            f'xmlns:xsi="{XSI_NAMESPACE}" xmlns:xsd="{XSD_NAMESPACE}" xsi:type="ns1:LoginResponse">'
            "<successful>true</successful><ns2:userKey>"
            '<ns2:userID xsi:nil="true"/>'
            f"<ns2:externalReferenceID>{ERID}</ns2:externalReferenceID>"
            '<ns2:companyID xsi:nil="true"/>'
            f"<ns2:loginID>{LOGIN_ID}</ns2:loginID><ns2:siteID>{SITE_ID}</ns2:siteID>"
            "</ns2:userKey></ns1:LoginResponse>"
        ).encode()
    )


FULL_USER_INFO = UserInfo(
    login_id="emile@example.com",
    erid=ERID,
    site_id=SITE_ID,
    first_name="Émile",
    last_name="Zola",
    email="emile@example.com",
    locale="fr_FR",
    home_phone="+33 1 23 45 67 89",
    shipping=EMILE_ADDRESS,
    billing=Address(city="Lyon", country="FR"),
    company_id=COMPANY_ID,
)


def test_render_profile_full() -> None:
    body = render_profile(FULL_USER_INFO, "", [CRM_ATTRIBUTE])

    root = read_response(body, "GetUserProfileResponse")

    assert tags(root) == [f"{COMMON}userInfo", "errorMessage", f"{COMMON}extendedAttributes"]
    user_info, error_message, attributes = root
    assert tags(user_info) == [
        f"{COMMON}userKey",
        f"{COMMON}firstName",
        f"{COMMON}lastName",
        f"{COMMON}email",
        f"{COMMON}locale",
        f"{COMMON}homePhone",
        f"{COMMON}shippingAddress",
        f"{COMMON}billingAddress",
    ]
    assert_user_key(user_info[0], ERID, COMPANY_ID, "emile@example.com", SITE_ID)
    assert [element.text for element in user_info[1:6]] == [
        "Émile",
        "Zola",
        "emile@example.com",
        "fr_FR",
        "+33 1 23 45 67 89",
    ]
    assert error_message.text is None
    assert error_message.get(NIL) is None
    assert_crm_attributes(attributes)


def test_render_profile_addresses() -> None:
    body = render_profile(FULL_USER_INFO, "")

    root = read_response(body, "GetUserProfileResponse")

    shipping = root[0][6]
    billing = root[0][7]
    assert tags(shipping) == ADDRESS_TAGS
    assert tags(billing) == ADDRESS_TAGS
    assert [element.text for element in shipping] == [
        "Émile Zola",
        None,
        "Headwater",
        "10 Rue de Médicis",
        "Bât. B",
        None,
        "Paris",
        "IDF",
        "75006",
        "FR",
        "France",
        "emile@example.com",
        "+33 1 23 45 67 89",
    ]
    assert is_nil(shipping[1])
    assert is_nil(shipping[5])
    assert [element.tag for element in billing if not is_nil(element)] == [
        f"{COMMON}city",
        f"{COMMON}country",
    ]


def test_render_profile_nil_fields() -> None:
    body = render_profile(UserInfo(login_id=None, erid=ERID, site_id=None), "")

    root = read_response(body, "GetUserProfileResponse")

    assert tags(root) == [f"{COMMON}userInfo", "errorMessage"]
    user_info = root[0]
    assert_user_key(user_info[0], ERID, None, None, None)
    for element in user_info[1:]:
        assert is_nil(element), element.tag


def test_render_profile_failure() -> None:
    body = render_profile(None, "User not active")

    root = read_response(body, "GetUserProfileResponse")

    assert tags(root) == [f"{COMMON}userInfo", "errorMessage"]
    assert is_nil(root[0])
    assert root[1].text == "User not active"
    assert b"successful" not in body
    assert b"errorCode" not in body


def test_render_error_document() -> None:
    body = render_error("too_deep", "Elements are nested more than 32 levels deep.")

    root = stdlib_etree.fromstring(body)

    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?><error>')
    assert root.tag == "error"
    assert tags(root) == ["code", "message"]
    assert root[0].text == "too_deep"
    assert root[1].text == "Elements are nested more than 32 levels deep."


HOSTILE_TEXT = "<&>\"' ]]> </ns1:LoginResponse><injected/>"


def test_render_escapes_markup() -> None:
    attribute = ExtendedAttribute(HOSTILE_TEXT, HOSTILE_TEXT, HOSTILE_TEXT)
    bodies = [
        render_login_success(HOSTILE_TEXT, HOSTILE_TEXT, HOSTILE_TEXT, [attribute]),
        render_login_failure(HOSTILE_TEXT, HOSTILE_TEXT),
        render_profile(
            UserInfo(HOSTILE_TEXT, HOSTILE_TEXT, HOSTILE_TEXT, first_name=HOSTILE_TEXT),
            HOSTILE_TEXT,
            [attribute],
        ),
        render_error(HOSTILE_TEXT, HOSTILE_TEXT),
    ]

    for body in bodies:
        root = stdlib_etree.fromstring(body)
        texts = [element.text for element in root.iter() if element.text]
        assert HOSTILE_TEXT in texts
        assert all(text == HOSTILE_TEXT for text in texts if "<" in text)
        assert not any(element.tag == "injected" for element in root.iter())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("tab\tnewline\ncr\rend", "tab\tnewline\ncr\rend"),
        ("nul\x00bell\x07esc\x1bend", "nul\ufffdbell\ufffdesc\ufffdend"),
        ("lone\ud800surrogate\udfffend", "lone\ufffdsurrogate\ufffdend"),
        ("non\ufffecharacters\uffffend", "non\ufffdcharacters\ufffdend"),
        ("Émile 密码 \U0001f511 \u2028", "Émile 密码 \U0001f511 \u2028"),
        ("\x7f\x85\x9f", "\x7f\x85\x9f"),
        ("", None),
    ],
    ids=["whitespace", "c0-controls", "surrogates", "noncharacters", "unicode", "c1", "empty"],
)
def test_render_text_round_trip(value: str, expected: str | None) -> None:
    body = render_login_failure("5", value)

    root = stdlib_etree.fromstring(body)

    assert root[2].text == expected


def test_render_control_characters_replaced() -> None:
    control = "a\x01b\x0bc\x0cd"
    address = Address(**{field: control for field in Address.__slots__})
    user_info = UserInfo(
        control, control, control, control, control, control, control, control, address, address
    )
    attribute = ExtendedAttribute(control, control, control)
    bodies = [
        render_profile(user_info, control, [attribute]),
        render_login_success(control, control, control, [attribute]),
        render_session_success(control, control, control, [attribute]),
        render_create_success(control, control, control, [attribute]),
        render_create_failure(control, control),
        render_session_failure(control, control),
        render_error(control, control),
    ]

    for body in bodies:
        root = stdlib_etree.fromstring(body)
        texts = {element.text for element in root.iter() if element.text}
        assert "a\ufffdb\ufffdc\ufffdd" in texts


def test_render_output_parses_hardened() -> None:
    body = render_profile(FULL_USER_INFO, "", [CRM_ATTRIBUTE])

    root = parse_document(body, max_depth=MAX_DEPTH, max_elements=MAX_ELEMENTS)

    assert root.tag == f"{RUM}GetUserProfileResponse"


def test_render_user_key_reads_back() -> None:
    """Read a rendered userKey and extendedAttributes back with the request reader."""
    response = render_login_success(LOGIN_ID, ERID, SITE_ID, [CRM_ATTRIBUTE]).decode()
    children = response.split('xsi:type="ns1:LoginResponse">', 1)[1].rsplit("</ns1:", 1)[0]
    body = rum_document(
        "LoginRequest",
        children + "<password>p</password>",
    ).replace("<ns1:LoginRequest ", f'<ns1:LoginRequest xmlns:ns2="{COMMON_NAMESPACE}" ')

    request = parse(body)

    assert isinstance(request, LoginRequest)
    assert request.login_id == LOGIN_ID
    assert request.site_id == SITE_ID
    assert request.extended_attributes == (CRM_ATTRIBUTE,)
