"""A real SMTP server and a real webhook receiver for the tests, started by the tests themselves.

`SmtpSink` is aiosmtpd's server on a free port, keeping every message it accepts (it can be
told to refuse for a while). `WebhookReceiver` is an aiohttp server on a free port that
keeps every request and answers from a script (`fail`, `hang`, `ok`), so retries and hanging
receivers can be played out. Signatures are checked with the `standardwebhooks` library, an
implementation of the specification independent of Tollgate's own signer.
"""

from __future__ import annotations

import asyncio
import email
import email.message
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.policy import default as default_policy
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from standardwebhooks import Webhook, WebhookVerificationError

from libs.service.embedded import free_port


@dataclass(frozen=True)
class Mail:
    """One message the SMTP server accepted."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: email.message.EmailMessage

    @property
    def message_id(self) -> str:
        """The Message-ID header."""
        return str(self.message["Message-ID"])

    @property
    def subject(self) -> str:
        """The decoded subject."""
        return str(self.message["Subject"])

    @property
    def text(self) -> str:
        """The decoded plain-text body."""
        body = self.message.get_content()
        assert isinstance(body, str)
        return body


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(  # noqa: N802  # aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        if self.sink.refusing:
            return "451 4.3.0 try again later"
        content = envelope.content
        raw = content if isinstance(content, bytes) else str(content).encode()
        parsed = email.message_from_bytes(raw, policy=default_policy)
        assert isinstance(parsed, email.message.EmailMessage)
        self.sink.mails.append(Mail(str(envelope.mail_from), tuple(envelope.rcpt_tos), parsed))
        return "250 2.0.0 accepted"


@dataclass
class SmtpSink:
    """aiosmtpd on 127.0.0.1 and a free port, in its own thread."""

    port: int = field(default_factory=free_port)
    mails: list[Mail] = field(default_factory=list)
    refusing: bool = False
    _controller: Controller | None = None

    def start(self) -> SmtpSink:
        """Start listening."""
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def url(self) -> str:
        """`TOLLGATE_SMTP_URL` for this server."""
        return f"smtp://127.0.0.1:{self.port}"

    def to(self, address: str) -> list[Mail]:
        """Messages for one recipient."""
        return [m for m in self.mails if address in m.rcpt_tos]


@dataclass
class Hook:
    """One request the receiver got, and how it answered."""

    headers: dict[str, str]
    body: bytes
    answered: int | None
    at: float

    @property
    def webhook_id(self) -> str:
        """The `webhook-id` header."""
        return self.headers.get("webhook-id", "")

    def verified(self, secret: str) -> dict[str, Any]:
        """The body, parsed, once `standardwebhooks` accepts the signature (else it raises)."""
        doc = Webhook(secret).verify(self.body, self.headers)
        assert isinstance(doc, dict)
        return doc

    def verifies(self, secret: str) -> bool:
        """Whether `standardwebhooks` accepts the signature."""
        try:
            self.verified(secret)
        except WebhookVerificationError:
            return False
        return True


@dataclass
class WebhookReceiver:
    """An HTTP endpoint that records every delivery and answers from a script.

    `script` is consumed one request at a time: an int is a status to answer, `"hang"` holds
    the request until `release()`; when it is empty, `mode` answers (`200` by default).
    """

    port: int = field(default_factory=free_port)
    hooks: list[Hook] = field(default_factory=list)
    script: list[int | str] = field(default_factory=list)
    mode: int | str = 200
    _runner: web.AppRunner | None = None
    _released: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str = "/hook") -> str:
        """The endpoint's URL."""
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> WebhookReceiver:
        """Serve on the current event loop."""
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        """Stop serving (requests held are dropped)."""
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def release(self) -> None:
        """Let held requests go (they answer with the mode in force then)."""
        self._released.set()

    def hold(self) -> None:
        """Hold requests again from now on (`"hang"`)."""
        self._released = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        action = self.script.pop(0) if self.script else self.mode
        hook = Hook(
            {k.lower(): v for k, v in request.headers.items()}, body, None, time.monotonic()
        )
        self.hooks.append(hook)
        if action == "hang":
            # Answered only once released, whether or not the sender still waits.
            await self._released.wait()
            action = self.mode if self.mode != "hang" else 200
        hook.answered = int(action)
        return web.Response(status=hook.answered, text="ok" if hook.answered < 300 else "not now")

    def answered(self, status_ok: Callable[[int], bool] = lambda s: 200 <= s < 300) -> list[Hook]:
        """Requests answered with a status `status_ok` accepts (2xx by default)."""
        return [h for h in self.hooks if h.answered is not None and status_ok(h.answered)]

    def delivered_ids(self) -> Counter[str]:
        """How many 2xx answers each `webhook-id` got."""
        return Counter(h.webhook_id for h in self.answered())
