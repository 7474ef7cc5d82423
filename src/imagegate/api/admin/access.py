"""Who may use the admin API: the bearer of the admin token.

The token is the ``admin_token`` setting (``IMAGEGATE_ADMIN_TOKEN``) or, when that is unset, the
one ``imagegate admin token --rotate`` stored (as a hash). With neither, the admin API is off and
answers 404 everywhere, as if it did not exist.
"""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from imagegate.api.services import Services
from imagegate.exceptions import AuthenticationError, RequestNotFoundError
from imagegate.jobs.keys import hash_key

SCHEME_NAME = "adminToken"
OFF_MESSAGE = "Not Found"

bearer = HTTPBearer(
    auto_error=False,
    scheme_name=SCHEME_NAME,
    description="The admin token: the `admin_token` setting, or `imagegate admin token --rotate`",
)


def _same(presented: str, expected: str) -> bool:
    # Constant time: how much of a guess matched must not show in the answer's timing.
    return hmac.compare_digest(presented.encode(), expected.encode())


def check_admin(services: Services, presented: str | None) -> None:
    configured = services.settings.admin_token
    stored = None if configured else services.stored_admin_token()
    if configured is None and stored is None:
        raise RequestNotFoundError(OFF_MESSAGE)
    if not presented:
        raise AuthenticationError("Missing admin token: send it as Authorization: Bearer <admin token>")
    if configured is not None:
        valid = _same(presented, configured)
    else:
        assert stored is not None
        valid = _same(hash_key(presented), stored.token_hash)
    if not valid:
        raise AuthenticationError("Invalid admin token")


def require_admin(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    check_admin(request.app.state.services, credentials.credentials if credentials else None)
