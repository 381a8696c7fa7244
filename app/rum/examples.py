"""XML examples of each callback for the OpenAPI docs page, with Digital River's sample values."""

from __future__ import annotations

from typing import Any

_ENVELOPE = (
    'xmlns:ns1="http://integration.digitalriver.com/RemoteUserManagement/1.0" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
    'xmlns:xsd="http://www.w3.org/2001/XMLSchema"'
)
_COMMON = 'xmlns:ns2="http://integration.digitalriver.com/Common/1.0"'

LOGIN_REQUEST = f"""<?xml version="1.0" encoding="UTF-8"?>
<ns1:LoginRequest {_ENVELOPE}>
  <userKey xsi:type="ns2:UserKey" {_COMMON}>
    <userID xsi:nil="true"/>
    <externalReferenceID xsi:nil="true"/>
    <companyID xsi:nil="true"/>
    <loginID xsi:type="xsd:string">demo@digitalriver.com</loginID>
    <siteID xsi:nil="true"/>
  </userKey>
  <password xsi:type="xsd:string">123123</password>
  <extendedAttributes xsi:nil="true"/>
</ns1:LoginRequest>"""

LOGIN_SUCCESS = f"""<?xml version="1.0" encoding="UTF-8"?>
<ns1:LoginResponse {_ENVELOPE} {_COMMON} xsi:type="ns1:LoginResponse">
  <successful>true</successful>
  <ns2:userKey>
    <ns2:userID xsi:nil="true"/>
    <ns2:externalReferenceID>D05B4D68-F49D-11DA-8019-88F835DA4C6C</ns2:externalReferenceID>
    <ns2:companyID xsi:nil="true"/>
    <ns2:loginID>demo@digitalriver.com</ns2:loginID>
    <ns2:siteID>headwtr</ns2:siteID>
  </ns2:userKey>
</ns1:LoginResponse>"""

LOGIN_FAILURE = f"""<?xml version="1.0" encoding="UTF-8"?>
<ns1:LoginResponse {_ENVELOPE} {_COMMON} xsi:type="ns1:LoginResponse">
  <successful>false</successful>
  <errorCode>5</errorCode>
  <errorMessage>Invalid login</errorMessage>
</ns1:LoginResponse>"""

PROFILE_REQUEST = f"""<?xml version="1.0" encoding="UTF-8"?>
<ns1:GetUserProfileRequest {_ENVELOPE}>
  <userKey xsi:type="ns2:UserKey" {_COMMON}>
    <userID xsi:nil="true"/>
    <externalReferenceID xsi:type="xsd:string">D05B4D68-F49D-11DA-8019-88F835DA4C6C</externalReferenceID>
    <companyID xsi:type="xsd:string">headwtr</companyID>
    <loginID xsi:nil="true"/>
    <siteID xsi:type="xsd:string">headwtr</siteID>
  </userKey>
  <sessionToken xsi:nil="true"/>
  <extendedAttributes xsi:nil="true"/>
</ns1:GetUserProfileRequest>"""

PROFILE_SUCCESS = f"""<?xml version="1.0" encoding="UTF-8"?>
<ns1:GetUserProfileResponse {_ENVELOPE} {_COMMON} xsi:type="ns1:GetUserProfileResponse">
  <ns2:userInfo>
    <ns2:userKey>
      <ns2:userID xsi:nil="true"/>
      <ns2:externalReferenceID>D05B4D68-F49D-11DA-8019-88F835DA4C6C</ns2:externalReferenceID>
      <ns2:companyID xsi:nil="true"/>
      <ns2:loginID>demo@digitalriver.com</ns2:loginID>
      <ns2:siteID>headwtr</ns2:siteID>
    </ns2:userKey>
    <ns2:firstName>Émile</ns2:firstName>
    <ns2:lastName>Durand</ns2:lastName>
    <ns2:email>demo@digitalriver.com</ns2:email>
    <ns2:locale>en_US</ns2:locale>
    <ns2:homePhone>952-555-0100</ns2:homePhone>
    <ns2:shippingAddress xsi:nil="true"/>
    <ns2:billingAddress xsi:nil="true"/>
  </ns2:userInfo>
  <errorMessage></errorMessage>
</ns1:GetUserProfileResponse>"""

PROFILE_FAILURE = f"""<?xml version="1.0" encoding="UTF-8"?>
<ns1:GetUserProfileResponse {_ENVELOPE} {_COMMON} xsi:type="ns1:GetUserProfileResponse">
  <ns2:userInfo xsi:nil="true"/>
  <errorMessage>User not active</errorMessage>
</ns1:GetUserProfileResponse>"""

SESSION_REQUEST = f"""<?xml version="1.0" encoding="UTF-8"?>
<ns1:ValidateSessionRequest {_ENVELOPE}>
  <userKey xsi:type="ns2:UserKey" {_COMMON}>
    <userID xsi:nil="true"/>
    <externalReferenceID xsi:nil="true"/>
    <companyID xsi:nil="true"/>
    <loginID xsi:nil="true"/>
    <siteID xsi:type="xsd:string">headwtr</siteID>
  </userKey>
  <sessionToken xsi:type="xsd:string">q3Jv0kYdQ2m8Wl4Zt9XbN1cRfHs7Ue5Ga6Pi0OjLwEy</sessionToken>
  <extendedAttributes xsi:nil="true"/>
</ns1:ValidateSessionRequest>"""

SESSION_SUCCESS = f"""<?xml version="1.0" encoding="UTF-8"?>
<ns1:ValidateSessionResponse {_ENVELOPE} {_COMMON} xsi:type="ns1:ValidateSessionResponse">
  <successful>true</successful>
  <ns2:userKey>
    <ns2:userID xsi:nil="true"/>
    <ns2:externalReferenceID>D05B4D68-F49D-11DA-8019-88F835DA4C6C</ns2:externalReferenceID>
    <ns2:companyID xsi:nil="true"/>
    <ns2:loginID>demo@digitalriver.com</ns2:loginID>
    <ns2:siteID>headwtr</ns2:siteID>
  </ns2:userKey>
  <ns2:extendedAttributes>
    <ns2:item>
      <ns2:name>crmSession</ns2:name>
      <ns2:value>F3CB68D6-1643-11DD-8402-E6326E64542C/8443</ns2:value>
      <ns2:valueDataType>string</ns2:valueDataType>
    </ns2:item>
  </ns2:extendedAttributes>
</ns1:ValidateSessionResponse>"""

SESSION_FAILURE = f"""<?xml version="1.0" encoding="UTF-8"?>
<ns1:ValidateSessionResponse {_ENVELOPE} {_COMMON} xsi:type="ns1:ValidateSessionResponse">
  <successful>false</successful>
  <errorCode>20</errorCode>
  <errorMessage>Invalid session</errorMessage>
</ns1:ValidateSessionResponse>"""

CREATE_REQUEST = f"""<?xml version="1.0" encoding="UTF-8"?>
<ns1:CreateUserProfileRequest {_ENVELOPE}>
  <userInfo xsi:type="ns2:UserInfo" {_COMMON}>
    <userKey xsi:type="ns2:UserKey">
      <userID xsi:nil="true"/>
      <externalReferenceID xsi:nil="true"/>
      <companyID xsi:nil="true"/>
      <loginID xsi:type="xsd:string">jane.doe@example.com</loginID>
      <siteID xsi:type="xsd:string">headwtr</siteID>
    </userKey>
    <firstName xsi:type="xsd:string">Jane</firstName>
    <lastName xsi:type="xsd:string">Doe</lastName>
    <email xsi:type="xsd:string">jane.doe@example.com</email>
    <locale xsi:type="xsd:string">en_US</locale>
    <homePhone xsi:type="xsd:string">952-555-0100</homePhone>
    <shippingAddress xsi:type="ns2:AddressInfo">
      <line1 xsi:type="xsd:string">10380 Bren Road West</line1>
      <city xsi:type="xsd:string">Minnetonka</city>
      <state xsi:type="xsd:string">MN</state>
      <postalCode xsi:type="xsd:string">55343</postalCode>
      <country xsi:type="xsd:string">US</country>
    </shippingAddress>
    <billingAddress xsi:nil="true"/>
  </userInfo>
  <password xsi:type="xsd:string">correct horse battery</password>
  <extendedAttributes xsi:type="ns2:ExtendedAttributesInfoArray" {_COMMON}>
    <item xsi:type="ns2:ExtendedAttributesInfo">
      <name xsi:type="xsd:string">hasAcceptedTermsNConditions</name>
      <value xsi:type="xsd:string">true</value>
      <valueDataType xsi:type="xsd:string">string</valueDataType>
    </item>
  </extendedAttributes>
</ns1:CreateUserProfileRequest>"""

CREATE_SUCCESS = f"""<?xml version="1.0" encoding="UTF-8"?>
<ns1:CreateUserProfileResponse {_ENVELOPE} {_COMMON} xsi:type="ns1:CreateUserProfileResponse">
  <successful>true</successful>
  <ns2:userKey>
    <ns2:userID xsi:nil="true"/>
    <ns2:externalReferenceID>5C4C2E8A-3B1D-4F0E-9A7B-2D6E8F1A3C5B</ns2:externalReferenceID>
    <ns2:companyID xsi:nil="true"/>
    <ns2:loginID>jane.doe@example.com</ns2:loginID>
    <ns2:siteID>headwtr</ns2:siteID>
  </ns2:userKey>
</ns1:CreateUserProfileResponse>"""

CREATE_CONFLICT = f"""<?xml version="1.0" encoding="UTF-8"?>
<ns1:CreateUserProfileResponse {_ENVELOPE} {_COMMON} xsi:type="ns1:CreateUserProfileResponse">
  <successful>false</successful>
  <errorCode>5</errorCode>
  <errorMessage>Email already used</errorMessage>
</ns1:CreateUserProfileResponse>"""

CREATE_INVALID = f"""<?xml version="1.0" encoding="UTF-8"?>
<ns1:CreateUserProfileResponse {_ENVELOPE} {_COMMON} xsi:type="ns1:CreateUserProfileResponse">
  <successful>false</successful>
  <errorCode>30</errorCode>
  <errorMessage>userInfo/shippingAddress/country: country must be an ISO 3166-1 alpha-2 code such as US or DE</errorMessage>
</ns1:CreateUserProfileResponse>"""

BAD_REQUEST = """<?xml version="1.0" encoding="UTF-8"?>
<error><code>missing_field</code><message>LoginRequest is missing userKey/loginID.</message></error>"""

UNAUTHORIZED = """<?xml version="1.0" encoding="UTF-8"?>
<error><code>unauthorized</code><message>missing or invalid HTTP Basic credentials for the callbacks</message></error>"""


def _xml_examples(**examples: str) -> dict[str, Any]:
    return {
        "text/xml": {
            "schema": {"type": "string"},
            "examples": {name: {"value": value} for name, value in examples.items()},
        }
    }


def openapi_for(requests: dict[str, str], answers: dict[str, str]) -> dict[str, Any]:
    """Return `openapi_extra` for a callback route: XML request examples and documented answers."""
    return {
        "requestBody": {"required": True, "content": _xml_examples(**requests)},
        "responses": {
            "200": {
                "description": "Answered; `successful=false` (or a nil `userInfo`) is a business "
                "failure, still HTTP 200.",
                "content": _xml_examples(**answers),
            },
            "400": {
                "description": "Not well-formed XML, a forbidden DTD or entity, an unknown root "
                "element or a missing required field.",
                "content": _xml_examples(missing_field=BAD_REQUEST),
            },
            "401": {
                "description": "Missing or wrong HTTP Basic credentials.",
                "content": _xml_examples(unauthorized=UNAUTHORIZED),
            },
            "403": {"description": "The caller's address is outside SSO_RUM_ALLOWED_NETWORKS."},
            "408": {"description": "The body did not arrive within SSO_REQUEST_TIMEOUT_SECONDS."},
            "413": {"description": "The body is larger than SSO_MAX_BODY_BYTES."},
            "415": {"description": "The content type is not XML."},
            "429": {
                "description": "RemoteLogin only, with source-address throttling on: the address "
                "is blocked after too many failed logins; retry after `Retry-After` seconds."
            },
            "431": {"description": "The request line and headers exceed SSO_MAX_HEADER_BYTES."},
            "500": {"description": "An unexpected error, logged with the request id."},
            "503": {
                "description": "The database is unavailable, the connection pool is exhausted, "
                "a statement waited past SSO_DB_LOCK_TIMEOUT_MS or SSO_DB_STATEMENT_TIMEOUT_MS "
                "(as during an exclusive import into an empty store), or the request took longer "
                "than SSO_REQUEST_TIMEOUT_SECONDS. Retry after `Retry-After` seconds."
            },
        },
    }
