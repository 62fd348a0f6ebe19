"""The one place that turns exceptions into HTTP answers, in OpenAI's error shape:
`{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from sage_core.errors import DataFileError, RateLimitError, SageTrainError

log = logging.getLogger("sagetrain.api")


class InvalidRequestError(SageTrainError):
    code = "invalid_request"
    status_code = 400


class AuthenticationError(SageTrainError):
    code = "invalid_api_key"
    status_code = 401


class PayloadTooLargeError(SageTrainError):
    code = "file_too_large"
    status_code = 413


# Seconds a client is asked to wait (Retry-After) when the database is busy or unreachable.
RETRY_AFTER_SECONDS = 5


def error_body(message: str, *, type_: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _type_for(status: int) -> str:
    if status == 401:
        return "invalid_request_error"  # what OpenAI answers for a bad key
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def _json(status: int, message: str, *, param: str | None = None, code: str | None = None,
          headers: dict[str, str] | None = None) -> JSONResponse:
    body = error_body(message, type_=_type_for(status), param=param, code=code)
    return JSONResponse(body, status_code=status, headers=headers)


def error_json(status: int, message: str, *, param: str | None = None,
               code: str | None = None) -> JSONResponse:
    """An error answer in the OpenAI shape, for middleware that answers before any route."""
    return _json(status, message, param=param, code=code)


# Pydantic puts union members and validator names into an error's location
# (["hyperparameters", "n_epochs", "int"], ["x", "function-after[...]"]); they are no field.
_UNION_TAGS = {"int", "float", "str", "bool", "none", "list", "dict"}


def _param_from_loc(loc: tuple[Any, ...]) -> str | None:
    """The field as a request names it: "hyperparameters.n_epochs", "integrations[0].type"."""
    parts: list[str] = []
    for index, item in enumerate(loc):
        if index == 0 and item in ("body", "query", "path", "header", "form", "cookie"):
            continue
        if isinstance(item, int) and parts:
            parts[-1] += f"[{item}]"
            continue
        text = str(item)
        if text in _UNION_TAGS or "[" in text or "'" in text:
            continue
        parts.append(text)
    return ".".join(parts) or None


def _field_named_in(message: str, fields: set[str]) -> str | None:
    """The first of `fields` a model-level validator's message names (it starts with it)."""
    for word in re.findall(r"[a-z_]+", message):
        if word in fields:
            return word
    return None


_AN_INTEGRATION = re.compile(r"^integrations\[\d+\]$")
_AGAIN_AT = re.compile(r"again at (integrations\[\d+\])")


def _validation_param(error: dict[str, Any]) -> str | None:
    """The field a model-level validator's message is about, below the model's own
    location: hyperparameters.<field>, integrations[i].<field>, or the integration that
    repeats a type."""
    param = _param_from_loc(tuple(error.get("loc", ())))
    if error.get("type") != "value_error" or not param:
        return param
    message = str(error.get("msg", ""))
    if param.endswith("hyperparameters"):
        from sage_core.schemas import Hyperparameters

        field = _field_named_in(message, set(Hyperparameters.model_fields))
        if field:
            param = f"{param}.{field}"
    elif _AN_INTEGRATION.match(param):
        from sage_core.integration_specs import Integration

        field = _field_named_in(message, set(Integration.model_fields))
        if field:
            param = f"{param}.{field}"
    elif param == "integrations" and (again := _AGAIN_AT.search(message)):
        param = f"{again.group(1)}.type"
    return param


def _body_problem(error: dict[str, Any]) -> str | None:
    """The message for a body that is not JSON, or absent, where a field's message would
    name no field (FastAPI puts the decoder's character position, or nothing, in `loc`)."""
    loc = tuple(error.get("loc", ()))
    if error.get("type") == "json_invalid":
        where = f" at position {loc[1]}" if len(loc) > 1 else ""
        reason = str((error.get("ctx") or {}).get("error", "")).strip()
        return f"The request body is not valid JSON ({reason or 'decode error'}{where})."
    if error.get("type") == "missing" and loc == ("body",):
        return "The request body is missing: send a JSON object (Content-Type: " \
               "application/json)."
    return None


def _validation_message(error: dict[str, Any], param: str | None) -> str:
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if error.get("type") == "missing":
        return f"Missing required parameter: '{param}'."
    if error.get("type") == "extra_forbidden":
        return f"Unrecognized request argument supplied: '{param}'."
    return f"Invalid value for '{param}': {message}" if param else message


async def _sagetrain_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SageTrainError)
    message = exc.message
    if isinstance(exc, DataFileError):
        message = f"Invalid file: {exc.message}"
    headers = ({"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimitError)
               else None)
    return _json(exc.status_code, message, param=exc.param, code=exc.code, headers=headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    first = errors[0] if errors else {}
    body_problem = _body_problem(first)
    if body_problem is not None:
        return _json(400, body_problem, code="invalid_value")
    param = _validation_param(first)
    message = _validation_message(first, param)
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return _json(400, message, param=param, code="invalid_value")


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed"}
    code = getattr(exc, "code", None) or codes.get(exc.status_code)  # BodyLimitError's own
    return _json(exc.status_code, str(exc.detail), code=code,
                 headers=getattr(exc, "headers", None))


async def _unstorable(request: Request, exc: Exception) -> JSONResponse:
    # The input checks should refuse first whatever the database cannot store (a NUL
    # character, a number out of its range); this answer is the net under them.
    log.warning("database refused a value on %s %s: %s", request.method, request.url.path,
                str(exc).splitlines()[0][:300])
    return _json(400, "A value in the request cannot be stored (a NUL character, or a "
                 "number out of range).", code="invalid_value")


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """A locked SQLite database, an exhausted pool or an unreachable server: 503, try again
    later; any other database error is a bug (500)."""
    from sage_core.transient import is_transient

    if not is_transient(exc):
        return await _unexpected(request, exc)
    log.warning("database busy on %s %s: %s", request.method, request.url.path, exc)
    return _json(503, "The database is busy; try again shortly.", code="database_busy",
                 headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _json(500, "The server had an error while processing your request.",
                 code="internal_error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SageTrainError, _sagetrain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # the most specific class wins: DataError (a value it cannot store) is bad input
    app.add_exception_handler(DataError, _unstorable)
    app.add_exception_handler(SQLAlchemyError, _database_error)
    app.add_exception_handler(Exception, _unexpected)
