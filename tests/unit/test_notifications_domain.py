"""The notifier's rules without I/O: signatures, bodies, retries, where webhooks may go, emails."""

from __future__ import annotations

import base64
import email
import ipaddress
import random
import time
import uuid
from datetime import UTC, datetime
from email.policy import default as default_policy

import orjson
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from services.reports.notifications.domain import (
    AddressPolicy,
    EmailContext,
    Person,
    backoff_s,
    check_address,
    check_webhook_url,
    dollars,
    message_id,
    new_secret,
    one_line,
    parse_networks,
    recipients,
    render_email,
    retry_after_s,
    webhook_body,
    webhook_data,
    webhook_headers,
)
from services.reports.notifications.senders import SmtpServer

FACTS: dict[str, object] = {
    "user_id": "u-1",
    "org_id": None,
    "threshold_percent": 85,
    "limit_micros": 1_000_000,
    "spent_micros": 900_000,
    "period": "month",
    "period_start": "2026-11-01T00:00:00Z",
    "period_end": "2026-12-01T00:00:00Z",
    "source": "default",
    "group_id": None,
}


def test_a_standard_webhooks_verifier_accepts_the_signature() -> None:
    """The reference `standardwebhooks` library verifies what we sign, and refuses a changed body."""
    secret = new_secret()
    body = webhook_body(
        "budget.warning", datetime.now(UTC), webhook_data(FACTS, username="ann", group_name=None)
    )
    headers = webhook_headers(secret, uuid.uuid4(), body.encode(), time.time())
    verified = Webhook(secret).verify(body, headers)
    assert verified["type"] == "budget.warning"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace("900000", "900001"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_secrets_are_32_random_bytes_behind_whsec() -> None:
    """Each secret is `whsec_` and the base64 of 32 bytes, and no two are alike."""
    secrets = {new_secret() for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32


def test_the_webhook_id_is_stable_per_delivery_and_has_no_dot() -> None:
    """Two attempts of one delivery carry one `webhook-id`; another delivery another."""
    delivery = uuid.uuid4()
    first = webhook_headers(new_secret(), delivery, b"{}", 1_700_000_000)
    again = webhook_headers(new_secret(), delivery, b"{}", 1_700_000_900)
    assert first["webhook-id"] == again["webhook-id"] == message_id(delivery)
    assert "." not in first["webhook-id"]
    assert first["webhook-timestamp"] == "1700000000"
    assert (
        webhook_headers(new_secret(), uuid.uuid4(), b"{}", 0)["webhook-id"] != first["webhook-id"]
    )


def test_the_body_is_the_contract_in_order_and_compact() -> None:
    """`{"type", "timestamp", "data"}` with the data fields in the contract's order, no spaces."""
    created = datetime(2026, 11, 18, 15, 30, 12, 345678, tzinfo=UTC)
    body = webhook_body(
        "budget.limit_reached", created, webhook_data(FACTS, username="ann", group_name="eng")
    )
    assert " " not in body
    doc = orjson.loads(body)
    assert list(doc) == ["type", "timestamp", "data"]
    assert doc["timestamp"] == "2026-11-18T15:30:12Z"
    assert list(doc["data"]) == [
        "user_id",
        "username",
        "org_id",
        "threshold_percent",
        "limit_micros",
        "spent_micros",
        "period",
        "period_start",
        "period_end",
        "source",
        "group_id",
        "group_name",
    ]
    assert doc["data"]["group_name"] == "eng"


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    """Attempt n waits between half and all of base·2^(n-1), never more than the cap."""
    rng = random.Random(3)
    for attempts in range(1, 12):
        ceiling = min(3600.0, 10 * 2 ** (attempts - 1))
        for _ in range(20):
            delay = backoff_s(attempts, base_s=10, cap_s=3600, rng=rng)
            assert ceiling / 2 <= delay <= ceiling


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("30", 30.0),
        ("  5 ", 5.0),
        ("99999", 600.0),
        ("-1", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
    ],
)
def test_retry_after_is_read_in_seconds_and_capped(
    header: str | None, expected: float | None
) -> None:
    """A delta-seconds `Retry-After` is honoured up to the cap; anything else is ignored."""
    assert retry_after_s(header, cap_s=600) == expected


# -- where webhooks may go -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com/x", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("https://user:pw@example.com/", "credentials"),
        ("https://example.com/#frag", "fragment"),
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://2130706433/hook", "loopback"),
        ("http://0x7f.1/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://192.168.0.9/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://0.0.0.0/", "not a unicast"),
        ("http://localhost:9000/", "localhost"),
        ("http://svc.localhost/", "localhost"),
        ("https://exa mple.com/", "white space"),
        ("https://example.com/\x00", "control"),
        ("https://example.com/" + "a" * 2100, "2048"),
        ("", "1 to"),
    ],
)
def test_webhook_urls_that_are_refused_say_why(url: str, problem: str) -> None:
    """Non-HTTP schemes, credentials, private and loopback addresses are refused by default."""
    with pytest.raises(ValueError, match=problem):
        check_webhook_url(url, AddressPolicy())


def test_private_addresses_pass_when_allowed_globally_or_by_network() -> None:
    """`allow_private` lets every unicast address through; an allowed network only its own."""
    assert check_webhook_url("http://127.0.0.1:9/x", AddressPolicy(allow_private=True))
    networks = parse_networks(["10.1.0.0/16"])
    policy = AddressPolicy(allowed_networks=networks)
    assert check_webhook_url("http://10.1.4.5/x", policy) == "http://10.1.4.5/x"
    with pytest.raises(ValueError, match="private"):
        check_webhook_url("http://10.2.0.1/x", policy)
    assert check_webhook_url("https://hooks.example.com/t?a=1", AddressPolicy())
    assert AddressPolicy().refusal(ipaddress.ip_address("8.8.8.8")) is None
    with pytest.raises(ValueError, match="not a network"):
        parse_networks(["10.0.0.0/99"])


# -- emails --------------------------------------------------------------------------------------


def test_one_line_removes_every_line_break_and_control() -> None:
    """CR, LF, U+2028, U+2029, U+0085 and format characters become spaces; text stays."""
    raw = "Ann\r\nBcc: x@evil.test\u2028Line\u2029Para\x85Next\u200bZW\tTab"
    flat = one_line(raw)
    assert "\r" not in flat
    assert "\n" not in flat
    assert flat.splitlines() == [flat]
    assert flat == "Ann Bcc: x@evil.test Line Para Next ZW Tab"


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "no-at",
        "a@b",
        "two@@x.io",
        "a b@x.io",
        "a@x.io\r\nBcc: e@v.io",
        "a@x.io,b@y.io",
        "ñ@x.io",
        "<a@x.io>",
        "a@.x.io",
    ],
)
def test_addresses_that_are_not_plain_addr_specs_are_refused(raw: str) -> None:
    """Only one plain ASCII address passes: no lists, names, line breaks or non-ASCII."""
    assert check_address(raw) is None


def test_recipients_are_the_user_then_admins_but_the_user_each_address_once() -> None:
    """The user gets the user version; every admin but the user the admin one; duplicates go."""
    user = Person("u", "ann", "Ann", "ann@example.com")
    admins = [
        Person("u", "ann", "Ann", "ann@example.com"),
        Person("o", "olga", "Olga", "OLGA@example.com"),
        Person("x", "bad", "Bad", "not an address"),
    ]
    got = recipients(user, admins, ["olga@example.com", "ops@example.com"])
    assert got == [
        ("ann@example.com", "user"),
        ("OLGA@example.com", "admin"),
        ("ops@example.com", "admin"),
    ]
    assert recipients(None, admins[1:2], []) == [("OLGA@example.com", "admin")]


def _parse(message: str) -> email.message.EmailMessage:
    parsed = email.message_from_string(message, policy=default_policy)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


def test_a_hostile_name_cannot_add_a_header_to_an_email() -> None:
    """A directory name with CR/LF and U+2028 stays inside the subject and body text."""
    evil = Person(
        "u-1", "ann\r\nBcc: spy@evil.test", "Ann\u2028Bcc: spy@evil.test", "ann@example.com"
    )
    ctx = EmailContext("budget.limit_reached", FACTS, evil, None, None)
    for audience in ("user", "admin"):
        message = render_email(
            ctx,
            audience=audience,
            recipient="ann@example.com",
            sender="Tollgate <noreply@example.com>",
            delivery_id=uuid.uuid4(),
            now=datetime(2026, 11, 18, tzinfo=UTC),
        )
        parsed = _parse(message)
        assert parsed["Bcc"] is None
        assert sorted(parsed.keys()) == sorted(
            [
                "From",
                "To",
                "Subject",
                "Date",
                "Message-ID",
                "Auto-Submitted",
                "X-Tollgate-Notification",
                "X-Tollgate-User-Id",
                "MIME-Version",
                "Content-Type",
                "Content-Transfer-Encoding",
            ]
        )
        assert "\n" not in str(parsed["Subject"])


def test_emails_say_the_amounts_source_and_window_in_plain_words() -> None:
    """The user's warning and the admin's notice name dollars, where the limit comes from, the window."""
    user = Person("u-1", "ann", "Ann Lee", "ann@example.com")
    group_facts = {**FACTS, "source": "group", "group_id": "g-eng"}
    ctx = EmailContext(
        "budget.warning", group_facts, user, "Engineering", "https://tollgate.example"
    )
    delivery = uuid.uuid4()
    mail = _parse(
        render_email(
            ctx,
            audience="user",
            recipient="ann@example.com",
            sender="t@example.com",
            delivery_id=delivery,
            now=datetime.now(UTC),
        )
    )
    text = mail.get_content()
    assert mail["Subject"] == "You have used 85% of your monthly AI spend limit"
    assert mail["Message-ID"] == f"<{message_id(delivery)}@tollgate>"
    assert "Hello Ann Lee," in text
    assert "$1.00" in text
    assert "$0.90 (90% of the limit)" in text
    assert "the limit of group “Engineering”" in text
    assert "November 1, 2026 00:00 UTC to December 1, 2026 00:00 UTC" in text
    notice = EmailContext(
        "budget.limit_reached",
        {**FACTS, "source": "user", "spent_micros": 1_100_000},
        user,
        None,
        "https://tollgate.example",
    )
    admin = _parse(
        render_email(
            notice,
            audience="admin",
            recipient="o@example.com",
            sender="t@example.com",
            delivery_id=uuid.uuid4(),
            now=datetime.now(UTC),
        )
    )
    body = admin.get_content()
    assert admin["Subject"] == "ann has reached their monthly AI spend limit"
    assert "Ann Lee (@ann) has reached" in body
    assert "This limit is a per-user override." in body
    assert "refused until the limit resets on December 1, 2026" in body
    assert "https://tollgate.example/console/users/u-1" in body


@pytest.mark.parametrize(
    ("micros", "text"),
    [(0, "$0.00"), (4_200, "$0.0042"), (1_234_567_890, "$1,234.57"), (1_000_000, "$1.00")],
)
def test_dollars_are_written_like_the_console_writes_them(micros: int, text: str) -> None:
    """Two decimals with separators; a non-zero amount under a cent with four."""
    assert dollars(micros) == text


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail.example.com", ("mail.example.com", 25, None, None, False, None)),
        (
            "smtp+starttls://u%40x:p%3Aw@mail.example.com",
            ("mail.example.com", 587, "u@x", "p:w", False, True),
        ),
        ("smtps://mail.example.com:2465", ("mail.example.com", 2465, None, None, True, False)),
    ],
)
def test_smtp_urls_say_host_port_credentials_and_tls(
    url: str, expected: tuple[object, ...]
) -> None:
    """The three schemes set the default port and TLS mode; credentials are URL-decoded."""
    server = SmtpServer.parse(url)
    assert (
        server.hostname,
        server.port,
        server.username,
        server.password,
        server.use_tls,
        server.start_tls,
    ) == expected
    with pytest.raises(ValueError, match="smtp://"):
        SmtpServer.parse("http://mail.example.com")
