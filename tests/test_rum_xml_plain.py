"""Tests that parse_request gives the same result whether or not lxml parses the body.

``parse_request`` hands a plain document (see ``_is_plain``) to lxml and falls back to the
checked expat parse when the document is not plain or lxml raises or logs an error or warning.
Most tests compute the outcome twice, the second time with the lxml route disabled, and require
equal outcomes: the same request dataclass, or the same error code and message.

The sample requests are ASCII and have fewer start tags than the default depth limit of 32,
because ``_is_plain`` bounds the depth by the start-tag count. So all of them take the lxml route,
unlike the full create-user sample in test_rum_xml.py, which has more than 32 start tags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree as lxml_etree

from app.rum import xml as rum_xml
from app.rum.xml import (
    COMMON_NAMESPACE,
    RUM_NAMESPACE,
    XSI_NAMESPACE,
    CreateUserRequest,
    LoginRequest,
    ProfileRequest,
    RumRequest,
    SessionValidationRequest,
    XMLRequestError,
    parse_request,
)
from tests.test_rum_xml import (
    AXIS_LOGIN_REQUEST,
    AXIS_PROFILE_REQUEST,
    CRM_SESSION_ITEMS,
    LOGIN_ID,
    NAMESPACES,
    PASSWORD,
    SITE_ID,
)

# The service's default limits, from app.settings.
MAX_DEPTH = 32
MAX_ELEMENTS = 2_000
MAX_TEXT_LENGTH = 16_384
DEFAULT_LIMITS = {
    "max_depth": MAX_DEPTH,
    "max_elements": MAX_ELEMENTS,
    "max_text_length": MAX_TEXT_LENGTH,
}

Outcome = RumRequest | tuple[str, str, str]


def parse_outcome(body: bytes, limits: dict[str, int]) -> Outcome:
    """Return the parsed request, or ("error", code, message) for an XMLRequestError."""
    try:
        return parse_request(body, **limits)
    except XMLRequestError as error:
        return ("error", error.code, error.message)


def skip_lxml(*_args: object) -> None:
    return None


def outcomes(body: bytes, **limits: int) -> tuple[Outcome, Outcome]:
    """Return the outcome of parse_request as shipped and with the lxml route disabled."""
    all_limits = DEFAULT_LIMITS | limits
    with_lxml = parse_outcome(body, all_limits)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rum_xml, "_parse_plain", skip_lxml)
        expat_only = parse_outcome(body, all_limits)
    return with_lxml, expat_only


def tree_of(element: Any) -> tuple[Any, ...]:
    """Return the tag, attributes, text, tail and children of an lxml or ElementTree element."""
    children = [tree_of(child) for child in element]
    return (element.tag, dict(element.attrib), element.text, element.tail, children)


def assert_same_outcome(body: bytes, **limits: int) -> None:
    """Assert that both routes give one outcome and, where lxml accepts the body, one tree.

    The tree comparison also covers the tails and attributes that the request readers ignore.
    """
    with_lxml, expat_only = outcomes(body, **limits)
    assert with_lxml == expat_only, body

    all_limits = DEFAULT_LIMITS | limits
    arguments = (all_limits["max_depth"], all_limits["max_elements"], all_limits["max_text_length"])
    try:
        document = rum_xml._to_utf8(body)
    except XMLRequestError:
        return
    plain_root = rum_xml._parse_plain(document, *arguments)
    if plain_root is not None:
        checked_root = rum_xml._parse_checked(document, *arguments)
        assert tree_of(plain_root) == tree_of(checked_root), body


def takes_lxml_route(body: bytes, **limits: int) -> bool:
    all_limits = DEFAULT_LIMITS | limits
    document = rum_xml._to_utf8(body)
    root = rum_xml._parse_plain(
        document,
        all_limits["max_depth"],
        all_limits["max_elements"],
        all_limits["max_text_length"],
    )
    return root is not None


# ---------------------------------------------------------------------------------------------
# Sample requests, in the Apache Axis 1.x "encoded" style that Digital River sends
# ---------------------------------------------------------------------------------------------

LOGIN_REQUEST = AXIS_LOGIN_REQUEST.encode()

PROFILE_REQUEST = AXIS_PROFILE_REQUEST.encode()

GET_USER_REQUEST = PROFILE_REQUEST.replace(b"GetUserProfileRequest", b"GetUserRequest")

SESSION_REQUEST = f"""<?xml version="1.0" encoding="UTF-8"?>
<ns1:ValidateSessionRequest xmlns:ns1="{RUM_NAMESPACE}" {NAMESPACES}>
  <userKey xsi:type="ns2:UserKey" xmlns:ns2="{COMMON_NAMESPACE}">
    <userID xsi:type="xsd:string" xsi:nil="true"/>
    <externalReferenceID xsi:type="xsd:string" xsi:nil="true"/>
    <companyID xsi:type="xsd:string" xsi:nil="true"/>
    <loginID xsi:type="xsd:string">{LOGIN_ID}</loginID>
    <siteID xsi:type="xsd:string">{SITE_ID}</siteID>
  </userKey>
  <sessionToken xsi:type="xsd:string">opaque-token-1</sessionToken>{CRM_SESSION_ITEMS}
</ns1:ValidateSessionRequest>
""".encode()

CREATE_REQUEST = f"""<?xml version="1.0" encoding="UTF-8"?>
<ns1:CreateUserProfileRequest xmlns:ns1="{RUM_NAMESPACE}" {NAMESPACES}>
  <userInfo xsi:type="ns2:UserInfo" xmlns:ns2="{COMMON_NAMESPACE}">
    <userKey xsi:type="ns2:UserKey">
      <userID xsi:nil="true"/>
      <externalReferenceID xsi:nil="true"/>
      <companyID xsi:nil="true"/>
      <loginID xsi:type="xsd:string">emile@example.com</loginID>
      <siteID xsi:type="xsd:string">{SITE_ID}</siteID>
    </userKey>
    <firstName xsi:type="xsd:string">Emile</firstName>
    <lastName xsi:type="xsd:string">Zola</lastName>
    <email xsi:type="xsd:string">emile@example.com</email>
    <locale xsi:type="xsd:string">fr_FR</locale>
    <homePhone xsi:type="xsd:string">+33 1 23 45 67 89</homePhone>
    <shippingAddress xsi:type="ns2:AddressInfo">
      <name1>Emile Zola</name1>
      <line1>10 Rue de Medicis</line1>
      <city>Paris</city>
      <postalCode>75006</postalCode>
      <country>FR</country>
    </shippingAddress>
    <billingAddress xsi:type="ns2:AddressInfo" xsi:nil="true"/>
  </userInfo>
  <password xsi:type="xsd:string">J'accuse!</password>{CRM_SESSION_ITEMS}
</ns1:CreateUserProfileRequest>
""".encode()

CREATE_USER_REQUEST = CREATE_REQUEST.replace(b"CreateUserProfileRequest", b"CreateUserRequest")

# Root tag, sample body and the request class that the body must parse into.
SAMPLES: list[tuple[str, bytes, type]] = [
    ("LoginRequest", LOGIN_REQUEST, LoginRequest),
    ("GetUserProfileRequest", PROFILE_REQUEST, ProfileRequest),
    ("GetUserRequest", GET_USER_REQUEST, ProfileRequest),
    ("ValidateSessionRequest", SESSION_REQUEST, SessionValidationRequest),
    ("CreateUserProfileRequest", CREATE_REQUEST, CreateUserRequest),
    ("CreateUserRequest", CREATE_USER_REQUEST, CreateUserRequest),
]
SAMPLE_BODIES = [body for _, body, _ in SAMPLES]
SAMPLE_IDS = [root for root, _, _ in SAMPLES]


def test_samples_cover_every_root() -> None:
    sample_roots = {f"{{{RUM_NAMESPACE}}}{root}" for root in SAMPLE_IDS}

    assert sample_roots == set(rum_xml._REQUEST_READERS)


@pytest.mark.parametrize(("root", "body", "request_class"), SAMPLES, ids=SAMPLE_IDS)
def test_sample_takes_lxml_route(root: str, body: bytes, request_class: type) -> None:
    assert body.isascii()
    document = rum_xml._to_utf8(body)
    assert rum_xml._is_plain(document, MAX_DEPTH, MAX_ELEMENTS, MAX_TEXT_LENGTH)
    assert rum_xml._parse_plain(document, MAX_DEPTH, MAX_ELEMENTS, MAX_TEXT_LENGTH) is not None


@pytest.mark.parametrize(("root", "body", "request_class"), SAMPLES, ids=SAMPLE_IDS)
def test_sample_parsed_without_expat(
    root: str, body: bytes, request_class: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parse each sample with the checked parse made to fail, so only lxml can succeed."""

    def fail_checked(*_args: object) -> None:
        raise AssertionError(f"{root} went to the checked parse")

    monkeypatch.setattr(rum_xml, "_parse_checked", fail_checked)

    request = parse_request(body, **DEFAULT_LIMITS)

    assert isinstance(request, request_class)


@pytest.mark.parametrize(("root", "body", "request_class"), SAMPLES, ids=SAMPLE_IDS)
def test_sample_same_outcome(root: str, body: bytes, request_class: type) -> None:
    with_lxml, expat_only = outcomes(body)

    assert isinstance(expat_only, request_class)
    assert with_lxml == expat_only


def test_lxml_route_after_rejected_body() -> None:
    """A body that lxml rejects leaves the per-thread parser usable for the next one."""
    malformed = LOGIN_REQUEST.replace(b"</password>", b"</passwd>")
    # libxml2 parses an XML 1.1 declaration but logs the warning "Unsupported version '1.1'".
    warned = LOGIN_REQUEST.replace(b'version="1.0"', b'version="1.1"', 1)

    assert parse_outcome(malformed, DEFAULT_LIMITS)[0] == "error"
    assert not takes_lxml_route(malformed)
    assert not takes_lxml_route(warned)
    assert takes_lxml_route(LOGIN_REQUEST)


# ---------------------------------------------------------------------------------------------
# Mutated samples
# ---------------------------------------------------------------------------------------------

# Printable ASCII, then the markup and whitespace bytes a second time so that they are drawn
# more often, then control and non-ASCII bytes, which take the body off the lxml route.
MUTATION_BYTES = (
    list(range(0x20, 0x7F))
    + list(b"<>&;:/\"'=!?#x \t\r\n")
    + [0x00, 0x01, 0x0B, 0x7F, 0x80, 0xA9, 0xC3, 0xFE, 0xFF]
)


def mutate(body: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    """Apply each (kind, offset, byte) mutation, with the offset taken modulo the length."""
    data = bytearray(body)
    for kind, offset, byte in mutations:
        if kind == "insert":
            data.insert(offset % (len(data) + 1), byte)
        elif data and kind == "delete":
            del data[offset % len(data)]
        elif data:
            data[offset % len(data)] = byte
    return bytes(data)


MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["insert", "delete", "replace"]),
        st.integers(min_value=0, max_value=1 << 16),
        st.sampled_from(MUTATION_BYTES),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=400, deadline=None)
@given(body=st.sampled_from(SAMPLE_BODIES), mutations=MUTATIONS)
def test_mutated_sample_same_outcome(body: bytes, mutations: list[tuple[str, int, int]]) -> None:
    assert_same_outcome(mutate(body, mutations))


@pytest.mark.parametrize("byte", [None, *b"<&\"'>\r"], ids=["delete", *"<&\"'>r"])
def test_every_offset_same_outcome(byte: int | None) -> None:
    """Delete, or overwrite with one markup byte, each byte of the login and create samples."""
    for body in (LOGIN_REQUEST, CREATE_REQUEST):
        for offset in range(len(body)):
            if byte is None:
                changed = body[:offset] + body[offset + 1 :]
            else:
                changed = body[:offset] + bytes([byte]) + body[offset + 1 :]
            assert_same_outcome(changed)


# ---------------------------------------------------------------------------------------------
# Hand-written edge documents
# ---------------------------------------------------------------------------------------------


def login(value: str = LOGIN_ID, key_attributes: str = "", password: str = PASSWORD) -> str:
    """Return a short LoginRequest with `value` as the loginID text."""
    return (
        f'<r:LoginRequest xmlns:r="{RUM_NAMESPACE}">'
        f"<userKey{key_attributes}><loginID>{value}</loginID></userKey>"
        f"<password>{password}</password></r:LoginRequest>"
    )


XSI = f' xmlns:xsi="{XSI_NAMESPACE}"'


def chain(depth: int) -> str:
    """Return a LoginRequest nested `depth` levels deep, counting the root as level 1."""
    inner = "x"
    for _ in range(depth - 3):
        inner = f"<d>{inner}</d>"
    return (
        f'<r:LoginRequest xmlns:r="{RUM_NAMESPACE}">'
        f"<userKey><loginID>{inner}</loginID></userKey></r:LoginRequest>"
    )


def siblings(count: int) -> str:
    """Return a LoginRequest with `count` elements in all, most of them empty siblings."""
    extra = "<e/>" * (count - 4)
    return (
        f'<r:LoginRequest xmlns:r="{RUM_NAMESPACE}">{extra}'
        f"<userKey><loginID>a</loginID></userKey><password>p</password></r:LoginRequest>"
    )


def sized(length: int) -> str:
    """Return a LoginRequest exactly `length` characters long, padded in the password."""
    padding = length - len(login(password=""))
    assert padding >= 0
    return login(password="p" * padding)


def long_text(length: int) -> str:
    return login(password="p" * length)


SMALL = {"max_depth": 4, "max_elements": 16}
TEXT_LIMIT = 256

EDGE_DOCUMENTS = [
    pytest.param(f"<x:LoginRequest>{login()}</x:LoginRequest>", {}, id="unbound-element-prefix"),
    pytest.param(login(key_attributes=' y:z="1"'), {}, id="unbound-attribute-prefix"),
    pytest.param('<?xml version="1.1"?>' + login(), {}, id="xml-1.1-declaration"),
    pytest.param('<?xml version="2.0"?>' + login(), {}, id="xml-2.0-declaration"),
    pytest.param(login("&foo;"), {}, id="undefined-entity"),
    pytest.param(login("&amp;&lt;&gt;&quot;&apos;"), {}, id="predefined-entities"),
    pytest.param(login("a&#10;b&#x41;&#13;&#x9;"), {}, id="character-references"),
    pytest.param(login("&#0;"), {}, id="nul-reference"),
    pytest.param(login("&#1;"), {}, id="control-reference"),
    pytest.param(login("&#xD800;"), {}, id="surrogate-reference"),
    pytest.param(login("&#xFFFE;"), {}, id="noncharacter-reference"),
    pytest.param(login("&#x110000;"), {}, id="out-of-range-reference"),
    pytest.param(login("&#65"), {}, id="unterminated-reference"),
    pytest.param(login("a\x01b"), {}, id="raw-control-byte"),
    pytest.param(login("a]]>b"), {}, id="cdata-end-in-text"),
    pytest.param(login(key_attributes=' a="1" a="2"'), {}, id="duplicate-attribute"),
    pytest.param(
        login(key_attributes=' xmlns:p="urn:a" xmlns:q="urn:a" p:a="1" q:a="2"'),
        {},
        id="duplicate-expanded-attribute",
    ),
    pytest.param(login(key_attributes=' xmlns:x=""'), {}, id="prefix-undeclared"),
    pytest.param(login(key_attributes=' xmlns=""'), {}, id="default-namespace-undeclared"),
    pytest.param(
        f'<LoginRequest xmlns="{RUM_NAMESPACE}"><userKey xmlns=""><loginID>a</loginID>'
        "</userKey><password>p</password></LoginRequest>",
        {},
        id="default-namespace-undeclared-below-default",
    ),
    pytest.param(login(key_attributes=' xml:lang="en"'), {}, id="xml-lang-attribute"),
    pytest.param(login(key_attributes=' xmlns:xml="urn:x"'), {}, id="xml-prefix-rebound"),
    pytest.param(login(key_attributes=' xmlns:xmlns="urn:x"'), {}, id="xmlns-prefix-declared"),
    pytest.param(login(key_attributes=' xmlns:q="relative/uri"'), {}, id="relative-namespace"),
    pytest.param(
        login().replace("<userKey>", '<a:b:c xmlns:a="urn:a"/><userKey>'), {}, id="two-colons"
    ),
    pytest.param(login("a\rb"), {}, id="cr-in-text"),
    pytest.param(login("a\r\nb\n\rc"), {}, id="crlf-in-text"),
    pytest.param(login(password="p\r\nq\r"), {}, id="crlf-in-password"),
    pytest.param(login(key_attributes=' a="x\ry"'), {}, id="cr-in-attribute"),
    pytest.param(login(key_attributes=' a="x\r\ny"'), {}, id="crlf-in-attribute"),
    pytest.param(login(key_attributes=' a="x\ty\nz"'), {}, id="tab-newline-in-attribute"),
    pytest.param(login(key_attributes=f'{XSI} xsi:nil="\r\ntrue\t"'), {}, id="nil-with-whitespace"),
    pytest.param(login(key_attributes=f'{XSI} xsi:nil="&#13;1"'), {}, id="nil-with-reference"),
    pytest.param(login(key_attributes=' a=">"'), {}, id="gt-in-attribute"),
    pytest.param(login(key_attributes=' a="<"'), {}, id="lt-in-attribute"),
    pytest.param(login(key_attributes=" a=1"), {}, id="unquoted-attribute"),
    pytest.param(" \r\n\t" + login(), {}, id="whitespace-before-root"),
    pytest.param(login() + " \r\n\t", {}, id="whitespace-after-root"),
    pytest.param(" " + '<?xml version="1.0"?>' + login(), {}, id="declaration-after-space"),
    pytest.param(login() + "x", {}, id="text-after-root"),
    pytest.param(login() + "<b/>", {}, id="two-roots"),
    pytest.param('<?xml version="1.0" encoding="UTF-16"?>' + login(), {}, id="declared-utf16"),
    pytest.param('<?xml version="1.0" encoding="ISO-8859-1"?>' + login(), {}, id="declared-latin1"),
    pytest.param('<?xml version="1.0" encoding="US-ASCII"?>' + login(), {}, id="declared-ascii"),
    pytest.param('<?xml version="1.0" standalone="yes"?>' + login(), {}, id="standalone-yes"),
    pytest.param('<?xml version="1.0" standalone="maybe"?>' + login(), {}, id="standalone-invalid"),
    pytest.param('<?xml encoding="UTF-8"?>' + login(), {}, id="declaration-without-version"),
    pytest.param('<?XML version="1.0"?>' + login(), {}, id="declaration-upper-case"),
    pytest.param('<?app data="1"?>' + login(), {}, id="instruction-before-root"),
    pytest.param(chain(4), SMALL, id="depth-at-limit"),
    pytest.param(chain(5), SMALL, id="depth-over-limit"),
    pytest.param(siblings(16), SMALL, id="elements-at-limit"),
    pytest.param(siblings(17), SMALL, id="elements-over-limit"),
    pytest.param(sized(TEXT_LIMIT), {"max_text_length": TEXT_LIMIT}, id="length-at-text-limit"),
    pytest.param(
        sized(TEXT_LIMIT + 1), {"max_text_length": TEXT_LIMIT}, id="length-over-text-limit"
    ),
    pytest.param(long_text(TEXT_LIMIT), {"max_text_length": TEXT_LIMIT}, id="text-at-limit"),
    pytest.param(long_text(TEXT_LIMIT + 1), {"max_text_length": TEXT_LIMIT}, id="text-over-limit"),
    pytest.param("", {}, id="empty-body"),
    pytest.param(" \n", {}, id="whitespace-body"),
    pytest.param('<?xml version="1.0"?>', {}, id="declaration-only"),
    pytest.param(login().replace(RUM_NAMESPACE, "urn:other"), {}, id="root-in-other-namespace"),
    pytest.param(
        login().replace(' xmlns:r="' + RUM_NAMESPACE + '"', "").replace("r:", ""),
        {},
        id="root-without-namespace",
    ),
    pytest.param(login().replace("LoginRequest", "LogoutRequest"), {}, id="unknown-root-name"),
    pytest.param(
        login().replace("<password>", "<passwd>").replace("</password>", "</passwd>"),
        {},
        id="missing-password",
    ),
]


@pytest.mark.parametrize(("text", "limits"), EDGE_DOCUMENTS)
def test_edge_document_same_outcome(text: str, limits: dict[str, int]) -> None:
    assert_same_outcome(text.encode("ascii"), **limits)


@pytest.mark.parametrize(
    ("text", "limits", "expected_code"),
    [
        (chain(5), SMALL, "too_deep"),
        (siblings(17), SMALL, "too_many_elements"),
        (long_text(TEXT_LIMIT + 1), {"max_text_length": TEXT_LIMIT}, "text_too_long"),
    ],
    ids=["depth", "elements", "text"],
)
def test_edge_over_limit_rejected(text: str, limits: dict[str, int], expected_code: str) -> None:
    """Check that the over-limit edge documents reach the limit they are named after."""
    with_lxml, _ = outcomes(text.encode("ascii"), **limits)

    assert isinstance(with_lxml, tuple)
    assert with_lxml[1] == expected_code


@pytest.mark.parametrize(
    ("text", "limits", "plain"),
    [
        (chain(4), SMALL, True),
        (chain(5), SMALL, False),
        (sized(TEXT_LIMIT), {"max_text_length": TEXT_LIMIT}, True),
        (sized(TEXT_LIMIT + 1), {"max_text_length": TEXT_LIMIT}, False),
    ],
    ids=["depth-at-limit", "depth-over-limit", "length-at-limit", "length-over-limit"],
)
def test_limit_boundary_route(text: str, limits: dict[str, int], plain: bool) -> None:
    assert takes_lxml_route(text.encode("ascii"), **limits) is plain


# ---------------------------------------------------------------------------------------------
# Markup that never reaches lxml
# ---------------------------------------------------------------------------------------------


def insert_before_user_key(markup: bytes) -> bytes:
    return LOGIN_REQUEST.replace(b"\n  <userKey ", b"\n  " + markup + b"<userKey ", 1)


def insert_after_declaration(markup: bytes) -> bytes:
    return LOGIN_REQUEST.replace(b"?>\n", b"?>\n" + markup, 1)


NOT_PLAIN_DOCUMENTS = [
    pytest.param(insert_after_declaration(b"<!DOCTYPE r>"), id="doctype"),
    pytest.param(insert_after_declaration(b'<!DOCTYPE r [<!ENTITY e "x">]>'), id="internal-subset"),
    pytest.param(insert_before_user_key(b"<!-- comment -->"), id="comment"),
    pytest.param(LOGIN_REQUEST.replace(PASSWORD.encode(), b"<![CDATA[123123]]>"), id="cdata"),
    pytest.param(insert_after_declaration(b"<?app instruction?>"), id="instruction-at-top"),
    pytest.param(insert_before_user_key(b"<?app instruction?>"), id="instruction-in-root"),
    pytest.param(LOGIN_REQUEST.replace(b"123123", b"123\xc3\xa9"), id="non-ascii"),
    pytest.param(
        b"<!DOCTYPE r>" + LOGIN_REQUEST.split(b"?>", 1)[1], id="doctype-without-declaration"
    ),
    pytest.param(
        b"<!-- c -->" + LOGIN_REQUEST.split(b"?>", 1)[1], id="comment-without-declaration"
    ),
]


@pytest.mark.parametrize("body", NOT_PLAIN_DOCUMENTS)
def test_markup_not_plain(body: bytes) -> None:
    document = rum_xml._to_utf8(body)

    assert rum_xml._is_plain(rum_xml._to_utf8(LOGIN_REQUEST), MAX_DEPTH, MAX_ELEMENTS, None)
    assert not rum_xml._is_plain(document, MAX_DEPTH, MAX_ELEMENTS, None)
    assert rum_xml._parse_plain(document, MAX_DEPTH, MAX_ELEMENTS, None) is None
    assert_same_outcome(body)


def test_start_tags_counted_without_end_tags() -> None:
    document = rum_xml._to_utf8(LOGIN_REQUEST)
    markup = document.count(b"<")
    start_tags = markup - document.count(b"</")

    # Bounds between the start tags and all the `<` need the end tags subtracted.
    assert start_tags < markup
    assert rum_xml._is_plain(document, start_tags, start_tags, None)
    assert not rum_xml._is_plain(document, start_tags - 1, markup, None)
    assert not rum_xml._is_plain(document, markup, start_tags - 1, None)


# ---------------------------------------------------------------------------------------------
# lxml parser configuration
# ---------------------------------------------------------------------------------------------


def plain_parser_text(document: bytes) -> str:
    root = lxml_etree.fromstring(document, rum_xml._plain_parser())
    return "".join(root.itertext())


def test_plain_parser_resolves_no_entities(tmp_path: Path) -> None:
    """Give the configured parser a DTD directly, bypassing _is_plain, and expand nothing.

    lxml does not expose resolve_entities or load_dtd on the parser object, so this test checks
    their effect. An external file entity, an internal entity and an external DTD must stay
    unread and unexpanded.
    """
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-FILE-CONTENT")
    external_dtd = tmp_path / "external.dtd"
    external_dtd.write_text('<!ENTITY d "FROM-EXTERNAL-DTD">')
    internal = (
        f'<!DOCTYPE r [<!ENTITY e SYSTEM "{secret.as_uri()}"><!ENTITY i "INTERNAL">]><r>&e;&i;</r>'
    ).encode()
    external = f'<!DOCTYPE r SYSTEM "{external_dtd.as_uri()}"><r>&d;</r>'.encode()

    internal_text = plain_parser_text(internal)
    external_text = plain_parser_text(external)

    assert "SECRET-FILE-CONTENT" not in internal_text
    assert "INTERNAL" not in internal_text
    assert "FROM-EXTERNAL-DTD" not in external_text
