"""Route tables: each route declared once, from which the router, auth and OpenAPI are derived.

A service lists its routes as `Route(...)` values (method, path, handler, role, summary, the
request and response models) in its `api.py`; `web.install_routes` adds them to the aiohttp
router, marks who may call them and describes them in the service's `/openapi.json`. Nothing
else registers or documents an API route, so the three can never disagree.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

from aiohttp import web
from pydantic import BaseModel

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: What a response or request body is: a model, a literal JSON schema, or nothing.
Body = type[BaseModel] | Mapping[str, Any] | None


class Role(IntEnum):
    """Who may call a route; a higher role may do everything a lower one may."""

    PUBLIC = 0
    EMITTER = 1
    ADMIN = 2


@dataclass(frozen=True)
class Param:
    """A query parameter: its name, what it means and which values it takes.

    `values` is the closed set of strings it accepts (a `StrEnum` shared with the code that
    reads it, so the document lists exactly what the handler knows); `schema` adds JSON schema
    keywords (`type`, `pattern`, `maximum`, ...) to the default `{"type": "string"}`.
    """

    name: str
    description: str = ""
    values: type[StrEnum] | tuple[str, ...] | None = None
    required: bool = False
    schema: Mapping[str, Any] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        """The OpenAPI parameter object."""
        schema: dict[str, Any] = {"type": "string", **self.schema}
        if self.values is not None:
            schema["enum"] = [str(v) for v in self.values]
        entry: dict[str, Any] = {"name": self.name, "in": "query", "required": self.required}
        if self.description:
            entry["description"] = self.description
        entry["schema"] = schema
        return entry


@dataclass(frozen=True)
class Route:
    """One HTTP operation of a service, everything about it in one place.

    `role` is the least role that may call it; `portal` names the path parameter that a portal
    token may read when it is the token's own user (a portal token reaches no other route).
    `responses` maps each status the handler answers with to its body (`None` for the error
    shape, or no body on a 2xx); the statuses every authenticated or body-taking route can
    answer (401, 403, 400, 413, 422) are added when the document is built. `csv` says the 200
    has a `text/csv` representation beside the JSON one. An undocumented route (the console's
    pages, its session API and the gateway that forwards to other services) is served and
    authorised from its table like the others but left out of `/openapi.json`; method `*`
    takes every method.
    """

    method: str
    path: str
    handler: Handler
    summary: str
    role: Role = Role.EMITTER
    portal: str | None = None
    request: type[BaseModel] | None = None
    responses: Mapping[int, Body] = field(default_factory=dict)
    parameters: tuple[Param, ...] = ()
    tag: str | None = None
    csv: bool = False
    documented: bool = True

    def model_for(self, status: int) -> type[BaseModel] | None:
        """The declared model of the body answered with `status`, if it is a model."""
        body = self.responses.get(status)
        return body if isinstance(body, type) else None
