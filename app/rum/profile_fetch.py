"""RemoteUserFetch in one database round trip.

Digital River fetches a profile on every checkout, so this path skips the ORM: one statement on
the driver connection finds the user by ERID, joins both addresses and the returned extended
attributes, and inserts the callback's `login_events` row. It runs as its own implicit
transaction, so there is no BEGIN or COMMIT round trip either.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from app.models.user import ADDRESS_FIELDS
from app.rum import xml
from app.rum.attributes import attributes_from_arrays

ADDRESS_KINDS = ("shipping", "billing")

_ADDRESS_COLUMNS = ",\n    ".join(
    f"{kind}.{column} AS {kind}_{column}" for kind in ADDRESS_KINDS for column in ADDRESS_FIELDS
)
# For each address kind, the result column of each address field, built once.
_ADDRESS_RESULT_COLUMNS = {
    kind: tuple((column, f"{kind}_{column}") for column in ADDRESS_FIELDS)
    for kind in ADDRESS_KINDS
}

# $1 is the ERID to look up (NULL for one that fails the ERID syntax), $2 the ERID to record,
# $3 the source address, $4 the siteID, $5 the request id and, when the settings name
# attributes to return, $6 their names.
#
# The event row is written whether or not a user matched, hence the LEFT JOIN from one constant
# row. `set_config(..., true)` turns synchronous_commit off for this statement's transaction
# only: the response does not wait for the WAL flush, and a PostgreSQL crash can lose the last
# fraction of a second of profile-fetch events, never a user or a login event.
_PROFILE_FETCH_TEMPLATE = f"""
WITH found AS (
    SELECT id, user_key, external_reference_id, login, status,
           first_name, last_name, email, locale, home_phone
    FROM users
    WHERE lower(external_reference_id) = lower($1)
),
recorded AS (
    INSERT INTO login_events (
        kind, outcome, reason, user_key, external_reference_id, source_address, site_id,
        request_id
    )
    SELECT 'profile',
           CASE WHEN found.status = 'active' THEN 'success' ELSE 'failure' END,
           CASE
               WHEN found.id IS NULL THEN 'unknown'
               WHEN found.status = 'erased' THEN 'erased'
               WHEN found.status <> 'active' THEN 'disabled'
           END,
           found.user_key,
           coalesce(found.external_reference_id, $2),
           CAST($3::text AS inet), $4, $5
    FROM (SELECT set_config('synchronous_commit', 'off', true)) AS durability
    LEFT JOIN found ON true
)
SELECT
    found.user_key, found.external_reference_id, found.login, found.status,
    found.first_name, found.last_name, found.email, found.locale, found.home_phone,
    {_ADDRESS_COLUMNS},
    shipping.user_id IS NOT NULL AS has_shipping,
    billing.user_id IS NOT NULL AS has_billing{{attribute_columns}}
FROM found
LEFT JOIN user_addresses AS shipping ON shipping.user_id = found.id AND shipping.kind = 'shipping'
LEFT JOIN user_addresses AS billing ON billing.user_id = found.id AND billing.kind = 'billing'
{{attribute_join}}"""  # noqa: S608 (the interpolated text is column names from ADDRESS_FIELDS)

PROFILE_FETCH_SQL = _PROFILE_FETCH_TEMPLATE.format(
    attribute_columns=""",
    attributes.names AS attribute_names,
    attributes.values_ AS attribute_values""",
    attribute_join="""LEFT JOIN LATERAL (
    SELECT array_agg(name) AS names, array_agg(value) AS values_
    FROM user_attributes
    WHERE user_id = found.id AND name = ANY($6::text[])
) AS attributes ON true
""",
)
# Without attributes to return, which is the default, the statement skips their join and the
# driver encodes no array.
PROFILE_FETCH_WITHOUT_ATTRIBUTES_SQL = _PROFILE_FETCH_TEMPLATE.format(
    attribute_columns="", attribute_join=""
)


@dataclass(frozen=True, slots=True)
class FetchedProfile:
    """The user a RemoteUserFetch found, with what the response needs."""

    user_key: uuid.UUID
    external_reference_id: str
    status: str
    info: xml.UserInfo
    attributes: tuple[xml.ExtendedAttribute, ...]


def _address(record: Any, kind: str) -> xml.Address | None:
    if not record[f"has_{kind}"]:
        return None
    return xml.Address(
        **{field: record[result] for field, result in _ADDRESS_RESULT_COLUMNS[kind]}
    )


async def fetch_profile(
    connection: Any,
    erid: str | None,
    *,
    recorded_erid: str,
    source_address: str | None,
    site_id: str | None,
    request_id: str | None,
    returned_attributes: tuple[str, ...],
) -> FetchedProfile | None:
    """Find the user with `erid` (case-insensitive) and record the fetch; None when unknown.

    `connection` is an asyncpg connection outside any transaction block, so the statement is its
    own transaction and `synchronous_commit` is off for that statement alone. Inside a caller's
    transaction the setting would apply to all of it (the tests run it that way).
    """
    statement = PROFILE_FETCH_WITHOUT_ATTRIBUTES_SQL
    arguments: list[Any] = [erid, recorded_erid, source_address, site_id, request_id]
    if returned_attributes:
        statement = PROFILE_FETCH_SQL
        arguments.append(list(returned_attributes))
    record = await connection.fetchrow(statement, *arguments)
    if record is None:
        return None
    info = xml.UserInfo(
        login_id=record["login"],
        erid=record["external_reference_id"],
        site_id=site_id,
        first_name=record["first_name"],
        last_name=record["last_name"],
        email=record["email"],
        locale=record["locale"],
        home_phone=record["home_phone"],
        shipping=_address(record, "shipping"),
        billing=_address(record, "billing"),
    )
    return FetchedProfile(
        user_key=record["user_key"],
        external_reference_id=record["external_reference_id"],
        status=record["status"],
        info=info,
        attributes=attributes_from_arrays(
            record["attribute_names"], record["attribute_values"], returned_attributes
        )
        if returned_attributes
        else (),
    )
