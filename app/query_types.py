"""Types for query parameters shared by the admin, security and transfer endpoints."""

from __future__ import annotations

import re
from typing import Annotated, Final

from pydantic import AwareDatetime, BeforeValidator

_NUMBER: Final = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _reject_numbers(value: object) -> object:
    # pydantic reads a number as a Unix time, which the OpenAPI schema's date-time excludes.
    if isinstance(value, int | float) or (
        isinstance(value, str) and _NUMBER.fullmatch(value.strip())
    ):
        raise ValueError(
            "must be an ISO 8601 date-time with a UTC offset, such as 2026-12-04T10:00:00Z"
        )
    return value


# A date-time with its UTC offset, given in ISO 8601 form.
IsoDateTime = Annotated[AwareDatetime, BeforeValidator(_reject_numbers)]
