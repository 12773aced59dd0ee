"""Each service's operations as its own `/openapi.json` describes them, for the attacks."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import aiohttp

from tests.support import ADMIN_TOKEN, EMITTER_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
EMITTER = {"Authorization": f"Bearer {EMITTER_TOKEN}"}
_PARAM = re.compile(r"\{[^}]+\}")


@dataclass(frozen=True)
class Operation:
    """One documented route: who may call it and whether it takes a JSON body."""

    service: str
    method: str
    path: str
    public: bool
    admin: bool
    has_body: bool

    def concrete(self, value: str = "x") -> str:
        """The path with every parameter replaced by `value`."""
        return _PARAM.sub(value, self.path)

    def __str__(self) -> str:
        return f"{self.service} {self.method.upper()} {self.path}"


def parse_operations(service: str, document: dict[str, Any]) -> list[Operation]:
    """Every operation of an OpenAPI document."""
    ops = []
    for path, methods in sorted(document.get("paths", {}).items()):
        for method, op in sorted(methods.items()):
            ops.append(
                Operation(
                    service=service,
                    method=method,
                    path=path,
                    public=not op.get("security"),
                    admin="admin token" in op.get("description", "").lower(),
                    has_body="requestBody" in op,
                )
            )
    return ops


async def operations(service: str, base_url: str) -> list[Operation]:
    """The operations `service` documents at `/openapi.json`."""
    async with aiohttp.ClientSession() as http, http.get(f"{base_url}/openapi.json") as r:
        assert r.status == 200, f"{service} serves no /openapi.json ({r.status})"
        return parse_operations(service, await r.json())


async def request(
    base_url: str,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout_s: float = 20.0,
) -> tuple[int, bytes, str]:
    """One request; returns the status, the body and the content type."""
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method.upper(),
            f"{base_url}{path}",
            headers=headers,
            # Large bodies stream from a buffer instead of blocking the loop in one write.
            data=io.BytesIO(body) if body is not None and len(body) > 1_000_000 else body,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            skip_auto_headers=("Content-Type",),
        ) as r,
    ):
        return r.status, await r.read(), r.content_type
