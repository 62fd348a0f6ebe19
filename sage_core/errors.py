"""sagetrain's own exception types. `api/errors.py` alone turns them into HTTP answers."""

from __future__ import annotations


class SageTrainError(Exception):
    """Base class. `code` is a stable machine-readable name, `param` the field at fault."""

    code: str = "error"
    status_code: int = 400

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidSpecError(SageTrainError):
    """A job spec or hyperparameter that cannot be honoured."""

    code = "invalid_hyperparameters"


class UnknownModelError(SageTrainError):
    """A model name the catalog does not know."""

    code = "model_not_found"
    status_code = 400


class DataFileError(SageTrainError):
    """A training or validation file that cannot be used. `errors` lists the first problems,
    each naming the file, the line (1-based) and the field."""

    code = "invalid_file"

    def __init__(self, filename: str, errors: list[DataIssue]):
        self.filename = filename
        self.errors = errors
        shown = "; ".join(str(e) for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"{filename}: {shown}{more}", param="file")


class DataIssue:
    """One problem in a data file: where it is and what is wrong."""

    __slots__ = ("line", "field", "message")

    def __init__(self, line: int | None, field: str | None, message: str):
        self.line = line
        self.field = field
        self.message = message

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "file"
        if self.field:
            where += f", field '{self.field}'"
        return f"{where}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {"line": self.line, "field": self.field, "message": self.message}


class NotFoundError(SageTrainError):
    code = "not_found"
    status_code = 404


class ConflictError(SageTrainError):
    code = "conflict"
    status_code = 409


class RateLimitError(SageTrainError):
    """A key over one of its limits (a rate limit or a quota): 429, and `retry_after`, the
    seconds after which the request may succeed (the Retry-After header)."""

    code = "rate_limit_exceeded"
    status_code = 429

    def __init__(self, message: str, *, retry_after: int, code: str | None = None,
                 param: str | None = None):
        super().__init__(message, param=param, code=code)
        self.retry_after = max(1, retry_after)


class TrainingError(SageTrainError):
    """A job that failed for a reason that retrying will not fix (NaN loss, bad data, OOM)."""

    code = "training_failed"


class SensitivityNotAvailableError(NotFoundError):
    """A job with no sensitivity report: not succeeded (yet), or trained without a
    validation file."""

    code = "sensitivity_not_available"
