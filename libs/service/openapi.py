"""A small OpenAPI 3.1 document built from a service's route table and its pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from libs.service.routes import Body, Role, Route

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["message"],
    "properties": {"message": {"type": "string"}, "detail": {}},
}

_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    204: "No content",
    400: "Malformed request",
    401: "Missing or unknown token",
    403: "Token lacks the role",
    404: "Not found",
    408: "Body not received in time",
    409: "Conflict",
    413: "Body too large",
    422: "Invalid content",
    503: "A dependency is unavailable; retry after `Retry-After` seconds",
}


class OpenApi:
    """Collects routes; `document()` renders the OpenAPI JSON a service serves."""

    def __init__(self, *, title: str, version: str = "1.0.0", description: str = "") -> None:
        self.title = title
        self.version = version
        self.description = description
        self._paths: dict[str, dict[str, Any]] = {}
        self._schemas: dict[str, Any] = {"Error": _ERROR_SCHEMA}

    def _ref(self, model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            self._schemas[name] = sub
        self._schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    def add(self, route: Route) -> None:
        """Describe one route; errors common to every authenticated route are added."""
        op: dict[str, Any] = {"summary": route.summary, "responses": {}}
        if route.tag:
            op["tags"] = [route.tag]
        if route.role is Role.ADMIN:
            op["description"] = "Needs an admin token."
        elif route.portal is not None:
            op["description"] = f"A portal token may call it for its own user (`{route.portal}`)."
        params = [p.document() for p in route.parameters]
        for segment in route.path.split("/"):
            if segment.startswith("{") and segment.endswith("}"):
                params.insert(
                    0,
                    {
                        "name": segment[1:-1],
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 128},
                    },
                )
        if params:
            op["parameters"] = params
        if route.request is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": self._ref(route.request)}},
            }
        all_responses: dict[int, Body] = dict(route.responses)
        if route.role is not Role.PUBLIC:
            op["security"] = [{"bearer": []}]
            all_responses.setdefault(401, None)
            if route.role is Role.ADMIN or route.portal is not None:
                all_responses.setdefault(403, None)
        if route.request is not None:
            all_responses.setdefault(400, None)
            all_responses.setdefault(413, None)
            all_responses.setdefault(422, None)
        for status, body in sorted(all_responses.items()):
            entry: dict[str, Any] = {"description": _STATUS_TEXT.get(status, "Response")}
            if body is None and status >= 400:
                schema: dict[str, Any] | None = {"$ref": "#/components/schemas/Error"}
            elif isinstance(body, type):
                schema = self._ref(body)
            else:
                schema = None if body is None else dict(body)
            if schema is not None:
                entry["content"] = {"application/json": {"schema": schema}}
                if status == 200 and route.csv:
                    entry["content"]["text/csv"] = {"schema": {"type": "string"}}
            op["responses"][str(status)] = entry
        self._paths.setdefault(route.path, {})[route.method.lower()] = op

    def document(self) -> dict[str, Any]:
        """The OpenAPI 3.1 document."""
        return {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": self.version, "description": self.description},
            "paths": self._paths,
            "components": {
                "schemas": self._schemas,
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            },
        }
