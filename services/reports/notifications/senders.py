"""The two ways a notification leaves: a signed HTTP POST, and an email over SMTP.

Each attempt ends in an `Attempt`: delivered, or not with a cause and a message for the
delivery's `last_error`, and whether trying again can help. Neither sender retries by
itself; the dispatcher schedules retries from the outbox.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parseaddr
from importlib import metadata
from ipaddress import ip_address
from typing import Final
from urllib.parse import unquote

import aiohttp
import aiosmtplib
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from services.reports.notifications.domain import (
    AddressPolicy,
    DeliveryCause,
    ip_literal,
    retry_after_s,
    webhook_headers,
)

#: How much of an answer's body is kept as the delivery's last error.
ERROR_SNIPPET: Final = 300


@dataclass(frozen=True)
class Attempt:
    """How one attempt went."""

    delivered: bool
    cause: DeliveryCause | None = None
    error: str | None = None
    http_status: int | None = None
    #: Trying again cannot help (a permanent SMTP refusal, a 410 Gone).
    final: bool = False
    #: The receiver asked for this pause (`Retry-After`), in seconds.
    retry_after_s: float | None = None
    #: The endpoint answered 410 Gone: it wants nothing more.
    gone: bool = False


def user_agent() -> str:
    """`tollgate-notifier/<version>`."""
    try:
        version = metadata.version("tollgate")
    except metadata.PackageNotFoundError:
        version = "dev"
    return f"tollgate-notifier/{version}"


class RefusedAddressError(OSError):
    """Every address a webhook's host resolves to is refused by the address policy."""


class GuardedResolver(AbstractResolver):
    """Resolves names as usual, then keeps only the addresses the policy allows.

    The check is on the addresses actually connected to, so a name that resolved to a
    public address when the endpoint was added and to a private one now is refused now.
    """

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The allowed addresses of `host`; `RefusedAddressError` when none is."""
        results = await self.inner.resolve(host, port, family)
        allowed, refusals = [], []
        for result in results:
            refusal = self.policy.refusal(ip_address(result["host"]))
            if refusal is None:
                allowed.append(result)
            else:
                refusals.append(refusal)
        if not allowed:
            raise RefusedAddressError(
                f"{host} resolves only to refused addresses: {'; '.join(refusals)}"
            )
        return allowed

    async def close(self) -> None:
        """Release the inner resolver."""
        await self.inner.close()


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat[:ERROR_SNIPPET]


class WebhookSender:
    """POSTs a notification's body with the Standard Webhooks headers."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        policy: AddressPolicy,
        timeout_s: float,
        retry_after_cap_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.session = session
        self.policy = policy
        self.timeout_s = timeout_s
        self.retry_after_cap_s = retry_after_cap_s
        self.clock = clock
        self.agent = user_agent()

    @staticmethod
    def session_for(policy: AddressPolicy) -> aiohttp.ClientSession:
        """A client session whose every connection passes the address policy."""
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(policy), limit=100)
        # No proxy from the environment: it would connect on the sender's behalf, unchecked.
        return aiohttp.ClientSession(connector=connector, trust_env=False)

    async def send(
        self,
        *,
        url: str,
        secret: str,
        delivery_id: uuid.UUID,
        body: str,
        previous_secret: str | None = None,
    ) -> Attempt:
        """One attempt: 2xx delivers; redirects, other statuses and transport errors do not."""
        host = URL(url).host or ""
        literal = ip_literal(host)
        if literal is not None:
            refusal = self.policy.refusal(literal)
            if refusal is not None:
                return Attempt(delivered=False, cause="refused_address", error=refusal)
        data = body.encode()
        headers = webhook_headers(
            secret, delivery_id, data, self.clock(), previous_secret=previous_secret
        )
        headers["Content-Type"] = "application/json"
        headers["User-Agent"] = self.agent
        try:
            async with self.session.post(
                url,
                data=data,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            ) as response:
                status = response.status
                text = (await response.content.read(ERROR_SNIPPET * 2)).decode("utf-8", "replace")
                retry_after = retry_after_s(
                    response.headers.get("Retry-After"), cap_s=self.retry_after_cap_s
                )
        except TimeoutError:
            return Attempt(
                delivered=False,
                cause="timeout",
                error=f"no answer within {self.timeout_s:g}s",
            )
        except aiohttp.ClientConnectorDNSError as exc:
            if isinstance(exc.os_error, RefusedAddressError):
                return Attempt(delivered=False, cause="refused_address", error=str(exc.os_error))
            return Attempt(delivered=False, cause="connect", error=f"cannot resolve {host}: {exc}")
        except aiohttp.ClientConnectorError as exc:
            return Attempt(delivered=False, cause="connect", error=f"cannot connect: {exc}")
        except (aiohttp.ClientError, OSError) as exc:
            return Attempt(delivered=False, cause="transport", error=f"{type(exc).__name__}: {exc}")
        if 200 <= status < 300:
            return Attempt(delivered=True, http_status=status)
        detail = f"HTTP {status}" + (f": {_snippet(text)}" if text.strip() else "")
        if status == 410:
            return Attempt(
                delivered=False,
                cause="http_4xx",
                error=f"{detail} (the endpoint asked for no more deliveries: disabled)",
                http_status=status,
                final=True,
                gone=True,
            )
        cause: DeliveryCause = (
            "http_3xx" if status < 400 else "http_4xx" if status < 500 else "http_5xx"
        )
        if status < 400:
            detail += " (redirects are not followed: register the final URL)"
        return Attempt(
            delivered=False,
            cause=cause,
            error=detail,
            http_status=status,
            retry_after_s=retry_after,
        )


# -- email -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpServer:
    """Where and how emails are handed over, from `TOLLGATE_SMTP_URL`."""

    hostname: str
    port: int
    username: str | None
    password: str | None
    use_tls: bool
    start_tls: bool | None

    @classmethod
    def parse(cls, raw: str) -> SmtpServer:
        """`smtp://[user[:password]@]host[:port]` (STARTTLS when offered, port 25),
        `smtp+starttls://…` (STARTTLS required, 587) or `smtps://…` (TLS from the start, 465).
        """
        url = URL(raw)
        schemes = {"smtp": (25, False, None), "smtp+starttls": (587, False, True)}
        schemes["smtps"] = (465, True, False)
        if url.scheme not in schemes:
            raise ValueError("must start with smtp://, smtp+starttls:// or smtps://")
        if not url.host:
            raise ValueError("has no host")
        default_port, use_tls, start_tls = schemes[url.scheme]
        return cls(
            hostname=url.host,
            port=url.explicit_port or default_port,
            username=unquote(url.raw_user) if url.raw_user else None,
            password=unquote(url.raw_password) if url.raw_password else None,
            use_tls=use_tls,
            start_tls=start_tls,
        )


def envelope_sender(from_header: str) -> str:
    """The address of a `From` value such as `Tollgate <noreply@example.com>`."""
    return parseaddr(from_header)[1]


class EmailSender:
    """Hands one message to the SMTP server for one recipient."""

    def __init__(self, server: SmtpServer, *, sender: str, timeout_s: float) -> None:
        self.server = server
        self.sender = envelope_sender(sender)
        self.timeout_s = timeout_s

    async def send(self, *, recipient: str, message: str) -> Attempt:
        """One SMTP transaction; a 5xx refusal of the recipient or the data is final."""
        server = self.server
        try:
            await aiosmtplib.send(
                message,
                sender=self.sender,
                recipients=[recipient],
                hostname=server.hostname,
                port=server.port,
                username=server.username,
                password=server.password,
                use_tls=server.use_tls,
                start_tls=server.start_tls,
                timeout=self.timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            final = bool(codes) and all(500 <= code < 600 for code in codes)
            return Attempt(
                delivered=False,
                cause="smtp_permanent" if final else "smtp_temporary",
                error="; ".join(f"{r.code} {r.message}" for r in exc.recipients)[:ERROR_SNIPPET],
                final=final,
            )
        except (aiosmtplib.SMTPRecipientRefused, aiosmtplib.SMTPDataError) as exc:
            final = 500 <= exc.code < 600
            return Attempt(
                delivered=False,
                cause="smtp_permanent" if final else "smtp_temporary",
                error=f"{exc.code} {exc.message}"[:ERROR_SNIPPET],
                final=final,
            )
        except aiosmtplib.SMTPTimeoutError as exc:
            return Attempt(delivered=False, cause="timeout", error=f"SMTP: {exc}"[:ERROR_SNIPPET])
        except aiosmtplib.SMTPConnectError as exc:
            return Attempt(delivered=False, cause="connect", error=f"SMTP: {exc}"[:ERROR_SNIPPET])
        except (aiosmtplib.SMTPException, OSError) as exc:
            return Attempt(
                delivered=False,
                cause="smtp_temporary",
                error=f"SMTP: {type(exc).__name__}: {exc}"[:ERROR_SNIPPET],
            )
        return Attempt(delivered=True)
