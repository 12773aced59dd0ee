"""The small exception hierarchy that the error middleware maps to HTTP statuses."""

from __future__ import annotations


class ApiError(Exception):
    """An error meant for the caller: it carries its status, a message and optional detail."""

    status = 500

    def __init__(
        self, message: str, *, detail: object = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.headers = headers or {}


class BadRequest(ApiError):
    """The request could not be read: malformed JSON, a bad query parameter."""

    status = 400


class Unauthorized(ApiError):
    """No token, or a token that no role knows."""

    status = 401


class Forbidden(ApiError):
    """A known token whose role may not call this route."""

    status = 403


class NotFound(ApiError):
    """The addressed thing does not exist."""

    status = 404


class Conflict(ApiError):
    """The request is valid but the current state refuses it (a spent budget, for one)."""

    status = 409


class RequestTimeout(ApiError):
    """The client did not send the whole body in time."""

    status = 408


class PayloadTooLarge(ApiError):
    """The body exceeds what the route accepts."""

    status = 413


class Unprocessable(ApiError):
    """The body was read but its content is invalid; the message names the field."""

    status = 422


class DependencyUnavailable(ApiError):
    """A dependency (broker, database) did not answer; the caller should retry later."""

    status = 503

    def __init__(self, message: str, *, detail: object = None, retry_after_s: int = 5) -> None:
        super().__init__(message, detail=detail, headers={"Retry-After": str(retry_after_s)})
