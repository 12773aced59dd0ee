"""Portal token API: mint a token for one user (emitter or admin), revoke a user's tokens (admin).

The platform calls `POST /api/v1/portal/tokens` with its emitter token and hands the answer to
the user's browser; the token then reads that user's limit status and costs and opens
`/console/me`. Rules for what a token may read are in `libs.service.web` and
`libs.service.portal`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from libs.service.errors import DependencyUnavailable
from libs.service.portal import (
    DEFAULT_TTL_S,
    MAX_TTL_S,
    MAX_USER_ID_LENGTH,
    MIN_TTL_S,
    PortalAuthority,
    valid_user_id,
)
from libs.service.routes import Role, Route
from libs.service.web import PORTAL_KEY, json_response, read_model

log = structlog.get_logger(__name__)


def _user_id(value: str) -> str:
    if not valid_user_id(value):
        raise ValueError("must be 1 to 128 characters without control characters")
    return value


class PortalTokenRequest(BaseModel):
    """`POST /api/v1/portal/tokens`."""

    model_config = ConfigDict(extra="forbid", strict=True)
    user_id: str = Field(min_length=1, max_length=MAX_USER_ID_LENGTH)
    ttl_seconds: Annotated[int, Field(ge=MIN_TTL_S, le=MAX_TTL_S)] = DEFAULT_TTL_S

    _check_user = field_validator("user_id")(_user_id)


class PortalToken(BaseModel):
    """A minted token; show it only to its user."""

    token: str
    user_id: str
    expires_at: datetime


class PortalRevokeRequest(BaseModel):
    """`POST /api/v1/portal/tokens/revoke`."""

    model_config = ConfigDict(extra="forbid", strict=True)
    user_id: str = Field(min_length=1, max_length=MAX_USER_ID_LENGTH)

    _check_user = field_validator("user_id")(_user_id)


def _authority(request: web.Request) -> PortalAuthority:
    authority = request.app.get(PORTAL_KEY)
    if authority is None:
        raise DependencyUnavailable(
            "portal tokens are not enabled: set TOLLGATE_PORTAL_SECRET", retry_after_s=60
        )
    return authority


async def mint_token(request: web.Request) -> web.Response:
    """A token that reads only this user's status and costs, for `ttl_seconds`."""
    body = await read_model(request, PortalTokenRequest)
    token, claims = await _authority(request).mint(body.user_id, body.ttl_seconds)
    expires_at = datetime.fromtimestamp(claims.expires_at, UTC)
    log.info("portal_token_minted", user_id=body.user_id, expires_at=expires_at.isoformat())
    response = json_response(
        {"token": token, "user_id": body.user_id, "expires_at": expires_at}, status=201
    )
    response.headers["Cache-Control"] = "no-store"
    return response


async def revoke_tokens(request: web.Request) -> web.Response:
    """Every token of this user minted so far stops working, on every replica within a second."""
    body = await read_model(request, PortalRevokeRequest)
    generation = await _authority(request).revoke(body.user_id)
    log.info("portal_tokens_revoked", user_id=body.user_id, generation=generation)
    return web.Response(status=204)


#: Minting and revoking portal tokens.
PORTAL_ROUTES = (
    Route(
        "POST",
        "/api/v1/portal/tokens",
        mint_token,
        "Mint a short-lived token that reads one user's own status and costs",
        request=PortalTokenRequest,
        responses={201: PortalToken, 503: None},
        tag="portal",
    ),
    Route(
        "POST",
        "/api/v1/portal/tokens/revoke",
        revoke_tokens,
        "Invalidate every portal token of a user minted so far",
        role=Role.ADMIN,
        request=PortalRevokeRequest,
        responses={204: None, 503: None},
        tag="portal",
    ),
)
