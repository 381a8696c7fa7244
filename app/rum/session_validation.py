"""RemoteSessionValidation: identify the shopper who owns a session token of the merchant's site.

The merchant's site issues the token through `POST /api/v1/sessions`; DR reads it from an agreed
cookie or URL parameter and sends it back here. The token travels in `sessionToken` or in an
`extendedAttributes` item whose name is listed in `SSO_RUM_SESSION_TOKEN_ATTRIBUTES`. The
identity comes from the token alone: a `userKey` in the request is only compared, and a
mismatch is logged.

Error codes of `successful=false` responses, all with the message "Invalid session":

| code | when |
|---|---|
| 20 | the token has expired |
| 21 | the token was revoked, or issued before the user's latest password change |
| 22 | no session has this token |
| 23 | the token is not 43 URL-safe characters |
| 24 | the token's user is disabled |
| 25 | the token's user is erased |
| 26 | the request carries no token in `sessionToken` or a configured attribute |

With several tokens the first valid one wins. When none is valid, the response carries the code
of the first token tried.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from app.identity.errors import InvalidValueError
from app.identity.identifiers import normalize_login
from app.models import User
from app.rum import xml
from app.rum.attributes import returned_attributes
from app.rum.events import record_event
from app.sessions.service import TokenCheck, TokenFailure, check_token

if TYPE_CHECKING:
    # Imported for annotations only: app.rum.handlers imports this module.
    from app.rum.handlers import CallbackContext

logger = logging.getLogger(__name__)

INVALID_SESSION_MESSAGE: Final = "Invalid session"
FAILURE_CODES: Final = {
    TokenFailure.EXPIRED: "20",
    TokenFailure.REVOKED: "21",
    TokenFailure.UNKNOWN: "22",
    TokenFailure.MALFORMED: "23",
    TokenFailure.USER_DISABLED: "24",
    TokenFailure.USER_ERASED: "25",
}
NO_TOKEN_CODE: Final = "26"  # noqa: S105 (an error code, not a secret)
# Each well-formed token costs one indexed query; DR forwards one or two in practice.
MAX_TOKENS_PER_REQUEST: Final = 10


def token_candidates(
    message: xml.SessionValidationRequest, attribute_names: list[str]
) -> list[str]:
    """Return the tokens to try, in order: `sessionToken`, then configured attribute items.

    Surrounding white space is removed, repeats are dropped, and at most
    `MAX_TOKENS_PER_REQUEST` are returned.
    """
    values: list[str] = []
    if message.session_token is not None:
        values.append(message.session_token)
    allowed = set(attribute_names)
    values.extend(
        item.value
        for item in message.extended_attributes
        if item.name in allowed and item.value is not None
    )
    candidates = list(dict.fromkeys(value.strip() for value in values))
    return candidates[:MAX_TOKENS_PER_REQUEST]


def _hint_mismatches(hint: xml.UserKey | None, user: User) -> list[str]:
    """Return the `userKey` fields of the request that name someone other than `user`."""
    if hint is None:
        return []
    mismatched: list[str] = []
    if hint.login_id and hint.login_id.strip():
        try:
            hinted_login = normalize_login(hint.login_id)
        except InvalidValueError:
            hinted_login = None
        if hinted_login != user.login_normalized:
            mismatched.append("loginID")
    if hint.external_reference_id and hint.external_reference_id.strip():
        if hint.external_reference_id.lower() != user.external_reference_id.lower():
            mismatched.append("externalReferenceID")
    return mismatched


async def handle_session_validation(
    context: CallbackContext, message: xml.SessionValidationRequest
) -> bytes:
    """Return the userKey of the token's owner, or the failure code of the first token tried."""
    settings = context.settings
    site_id = context.site_id(message.site_id)

    first_failure: TokenCheck | None = None
    winner: TokenCheck | None = None
    for token in token_candidates(message, settings.rum_session_token_attributes):
        check = await check_token(context.session, token, settings)
        if check.valid:
            winner = check
            break
        if first_failure is None:
            first_failure = check

    reason: str | None
    event_user: User | None
    if winner is not None and winner.user is not None:
        event_user = winner.user
        mismatched = _hint_mismatches(message.user_key_hint, event_user)
        reason = None
        if mismatched:
            # The values are left out: they may be another shopper's login.
            logger.warning(
                "rum.session_hint_mismatch user_key=%s fields=%s",
                event_user.user_key,
                ",".join(mismatched),
            )
            reason = "user_key_hint_mismatch"
        body = xml.render_session_success(
            event_user.login or "",
            event_user.external_reference_id,
            site_id,
            returned_attributes(event_user, settings),
        )
        outcome = "success"
    elif first_failure is not None and first_failure.failure is not None:
        event_user = first_failure.user
        reason = first_failure.failure.value
        body = xml.render_session_failure(
            FAILURE_CODES[first_failure.failure], INVALID_SESSION_MESSAGE
        )
        outcome = "failure"
    else:
        event_user = None
        reason = "no_token"
        body = xml.render_session_failure(NO_TOKEN_CODE, INVALID_SESSION_MESSAGE)
        outcome = "failure"

    record_event(
        context.session,
        context.request,
        kind="session",
        outcome=outcome,
        reason=reason,
        user_key=event_user.user_key if event_user is not None else None,
        external_reference_id=(
            event_user.external_reference_id if event_user is not None else None
        ),
        site_id=site_id,
    )
    await context.session.commit()
    return body
