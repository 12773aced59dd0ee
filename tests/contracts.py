"""Walking a service's route table through its unit-test app, checking every answer's contract.

`walk` calls each route of a table once (writes first, then reads, then deletes, so that a
read finds what a write made and a delete has something to remove) and checks that the status
is one the route declares and that the body validates against the model declared for it.
The services' unit tests call it with an example request per route that needs one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import ValidationError

from libs.service.routes import Role, Route

_ORDER = {"POST": 0, "PUT": 1, "GET": 2, "DELETE": 3}
_PARAM = re.compile(r"\{([^}]+)\}")


@dataclass(frozen=True)
class Example:
    """How to call one route: its path parameters, query and JSON body."""

    path: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    body: object = None


@dataclass(frozen=True)
class Answer:
    """What one route answered."""

    route: Route
    status: int
    problem: str | None

    def __str__(self) -> str:
        return f"{self.route.method} {self.route.path} -> {self.status}: {self.problem}"


async def walk(
    client: TestClient[web.Request, web.Application],
    routes: Iterable[Route],
    *,
    headers: Mapping[str, str],
    examples: Mapping[tuple[str, str], Example] | None = None,
) -> list[Answer]:
    """Call every route once and check its answer against the route's declared responses."""
    examples = examples or {}
    answers = []
    for route in sorted(routes, key=lambda r: _ORDER.get(r.method, 9)):
        example = examples.get((route.method, route.path), Example())
        answers.append(await _call(client, route, example, headers))
    return answers


async def walk_values(
    client: TestClient[web.Request, web.Application],
    routes: Iterable[Route],
    *,
    headers: Mapping[str, str],
    examples: Mapping[tuple[str, str], Example] | None = None,
) -> list[Answer]:
    """Call each route once per value its table lists for each query parameter.

    The document promises that every listed value is understood: each call must succeed.
    """
    examples = examples or {}
    answers = []
    for route in routes:
        example = examples.get((route.method, route.path), Example())
        for param in route.parameters:
            for value in param.values or ():
                query = {**example.query, param.name: str(value)}
                with_value = Example(path=example.path, query=query, body=example.body)
                answers.append(await _call(client, route, with_value, headers))
    return answers


async def _call(
    client: TestClient[web.Request, web.Application],
    route: Route,
    example: Example,
    headers: Mapping[str, str],
) -> Answer:
    response = await client.request(
        route.method,
        _concrete(route.path, example.path),
        params=dict(example.query),
        json=example.body,
        headers=dict(headers),
    )
    raw = await response.read()
    problem = _problem(route, response.status, response.content_type, raw)
    return Answer(route, response.status, problem)


def _concrete(path: str, values: Mapping[str, str]) -> str:
    return _PARAM.sub(lambda match: values.get(match.group(1), "x"), path)


def _problem(route: Route, status: int, content_type: str, raw: bytes) -> str | None:
    if status not in route.responses and status not in _implicit(route):
        return f"status {status} is not declared: {raw[:300]!r}"
    model = route.model_for(status)
    if model is None or (route.csv and status == 200 and content_type == "text/csv"):
        return None
    try:
        model.model_validate_json(raw)
    except ValidationError as exc:
        return f"the body is not a {model.__name__}: {exc}"
    return None


def _implicit(route: Route) -> set[int]:
    # The statuses the document adds to every route of this kind (see OpenApi.add).
    implicit = {401, 403} if route.role is not Role.PUBLIC else set()
    if route.request is not None:
        implicit |= {400, 413, 422}
    return implicit


def failures(
    answers: Iterable[Answer], *, expected: Mapping[tuple[str, str], int] | None = None
) -> list[str]:
    """The answers that broke their contract or were not 2xx (or the status `expected` names)."""
    expected = expected or {}
    found = []
    for a in answers:
        wanted = expected.get((a.route.method, a.route.path))
        if a.problem:
            found.append(str(a))
        elif wanted is not None and a.status != wanted:
            found.append(f"{a.route.method} {a.route.path} -> {a.status}, not {wanted}")
        elif wanted is None and not 200 <= a.status < 300:
            found.append(f"{a.route.method} {a.route.path} -> {a.status}, not a 2xx")
    return found
