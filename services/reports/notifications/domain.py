"""What the notifier decides without I/O: ids and secrets, signatures, bodies, emails, retries.

- Webhooks follow the Standard Webhooks specification: a secret `whsec_<base64>` per endpoint
  (32 random bytes), the headers `webhook-id` (`msg_<hex>`, the delivery's id: the same on
  every retry), `webhook-timestamp` (Unix seconds of the attempt) and `webhook-signature`
  (`v1,` + base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` keyed with the decoded secret).
- The body is rendered once per notification and stored, so every endpoint and every retry
  gets the same bytes.
- Where webhooks may go (SSRF): `http` and `https` only, no credentials in the URL, and no
  private, loopback, link-local or otherwise non-public address unless allowed by setting;
  checked when an endpoint is added and again on every connection (a name that resolves to
  a refused address is refused then, whatever it resolved to before).
- Emails are plain text. Every piece of directory text that reaches a header or a line is
  first made one line (`one_line`): CR, LF and every other character Python or a mail
  program may break a line on (U+2028, U+0085 …) become spaces, so a name can never add a
  header; addresses must be plain ASCII addr-specs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import math
import random
import secrets
import socket
import unicodedata
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr
from typing import Final, Literal, get_args

import orjson
from yarl import URL

from libs.events.bounds import text_problem
from libs.events.vocabulary import BUDGET_LIMIT_REACHED, BUDGET_NOTIFICATIONS, BUDGET_WARNING

Channel = Literal["webhook", "email"]
CHANNELS: Final[tuple[Channel, ...]] = get_args(Channel)
Audience = Literal["user", "admin"]
Status = Literal["pending", "delivered", "failed"]
#: Why an attempt did not deliver (`tollgate_notification_attempt_errors_total{cause}`).
DeliveryCause = Literal[
    "timeout",
    "connect",
    "refused_address",
    "transport",
    "http_3xx",
    "http_4xx",
    "http_5xx",
    "smtp_temporary",
    "smtp_permanent",
    "invalid",
]
DELIVERY_CAUSES: Final[tuple[DeliveryCause, ...]] = get_args(DeliveryCause)
STATUSES: Final[tuple[Status, ...]] = get_args(Status)

WARNING: Final = BUDGET_WARNING
LIMIT_REACHED: Final = BUDGET_LIMIT_REACHED
TEST: Final = "webhook.test"
BUDGET_TYPES: Final = BUDGET_NOTIFICATIONS

SECRET_PREFIX: Final = "whsec_"  # noqa: S105  # the format's prefix, not a secret
SECRET_BYTES: Final = 32
WEBHOOK_ID_PREFIX: Final = "wh_"
MESSAGE_ID_PREFIX: Final = "msg_"
MAX_URL_LENGTH: Final = 2048
MAX_DESCRIPTION_LENGTH: Final = 256
#: Roles whose holders get the admin version of every budget notification (as in Coder).
ADMIN_ROLES: Final = frozenset({"owner", "user-admin"})


# -- ids, secrets and signatures ---------------------------------------------------------------


def new_webhook_id() -> str:
    """A new endpoint id: `wh_` and 16 hex digits."""
    return WEBHOOK_ID_PREFIX + secrets.token_hex(8)


def new_secret() -> str:
    """A new signing secret: `whsec_` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret: its base64 part, decoded."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a signing secret starts with {SECRET_PREFIX!r}")
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)


def message_id(delivery_id: uuid.UUID) -> str:
    """The `webhook-id` of a delivery: `msg_` and its id's hex (never a `.`)."""
    return MESSAGE_ID_PREFIX + delivery_id.hex


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,` and the base64 HMAC-SHA256 of id.timestamp.body."""
    signed = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def webhook_headers(
    secret: str,
    delivery_id: uuid.UUID,
    body: bytes,
    now_s: float,
    *,
    previous_secret: str | None = None,
) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt. While a rotated secret still signs,
    the signature header holds both signatures, space-separated (the new one first), as the
    specification allows, so a receiver that knows either secret verifies the delivery."""
    msg_id = message_id(delivery_id)
    timestamp = int(now_s)
    signatures = [sign(secret, msg_id, timestamp, body)]
    if previous_secret is not None and previous_secret != secret:
        signatures.append(sign(previous_secret, msg_id, timestamp, body))
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signatures),
    }


# -- bodies ------------------------------------------------------------------------------------


def rfc3339(at: datetime) -> str:
    """UTC, to the second, with `Z`."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def webhook_data(
    facts: Mapping[str, object], *, username: str | None, group_name: str | None
) -> dict[str, object]:
    """The `data` of a budget notification, in the contract's order."""
    return {
        "user_id": facts["user_id"],
        "username": username,
        "org_id": facts.get("org_id"),
        "threshold_percent": facts["threshold_percent"],
        "limit_micros": facts["limit_micros"],
        "spent_micros": facts["spent_micros"],
        "period": facts["period"],
        "period_start": facts["period_start"],
        "period_end": facts["period_end"],
        "source": facts["source"],
        "group_id": facts.get("group_id"),
        "group_name": group_name,
    }


def webhook_body(kind: str, created_at: datetime, data: Mapping[str, object]) -> str:
    """`{"type", "timestamp", "data"}` as compact JSON: the exact bytes signed and sent."""
    return orjson.dumps({"type": kind, "timestamp": rfc3339(created_at), "data": data}).decode()


def trial_body(webhook_id: str, created_at: datetime) -> str:
    """The body of a test event sent to one endpoint."""
    return webhook_body(
        TEST,
        created_at,
        {"webhook_id": webhook_id, "message": "A test event from Tollgate: this endpoint works."},
    )


# -- retries -----------------------------------------------------------------------------------


def backoff_s(attempts: int, *, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Seconds before the next try after `attempts` failed ones: exponential, equal jitter."""
    ceiling = min(cap_s, base_s * 2.0 ** max(0, attempts - 1))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def retry_after_s(header: str | None, *, cap_s: float) -> float | None:
    """A `Retry-After` in seconds (delta form only), capped; None when absent or unreadable."""
    if header is None:
        return None
    try:
        seconds = float(header.strip())
    except ValueError:
        return None
    if math.isnan(seconds) or seconds < 0:
        return None
    return min(seconds, cap_s)


# -- where webhooks may go ---------------------------------------------------------------------

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses a webhook may connect to."""

    allow_private: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()

    def refusal(self, address: IPAddress) -> str | None:
        """Why connecting to `address` is refused, or None when it is allowed."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_unspecified or address.is_multicast:
            return f"{address} is not a unicast address"
        if any(address in network for network in self.allowed_networks):
            return None
        if self.allow_private or address.is_global:
            return None
        kind = (
            "a loopback"
            if address.is_loopback
            else "a link-local"
            if address.is_link_local
            else "a private"
            if address.is_private
            else "a non-public"
        )
        return (
            f"{address} is {kind} address; webhooks go to public addresses only "
            "(TOLLGATE_WEBHOOK_ALLOW_PRIVATE, TOLLGATE_WEBHOOK_ALLOW_NETWORKS)"
        )


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDR networks (`10.1.0.0/16`, `fd00::/8`, a bare address); ValueError names a bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a network: {exc}") from exc
    return tuple(networks)


_INET_ATON_CHARS: Final = frozenset("0123456789abcdefx.")


def ip_literal(host: str) -> IPAddress | None:
    """The address a URL's host spells, or None for a name.

    Besides the usual forms this knows the shorthands resolvers accept for IPv4
    (`2130706433`, `0x7f.1`, `127.1`), so they cannot pass for names.
    """
    bare = host.strip("[]").lower()
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    if bare and set(bare) <= _INET_ATON_CHARS and bare[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(bare))
        except OSError:
            return None
    return None


def check_webhook_url(raw: str, policy: AddressPolicy) -> str:
    """The URL as it will be called, or ValueError saying what is wrong with it."""
    if not raw or len(raw) > MAX_URL_LENGTH:
        raise ValueError(f"must be 1 to {MAX_URL_LENGTH} characters")
    problem = text_problem(raw)
    if problem is not None or any(ch.isspace() for ch in raw):
        raise ValueError(problem or "contains white space")
    try:
        url = URL(raw)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a URL: {exc}") from exc
    if url.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not url.host:
        raise ValueError("has no host")
    if url.user is not None or url.password is not None:
        raise ValueError("must not hold credentials; authenticate deliveries by their signature")
    if url.fragment:
        raise ValueError("must not have a #fragment")
    try:
        port = url.port
    except ValueError as exc:
        raise ValueError(f"has an invalid port: {exc}") from exc
    if port is not None and not 1 <= port <= 65535:
        raise ValueError("has an invalid port")
    literal = ip_literal(url.host)
    if literal is not None:
        refusal = policy.refusal(literal)
        if refusal is not None:
            raise ValueError(refusal)
    elif not policy.allow_private and (
        url.host.lower() == "localhost" or url.host.lower().endswith(".localhost")
    ):
        raise ValueError(
            "localhost is a loopback address; webhooks go to public addresses only "
            "(TOLLGATE_WEBHOOK_ALLOW_PRIVATE)"
        )
    return str(url)


def check_description(raw: str) -> str:
    """A description admins can read back: storable text, at most 256 characters."""
    if len(raw) > MAX_DESCRIPTION_LENGTH:
        raise ValueError(f"at most {MAX_DESCRIPTION_LENGTH} characters")
    problem = text_problem(raw)
    if problem is not None:
        raise ValueError(problem)
    return raw


# -- emails ------------------------------------------------------------------------------------

# Characters a mail program, Python's `str.splitlines` or a terminal may treat as a line break.
_LINE_BREAKS: Final = frozenset("\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029")


def one_line(text: str, *, max_length: int = 200) -> str:
    """Directory text made safe for a header or a line: one line, no control characters."""
    out = []
    for ch in text:
        if ch in _LINE_BREAKS or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            out.append(" ")
        else:
            out.append(ch)
    flat = " ".join("".join(out).split())
    return flat if len(flat) <= max_length else flat[: max_length - 1] + "…"


def check_address(raw: str) -> str | None:
    """A plain ASCII addr-spec (`name@example.com`), or None when `raw` is not one."""
    address = raw.strip()
    if not address or len(address) > 254 or not address.isascii():
        return None
    if any(ch.isspace() or ord(ch) < 0x20 or ch in ',;<>()[]"\\' for ch in address):
        return None
    local, sep, domain = address.rpartition("@")
    if not sep or not local or "." not in domain or domain.startswith((".", "-")):
        return None
    if parseaddr(address) != ("", address):
        return None
    try:
        Address(addr_spec=address)
    except (ValueError, IndexError):
        return None
    return address


@dataclass(frozen=True)
class Person:
    """Who a notification is about, or an admin, as the directory knows them."""

    user_id: str
    username: str
    name: str
    email: str


@dataclass(frozen=True)
class EmailDraft:
    """One email of a notification: its recipient, its audience and the whole message."""

    delivery_id: uuid.UUID
    recipient: str
    audience: Audience
    message: str


_ADJECTIVE: Final = {"day": "daily", "week": "weekly", "month": "monthly"}
_SOURCE: Final = {
    "user": "a per-user limit (an override for this user)",
    "group": "the limit of group {group}",
    "default": "the default limit",
}


def dollars(micros: int) -> str:
    """Micro-dollars as `$1,234.56` (a non-zero amount under a cent with 4 decimals)."""
    value = Decimal(micros) / Decimal(1_000_000)
    if micros and abs(micros) < 10_000:
        return f"${value.quantize(Decimal('0.0001'), rounding=ROUND_HALF_UP)}"
    return f"${value.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}"


def _day(text: str) -> str:
    at = datetime.fromisoformat(text).astimezone(UTC)
    return f"{at:%B} {at.day}, {at.year} {at:%H:%M} UTC"


@dataclass(frozen=True)
class EmailContext:
    """What every email of one notification is built from."""

    kind: str
    facts: Mapping[str, object]
    user: Person | None
    group_name: str | None
    console_url: str | None

    @property
    def adjective(self) -> str:
        """`daily`, `weekly` or `monthly`."""
        return _ADJECTIVE.get(str(self.facts["period"]), str(self.facts["period"]))

    @property
    def who(self) -> str:
        """The user's username (one line), or their id when the directory has no entry."""
        if self.user is not None and self.user.username:
            return one_line(self.user.username, max_length=80)
        return one_line(str(self.facts["user_id"]), max_length=80)

    def source(self) -> str:
        """Where the limit comes from, in words."""
        source = str(self.facts["source"])
        group = self.group_name or str(self.facts.get("group_id") or "")
        text = _SOURCE.get(source, source)
        return text.format(group=f"“{one_line(group, max_length=80)}”")

    def figures(self) -> list[str]:
        """The lines with the numbers, common to every version."""
        facts = self.facts
        limit, spent = int(str(facts["limit_micros"])), int(str(facts["spent_micros"]))
        used = spent * 100 // limit if limit else 0
        lines = [
            f"Limit: {dollars(limit)} per {facts['period']}, from {self.source()}",
            f"Spent: {dollars(spent)} ({used}% of the limit)",
            f"Period: {_day(str(facts['period_start']))} to {_day(str(facts['period_end']))}",
        ]
        if self.group_name or facts.get("group_id"):
            group = self.group_name or str(facts.get("group_id"))
            lines.append(f"Effective group: {one_line(group, max_length=80)}")
        return lines


def _user_text(ctx: EmailContext) -> tuple[str, list[str]]:
    facts = ctx.facts
    limit = dollars(int(str(facts["limit_micros"])))
    reset = _day(str(facts["period_end"]))
    greeting = ctx.user.name if ctx.user is not None and ctx.user.name else ctx.who
    if ctx.kind == WARNING:
        subject = (
            f"You have used {facts['threshold_percent']}% of your {ctx.adjective} AI spend limit"
        )
        lead = [
            (
                f"Your AI chat spend has passed {facts['threshold_percent']}% of your "
                f"{ctx.adjective} limit of {limit}."
            ),
            (
                f"Once it reaches {limit}, chat messages are refused until the limit resets "
                f"on {reset}."
            ),
        ]
    else:
        subject = f"You have reached your {ctx.adjective} AI spend limit"
        lead = [
            f"Your AI chat spend has reached your {ctx.adjective} limit of {limit}.",
            f"Further chat messages are refused until the limit resets on {reset}.",
        ]
    body = [f"Hello {one_line(greeting, max_length=80)},", "", *lead, "", *ctx.figures()]
    return subject, body


def _admin_text(ctx: EmailContext) -> tuple[str, list[str]]:
    facts = ctx.facts
    limit = dollars(int(str(facts["limit_micros"])))
    reset = _day(str(facts["period_end"]))
    named = ctx.who
    if ctx.user is not None and ctx.user.name:
        named = f"{one_line(ctx.user.name, max_length=80)} (@{ctx.who})"
    if ctx.kind == WARNING:
        subject = (
            f"{ctx.who} has used {facts['threshold_percent']}% of their {ctx.adjective} "
            "AI spend limit"
        )
        lead = [
            (
                f"{named} has used {facts['threshold_percent']}% or more of their "
                f"{ctx.adjective} AI spend limit of {limit}."
            ),
        ]
    else:
        subject = f"{ctx.who} has reached their {ctx.adjective} AI spend limit"
        lead = [
            f"{named} has reached their {ctx.adjective} AI spend limit of {limit}.",
            (
                f"Their chat messages are refused until the limit resets on {reset}, unless "
                "their limit is raised."
            ),
        ]
    if facts["source"] == "user":
        lead.append("This limit is a per-user override.")
    body = ["Hello,", "", *lead, "", f"User id: {one_line(str(facts['user_id']))}"]
    body += ctx.figures()
    if ctx.console_url:
        base = ctx.console_url.rstrip("/")
        body += ["", f"Manage this user's budget: {base}/console/users/{facts['user_id']}"]
    return subject, body


def render_email(
    ctx: EmailContext,
    *,
    audience: Audience,
    recipient: str,
    sender: str,
    delivery_id: uuid.UUID,
    now: datetime,
) -> str:
    """The whole message (headers and body, CRLF), as sent on every attempt."""
    subject, body = (_user_text if audience == "user" else _admin_text)(ctx)
    footer = [
        "",
        "--",
        "Sent by Tollgate because of your organisation's AI spend limits.",
    ]
    message = EmailMessage(policy=SMTP)
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = one_line(subject, max_length=250)
    message["Date"] = format_datetime(now.astimezone(UTC))
    message["Message-ID"] = f"<{message_id(delivery_id)}@tollgate>"
    message["Auto-Submitted"] = "auto-generated"
    message["X-Tollgate-Notification"] = ctx.kind
    message["X-Tollgate-User-Id"] = one_line(str(ctx.facts["user_id"]), max_length=250)
    message.set_content("\n".join([*body, *footer]) + "\n", charset="utf-8")
    return message.as_string()


def recipients(
    user: Person | None,
    admins: Sequence[Person],
    extra_admin_emails: Sequence[str],
) -> list[tuple[str, Audience]]:
    """Who gets which version: the user, then every admin but the user (each address once)."""
    chosen: list[tuple[str, Audience]] = []
    seen: set[str] = set()

    def add(raw: str, audience: Audience) -> None:
        address = check_address(raw)
        if address is None or address.lower() in seen:
            return
        seen.add(address.lower())
        chosen.append((address, audience))

    if user is not None:
        add(user.email, "user")
    for admin in admins:
        if user is None or admin.user_id != user.user_id:
            add(admin.email, "admin")
    for address in extra_admin_emails:
        add(address, "admin")
    return chosen
