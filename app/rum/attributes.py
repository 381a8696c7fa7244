"""Extended attributes exchanged with Digital River, filtered by the allowlists in the settings.

`SSO_RUM_STORED_ATTRIBUTES` names the attributes a Create request may store and
`SSO_RUM_RETURNED_ATTRIBUTES` those sent back in Login, Profile, Session and Create responses.
Any other name is ignored, never an error, because DR forwards attributes agreed for other uses.
"""

from __future__ import annotations

from collections.abc import Iterable

from app.models import User
from app.rum import xml
from app.settings import Settings


def returned_attributes(user: User, settings: Settings) -> tuple[xml.ExtendedAttribute, ...]:
    """Return the user's allowlisted attributes, in the order the setting lists their names.

    `user.attributes` must be loaded.
    """
    if not settings.rum_returned_attributes:
        return ()
    return attributes_from_arrays(
        [attribute.name for attribute in user.attributes],
        [attribute.value for attribute in user.attributes],
        tuple(settings.rum_returned_attributes),
    )


def attributes_from_arrays(
    names: list[str] | None, values: list[str] | None, returned: tuple[str, ...]
) -> tuple[xml.ExtendedAttribute, ...]:
    """Return the attributes read as two parallel arrays, in the order of `returned`."""
    if not names or not values:
        return ()
    by_name = dict(zip(names, values, strict=True))
    return tuple(
        xml.ExtendedAttribute(name=name, value=by_name[name], value_data_type="string")
        for name in returned
        if name in by_name
    )


def attributes_to_store(
    items: Iterable[xml.ExtendedAttribute], settings: Settings
) -> dict[str, str]:
    """Return the allowlisted items of a request as a name-to-value map.

    A nil value stores nothing, and when a name repeats the first item wins.
    """
    allowed = set(settings.rum_stored_attributes)
    stored: dict[str, str] = {}
    for item in items:
        if item.name in allowed and item.value is not None and item.name not in stored:
            stored[item.name] = item.value
    return stored
