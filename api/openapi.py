"""The OpenAPI document as the server behaves: FastAPI lists a 422 for every operation with
parameters, which this server never sends (api/errors.py answers 400), and none of the
error answers it does send. Each operation gets the answers that apply to it, all in the
one error shape (`ErrorResponse`), so generated clients and schema-driven tests (the
schemathesis run in tests/api/test_api_schema.py) agree with the server.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    message: str = Field(description="What is wrong, and where (a field, a file line)")
    type: Literal["invalid_request_error", "rate_limit_error", "server_error"]
    param: str | None = Field(description="The field, parameter or header at fault")
    code: str | None = Field(description="A stable machine-readable name")


class ErrorResponse(BaseModel):
    """Every error answer, in OpenAI's shape."""

    error: ErrorDetail


_REF = {"$ref": "#/components/schemas/ErrorResponse"}
_WHY = {
    400: "Invalid request: a parameter, header or body field (named in `param`) is wrong",
    401: "No API key, or a wrong or revoked one",
    404: "No such object, or not this key's",
    409: "The object's state does not allow this (a finished job cancelled, a file in use, "
         "an Idempotency-Key reused with another body)",
    413: "The request body or upload is larger than this server accepts",
    429: "A rate limit or quota of this key is reached; retry after `Retry-After` seconds",
    503: "The server is too busy to answer now (the database is locked or its connections "
         "are all in use); retry",
}


def _codes_for(method: str, path: str, operation: dict[str, Any]) -> list[int]:
    """The error answers an operation can give, from what it takes and how it is reached."""
    codes = [400, 503]  # 400: any query with a NUL character (api/input_guard.py)
    if operation.get("security"):
        codes += [401, 429]
    names = {p.get("name") for p in operation.get("parameters", [])}
    # ids in the path, a paging cursor, a body naming files or a model: each may name nothing
    if "{" in path or names & {"after", "before"} or operation.get("requestBody"):
        codes.append(404)
    if path.startswith("/v1/") and method in ("post", "delete"):
        codes.append(409)
    if operation.get("requestBody"):
        codes.append(413)
    return codes


def _document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(error_schema.pop("$defs", {}))
    schemas["ErrorResponse"] = error_schema
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            responses.pop("422", None)
            for code in _codes_for(method, path, operation):
                entry = responses.setdefault(str(code), {"description": _WHY[code]})
                if code == 503 and "content" in entry:
                    continue  # /readyz answers 503 with its own body
                entry["content"] = {"application/json": {"schema": _REF}}
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return schema


def install_openapi(app: FastAPI) -> None:
    """Serve the corrected document at /openapi.json (built once, on first request)."""
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _document_errors(get_openapi(
                title=app.title, version=app.version, description=app.description,
                routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
