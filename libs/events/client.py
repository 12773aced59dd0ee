"""The HTTP client other services use to emit events and check spend limits.

Two rules live here so that no caller has to get them right alone:
emitting retries transient failures with the very same event ids (ingest
deduplicates on them, so a retry can never double-count), and a limit
check that errors or times out allows the message (fail-open) and says
so in a metric. A check the limits service refuses (a wrong token or URL)
also allows the message, since blocking chat on a configuration mistake
would be worse, but it is no passing failure: it is counted under its own
reason and logged as an error once per cause, so an alert can name it.
"""

import asyncio
import random
import threading
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Final, Literal, Self
from urllib.parse import quote

import aiohttp
import orjson
import structlog
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from pydantic import TypeAdapter, ValidationError

from libs.events.codec import EventValidationError, parse_event
from libs.events.limits import (
    LIMIT_CHECK_PATH,
    LIMIT_EXCEEDED_MESSAGE,
    LIMIT_STATUS_PATH,
    LimitStatus,
)
from libs.events.models import Envelope
from libs.events.vocabulary import LimitSource, Period

__all__ = [
    "EMIT_PATH",
    "LIMIT_CHECK_PATH",
    "LIMIT_EXCEEDED_MESSAGE",
    "MAX_EMIT_BATCH",
    "MISCONFIGURATION_REASONS",
    "TRANSIENT_REASONS",
    "EmitError",
    "EmitResult",
    "FailOpenReason",
    "LimitDecision",
    "LimitStatus",
    "LimitStatusError",
    "Rejection",
    "TollgateClient",
]

EMIT_PATH: Final = "/api/v1/events"
# Ingest refuses larger batches.
MAX_EMIT_BATCH: Final = 1000

FailOpenReason = Literal[
    "timeout",
    "error",
    "status",
    "unauthorized",
    "forbidden",
    "not_found",
    "rejected",
    "invalid_answer",
]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event ingest refused; permanent rejections will fail the same way again.

    `id` is None only when the rejected element carried no string id. `reason` is the
    code to match on (a `RejectReason` value; a string, so that codes added to a newer ingest
    still read), None only from an ingest that sends none.
    """

    id: str | None
    message: str
    permanent: bool = True
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class EmitResult:
    """Ids ingest accepted (acknowledged by the broker) and the events it rejected."""

    accepted: list[str]
    rejected: list[Rejection]


class EmitError(Exception):
    """Ingest could not take a batch; `partial` holds what earlier batches achieved."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.partial = EmitResult([], [])


class LimitStatusError(Exception):
    """No limit status: limits was unreachable, refused the request or answered something else."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class LimitDecision:
    """Whether a user may send a chat message, with the limit fields when the service answered."""

    allowed: bool
    fail_open: bool = False
    limited: bool | None = None
    limit_micros: int | None = None
    spent_micros: int | None = None
    remaining_micros: int | None = None
    period: Period | None = None
    period_start: datetime | None = None
    resets_at: datetime | None = None
    source: LimitSource | None = None
    group_id: str | None = None
    #: The organisation whose limit applied and whose spend counted (null: across them all).
    org_id: str | None = None
    message: str | None = None


_EMIT_RESULT: Final = TypeAdapter(EmitResult)
_LIMIT_DECISION: Final = TypeAdapter(LimitDecision)

#: Failures of the moment: the limits service is slow, unreachable or failing (5xx, 408, 429).
TRANSIENT_REASONS: Final[tuple[FailOpenReason, ...]] = ("timeout", "error", "status")
#: Answers that will not change until someone fixes the caller's configuration.
MISCONFIGURATION_REASONS: Final[tuple[FailOpenReason, ...]] = (
    "unauthorized",
    "forbidden",
    "not_found",
    "rejected",
    "invalid_answer",
)
_FAILOPEN_REASONS: Final = TRANSIENT_REASONS + MISCONFIGURATION_REASONS
# What to fix, for the one error log each misconfiguration gets.
_MISCONFIGURATION_HINTS: Final[dict[FailOpenReason, str]] = {
    "unauthorized": "the limits service does not accept this client's token",
    "forbidden": "this client's token may not check limits (an emitter or admin token may)",
    "not_found": "limits_url does not lead to a limits service (the check route is not there)",
    "rejected": "the limits service refuses the check requests this client sends",
    "invalid_answer": "limits_url answers 200 with something that is not a limit decision",
}
# One counter per registry: several clients may share a registry, and a
# collector can be registered only once. Weak keys let test registries go.
_failopen_counters: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = (
    weakref.WeakKeyDictionary()
)
# Clients may be built from worker threads as well as the event loop.
_failopen_lock = threading.Lock()


def failopen_counter(registry: CollectorRegistry) -> Counter:
    """The `tollgate_limit_check_failopen_total{reason}` counter on `registry`, created once."""
    with _failopen_lock:
        counter = _failopen_counters.get(registry)
        if counter is None:
            counter = Counter(
                "tollgate_limit_check_failopen_total",
                "Limit checks that allowed the message without a limit decision, by reason.",
                ["reason"],
                registry=registry,
            )
            # Zero-valued series exist from the start, so alerts on rate() work
            # before the first failure.
            for reason in _FAILOPEN_REASONS:
                counter.labels(reason=reason)
            _failopen_counters[registry] = counter
        return counter


class TollgateClient:
    """Emits events to ingest and checks limits; use as `async with TollgateClient(...) as c`.

    Without a `session` the client opens its own on first use and closes it
    on exit; a session passed in belongs to the caller.
    """

    def __init__(
        self,
        *,
        ingest_url: str | None,
        limits_url: str | None,
        token: str,
        session: aiohttp.ClientSession | None = None,
        registry: CollectorRegistry | None = None,
        check_timeout: float = 0.05,
        emit_timeout: float = 10.0,
        max_attempts: int = 5,
        backoff_base: float = 0.1,
        backoff_max: float = 5.0,
        max_retry_after: float = 60.0,
        batch_size: int = MAX_EMIT_BATCH,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 1 <= batch_size <= MAX_EMIT_BATCH:
            raise ValueError(f"batch_size must be between 1 and {MAX_EMIT_BATCH}")
        self._emit_url = f"{ingest_url.rstrip('/')}{EMIT_PATH}" if ingest_url else None
        self._check_url = f"{limits_url.rstrip('/')}{LIMIT_CHECK_PATH}" if limits_url else None
        self._limits_url = limits_url.rstrip("/") if limits_url else None
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self._session = session
        self._owns_session = session is None
        self._failopen = failopen_counter(REGISTRY if registry is None else registry)
        # Misconfigurations already logged as errors: each (reason, status) once per client.
        self._misconfigurations_logged: set[tuple[FailOpenReason, int | None]] = set()
        self._check_timeout = check_timeout
        self._emit_timeout = emit_timeout
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._max_retry_after = max_retry_after
        self._batch_size = batch_size
        self._sleep = sleep

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if the client opened it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def emit(self, events: Sequence[Envelope | Mapping[str, Any]]) -> EmitResult:
        """Send events to ingest in batches, retrying transient failures; raise `EmitError`.

        Each event is a model (`ChatUsageRecorded(...)`) or a plain dict in the wire shape
        (`{"id", "type", "occurred_at", "user_id", "data"}`). A dict is validated here by the
        same model and rules ingest applies (`parse_event`); one that is not a valid event is
        never sent and comes back in `rejected` with the message ingest would have given,
        while the valid ones go on, as in one batch sent to ingest.
        """
        if self._emit_url is None:
            raise RuntimeError("emit needs the client to be built with an ingest_url")
        accepted: list[str] = []
        rejected: list[Rejection] = []
        valid: list[Envelope] = []
        for event in events:
            if isinstance(event, Envelope):
                valid.append(event)
                continue
            try:
                valid.append(parse_event(dict(event) if isinstance(event, Mapping) else event))
            except EventValidationError as exc:
                rejected.append(
                    Rejection(exc.event_id, exc.message, permanent=True, reason=exc.code)
                )
        for start in range(0, len(valid), self._batch_size):
            chunk = valid[start : start + self._batch_size]
            # Serialised once, so every retry carries byte-identical events and ids.
            body = orjson.dumps({"events": [event.model_dump(mode="json") for event in chunk]})
            try:
                result = await self._post_batch(self._emit_url, body)
            except EmitError as exc:
                exc.partial = EmitResult(accepted, rejected)
                raise
            accepted.extend(result.accepted)
            rejected.extend(result.rejected)
        return EmitResult(accepted, rejected)

    async def _post_batch(self, url: str, body: bytes) -> EmitResult:
        session = self._http()
        failure = ""
        status: int | None = None
        for attempt in range(1, self._max_attempts + 1):
            retry_after: float | None = None
            try:
                async with (
                    asyncio.timeout(self._emit_timeout),
                    session.post(url, data=body, headers=self._headers) as response,
                ):
                    status = response.status
                    payload = await response.read()
                    retry_after_header = response.headers.get("Retry-After")
            except TimeoutError:
                status = None
                failure = f"no answer within {self._emit_timeout}s"
            except (aiohttp.ClientError, OSError) as exc:
                status = None
                failure = f"transport error: {exc!r}"
            else:
                if 200 <= status < 300:
                    return _parse_emit_result(payload, status)
                if not _is_transient(status):
                    # A batch whose events were all invalid may still come back in the result shape.
                    try:
                        return _EMIT_RESULT.validate_json(payload)
                    except ValidationError:
                        raise EmitError(
                            f"ingest answered {status}: {_error_message(payload)}", status=status
                        ) from None
                failure = f"ingest answered {status}"
                retry_after = _parse_retry_after(retry_after_header)
            if attempt < self._max_attempts:
                delay = self._backoff(attempt, retry_after)
                log.warning("emit_retry", attempt=attempt, reason=failure, delay_s=delay)
                await self._sleep(delay)
        raise EmitError(
            f"ingest failed {self._max_attempts} attempts, last: {failure}", status=status
        )

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        ceiling = min(self._backoff_max, self._backoff_base * 2.0 ** (attempt - 1))
        # Half fixed, half random: the delay still grows, while replicas spread out.
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not cryptography
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._max_retry_after))
        return delay

    async def check_limit(self, user_id: str, *, org_id: str | None = None) -> LimitDecision:
        """Ask the limits service whether `user_id` may chat; allow on any failure (fail-open).

        `org_id` is the organisation the chat belongs to: group limits are then that
        organisation's, against its spend (see the limits service); without it, every group.

        Timeouts, transport errors and 5xx are counted and logged as warnings; answers that
        mean the client is misconfigured (401, 403, 404, other refusals, a 200 that is not a
        decision) are counted under their own reason and logged as errors once per cause.
        """
        if self._check_url is None:
            raise RuntimeError("check_limit needs the client to be built with a limits_url")
        body = orjson.dumps(
            {"user_id": user_id} if org_id is None else {"user_id": user_id, "org_id": org_id}
        )
        try:
            async with (
                asyncio.timeout(self._check_timeout),
                self._http().post(self._check_url, data=body, headers=self._headers) as response,
            ):
                status = response.status
                payload = await response.read()
        except TimeoutError:
            return self._fail_open("timeout", user_id)
        except Exception as exc:
            # Any failure of the check itself must not block a user's message.
            return self._fail_open("error", user_id, error=repr(exc))
        if status == 200:
            if not _is_decision(payload, allowed=True):
                return self._misconfigured("invalid_answer", status, payload)
            return _decision(payload, allowed=True)
        if status == 409:
            return _decision(payload, allowed=False)
        reason = _failopen_reason(status)
        if reason in MISCONFIGURATION_REASONS:
            return self._misconfigured(reason, status, payload)
        return self._fail_open(reason, user_id, status=status)

    async def limit_status(self, user_id: str, *, org_id: str | None = None) -> LimitStatus:
        """The user's limit, spend and period now, for showing them; raise `LimitStatusError`.

        Unlike `check_limit` this never fails open: a caller showing a status wants to know
        that there is none. `org_id` resolves group limits as a check's `org_id` does.
        """
        if self._limits_url is None:
            raise RuntimeError("limit_status needs the client to be built with a limits_url")
        try:
            path = LIMIT_STATUS_PATH.format(user_id=quote(user_id, safe=""))
        except UnicodeEncodeError as exc:
            raise LimitStatusError(f"user_id: not valid text ({exc.reason})") from None
        url = f"{self._limits_url}{path}"
        params = {} if org_id is None else {"org_id": org_id}
        try:
            async with (
                asyncio.timeout(self._emit_timeout),
                self._http().get(url, params=params, headers=self._headers) as response,
            ):
                status = response.status
                payload = await response.read()
        except TimeoutError:
            raise LimitStatusError(f"limits gave no status within {self._emit_timeout}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise LimitStatusError(f"cannot reach limits: {exc!r}") from exc
        if status != 200:
            raise LimitStatusError(
                f"limits answered {status}: {_error_message(payload)}", status=status
            )
        try:
            return LimitStatus.model_validate_json(payload)
        except ValidationError:
            raise LimitStatusError(
                f"limits answered {status} with a body that is not a limit status", status=status
            ) from None

    def _fail_open(self, reason: FailOpenReason, user_id: str, **details: object) -> LimitDecision:
        self._failopen.labels(reason=reason).inc()
        log.warning("limit_check_failed_open", reason=reason, user_id=user_id, **details)
        return LimitDecision(allowed=True, fail_open=True)

    def _misconfigured(self, reason: FailOpenReason, status: int, payload: bytes) -> LimitDecision:
        self._failopen.labels(reason=reason).inc()
        cause = (reason, status)
        if cause not in self._misconfigurations_logged:
            self._misconfigurations_logged.add(cause)
            # Once per cause: a wrong token fails every check, and one error says it all.
            log.error(
                "limit_check_misconfigured",
                reason=reason,
                status=status,
                url=self._check_url,
                answer=_error_message(payload),
                hint=_MISCONFIGURATION_HINTS[reason],
                consequence="every message is allowed without a limit check until this is fixed",
            )
        return LimitDecision(allowed=True, fail_open=True)


def _failopen_reason(status: int) -> FailOpenReason:
    """The reason a check answered with `status` (neither 200 nor 409) counts under."""
    if status == 401:
        return "unauthorized"
    if status == 403:
        return "forbidden"
    # 405 and 410 also mean that the URL does not lead to the check route.
    if status in {404, 405, 410}:
        return "not_found"
    if 400 <= status < 500 and not _is_transient(status):
        return "rejected"
    return "status"


def _is_transient(status: int) -> bool:
    return status >= 500 or status in {408, 425, 429}


def _parse_emit_result(payload: bytes, status: int) -> EmitResult:
    try:
        return _EMIT_RESULT.validate_json(payload)
    except ValidationError:
        raise EmitError(
            f"ingest answered {status} with a body that is not an emit result", status=status
        ) from None


def _is_decision(payload: bytes, *, allowed: bool) -> bool:
    # A server that is not limits (a catch-all web page, another API) must not pass for a yes.
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and body.get("allowed") is allowed


def _decision(payload: bytes, *, allowed: bool) -> LimitDecision:
    # The status code decides; the body only adds detail, and a broken body loses just that.
    try:
        body = orjson.loads(payload)
        decision = (
            _LIMIT_DECISION.validate_python({**body, "allowed": allowed, "fail_open": False})
            if isinstance(body, dict)
            else LimitDecision(allowed=allowed)
        )
    except (orjson.JSONDecodeError, ValidationError):
        decision = LimitDecision(allowed=allowed)
    if not allowed and decision.message is None:
        decision = replace(decision, message=LIMIT_EXCEEDED_MESSAGE)
    return decision


def _error_message(payload: bytes) -> str:
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload[:200].decode(errors="replace")
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return payload[:200].decode(errors="replace")


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
