"""A typed Python client for the sagetrain HTTP API (see API.md), on httpx.

    from sagetrain.client import Client
    with Client() as client:          # SAGETRAIN_BASE_URL, SAGETRAIN_API_KEY
        file = client.upload_file("train.jsonl")
        job = client.create_job("tiny-bert", file["id"], hyperparameters={"n_epochs": 2})
        for name, data, cursor in client.stream(job["id"]):
            ...

Every call returns the JSON the server sent, as a dict; an error answer raises
`SageTrainAPIError` with the fields of its OpenAI-shaped body.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, Literal, overload

import httpx

DEFAULT_TIMEOUT = 60.0
# The server sends a keep-alive comment every 15 s; a stream silent for longer is dead.
STREAM_READ_TIMEOUT = 60.0

SSEMessage = tuple[str, dict[str, Any], str | None]


class SageTrainError(Exception):
    """Anything the client reports: a bad configuration, an API error, a bad archive."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SageTrainAPIError(SageTrainError):
    """The server answered with an error body `{"error": {message, type, param, code}}`."""

    def __init__(self, status: int, type: str, message: str, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.param, self.code = status, type, param, code

    def __str__(self) -> str:
        where = f" (param: {self.param})" if self.param else ""
        return f"{self.status} {self.type}: {self.message}{where}"


def _raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    response.read()  # a streamed response's error body is not read yet
    try:
        error = response.json()["error"]
        raise SageTrainAPIError(response.status_code, str(error.get("type") or "api_error"),
                                str(error.get("message") or response.reason_phrase),
                                error.get("param"), error.get("code"))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise SageTrainAPIError(response.status_code, "api_error",
                                f"HTTP {response.status_code}: {response.text[:200]}") from None


def parse_sse(lines: Iterable[str]) -> Iterator[SSEMessage]:
    """Server-Sent Events from a stream's lines: (event name, decoded JSON data, last id).

    Follows the WHATWG rules that matter here: `:` lines are comments, `data` lines join
    with newlines, a blank line dispatches, the event name defaults to `message` and
    resets after each dispatch, and the last id carries over to later messages.
    """
    name, last_id = "", None
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                text = "\n".join(data)
                yield name or "message", _json_or_text(text), last_id
            name, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id" and "\0" not in value:
            last_id = value or None


def _json_or_text(text: str) -> dict[str, Any]:
    import json

    try:
        value = json.loads(text)
    except ValueError:
        return {"text": text}
    return value if isinstance(value, dict) else {"value": value}


def safe_extract(archive: Path, dest: Path) -> Path:
    """Extract a .tar.gz into `dest`, refusing absolute paths, `..`, links and devices.
    Returns the archive's single top folder, or `dest` if it has several entries."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, mode="r:gz") as tar:
        members = tar.getmembers()
        tops: set[str] = set()
        for member in members:
            path = PurePosixPath(member.name)
            if path.is_absolute() or ".." in path.parts or member.name.startswith("\\"):
                raise SageTrainError(f"unsafe path in archive: {member.name!r}")
            if not (member.isfile() or member.isdir()):
                raise SageTrainError(f"unsupported entry in archive: {member.name!r}")
            if path.parts and path.parts[0] != ".":
                tops.add(path.parts[0])
        tar.extractall(dest, members=members, filter="data")
    if len(tops) == 1:
        only = dest / tops.pop()
        if only.is_dir():
            return only
    return dest


class Client:
    """sagetrain's API over HTTP. `base_url` and `api_key` default to SAGETRAIN_BASE_URL
    and SAGETRAIN_API_KEY; either missing raises `SageTrainError` at construction."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | None = None) -> None:
        base_url = base_url or os.environ.get("SAGETRAIN_BASE_URL")
        api_key = api_key or os.environ.get("SAGETRAIN_API_KEY")
        if not base_url:
            raise SageTrainError("no server URL: set SAGETRAIN_BASE_URL "
                                 "(e.g. http://127.0.0.1:8000) or pass base_url")
        if not api_key:
            raise SageTrainError("no API key: set SAGETRAIN_API_KEY or pass api_key "
                                 "(create one with `sagetrain keys create --name NAME`)")
        base_url = base_url.rstrip("/").removesuffix("/v1")
        self.base_url = base_url
        self.timeout = timeout
        self._http = httpx.Client(base_url=f"{base_url}/v1", timeout=timeout,
                                  headers={"Authorization": f"Bearer {api_key}"},
                                  transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise SageTrainError(f"cannot reach {self.base_url}: {exc}") from exc
        _raise_for_error(response)
        result: dict[str, Any] = response.json()
        return result

    @staticmethod
    def _params(**values: Any) -> dict[str, Any]:
        return {k: v for k, v in values.items() if v is not None}

    # --- files ---------------------------------------------------------------------------

    def upload_file(self, path: str | os.PathLike[str], task: str | None = None) -> dict[str, Any]:
        """Upload a training or validation file (purpose fine-tune); validated server-side."""
        path = Path(path)
        with path.open("rb") as fh:
            return self._request("POST", "/files", files={"file": (path.name, fh)},
                                 data=self._params(purpose="fine-tune", task=task))

    def list_files(self, after: str | None = None, limit: int | None = None) -> dict[str, Any]:
        return self._request("GET", "/files", params=self._params(after=after, limit=limit))

    def delete_file(self, file_id: str) -> dict[str, Any]:
        """Delete one of the key's files: {id, object: "file", deleted: true}."""
        return self._request("DELETE", f"/files/{file_id}")

    # --- jobs ----------------------------------------------------------------------------

    def create_job(self, model: str, training_file: str, validation_file: str | None = None,
                   hyperparameters: dict[str, Any] | None = None, suffix: str | None = None,
                   seed: int | None = None, task: str | None = None,
                   idempotency_key: str | None = None,
                   sweep: dict[str, list[float] | list[int]] | None = None,
                   compare_to: list[str | dict[str, Any]] | None = None,
                   resources: dict[str, Any] | None = None,
                   integrations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Create a job, on `resources` ({"gpus": N, "strategy": ...}) if given, reported to
        `integrations` ([{"type": "wandb", "wandb": {"project": ...}}, ...]). With
        `sweep` ({"learning_rate": [...], "seeds": [...]}, either or both) or `compare_to`
        (optimizer names, or {"optimizer": ..., "learning_rate": [...]}), the server creates
        a parent job and one child job per optimizer, learning rate and seed, and returns the
        parent (see `sweep_report`)."""
        body = self._params(model=model, training_file=training_file,
                            validation_file=validation_file, hyperparameters=hyperparameters,
                            suffix=suffix, seed=seed, task=task, sweep=sweep,
                            compare_to=compare_to, resources=resources,
                            integrations=integrations)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._request("POST", "/fine_tuning/jobs", json=body, headers=headers)

    def list_jobs(self, after: str | None = None, limit: int | None = None) -> dict[str, Any]:
        return self._request("GET", "/fine_tuning/jobs",
                             params=self._params(after=after, limit=limit))

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/fine_tuning/jobs/{job_id}")

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/fine_tuning/jobs/{job_id}/cancel")

    def pause_job(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/fine_tuning/jobs/{job_id}/pause")

    def resume_job(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/fine_tuning/jobs/{job_id}/resume")

    def list_events(self, job_id: str, after: str | None = None,
                    limit: int | None = None) -> dict[str, Any]:
        return self._request("GET", f"/fine_tuning/jobs/{job_id}/events",
                             params=self._params(after=after, limit=limit))

    def metrics(self, job_id: str, from_step: int | None = None) -> dict[str, Any]:
        return self._request("GET", f"/fine_tuning/jobs/{job_id}/metrics",
                             params=self._params(from_step=from_step))

    def list_checkpoints(self, job_id: str, after: str | None = None,
                         limit: int | None = None) -> dict[str, Any]:
        return self._request("GET", f"/fine_tuning/jobs/{job_id}/checkpoints",
                             params=self._params(after=after, limit=limit))

    def sweep_report(self, job_id: str) -> dict[str, Any]:
        """A sweep's report: every child with its last validation metrics, the best child of
        each optimizer side by side (with a sensitivity summary) and the best overall, each
        (optimizer, learning rate)'s mean and std over seeds, the paired comparisons with
        their 95% intervals and verdicts, and warnings. An ordinary job raises
        SageTrainAPIError, code not_a_sweep."""
        return self._request("GET", f"/fine_tuning/jobs/{job_id}/sweep")

    @overload
    def sensitivity(self, job_id: str, format: Literal["json"] = "json") -> dict[str, Any]: ...

    @overload
    def sensitivity(self, job_id: str, format: Literal["png"]) -> bytes: ...

    def sensitivity(self, job_id: str, format: str = "json") -> dict[str, Any] | bytes:
        """The job's final parameter sensitivity report: the JSON report as a dict, or with
        format="png" a plot of it as PNG bytes. A job with no report (not succeeded, or
        trained without a validation file) raises SageTrainAPIError, code
        sensitivity_not_available."""
        if format not in ("json", "png"):
            raise SageTrainError(f"unknown format {format!r}: json or png")
        path = f"/fine_tuning/jobs/{job_id}/sensitivity"
        if format == "json":
            return self._request("GET", path)
        try:
            response = self._http.get(path, params={"format": "png"})
        except httpx.TransportError as exc:
            raise SageTrainError(f"cannot reach {self.base_url}: {exc}") from exc
        _raise_for_error(response)
        return response.content

    def download_checkpoint(self, job_id: str, checkpoint_id: str | None = None,
                            dest: str | os.PathLike[str] = ".",
                            variant: Literal["merged", "adapter"] = "merged") -> Path:
        """Download a checkpoint (default: the job's latest) and extract it under `dest`.
        Returns the extracted folder: with `variant` "merged", a Hugging Face model folder
        (a LoRA job's adapters merged in); with "adapter", a LoRA job's peft adapter folder
        (a job that trained every weight has none: SageTrainAPIError, code no_adapter)."""
        if checkpoint_id is None:
            checkpoints = self.list_checkpoints(job_id, limit=1000)["data"]
            if not checkpoints:
                raise SageTrainError(f"job {job_id} has no checkpoints yet")
            latest = max(checkpoints, key=lambda c: (c["step_number"], c["created_at"]))
            checkpoint_id = str(latest["id"])
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=dest, prefix=".download-", suffix=".tar.gz",
                                         delete=False) as part:
            try:
                url = f"/fine_tuning/jobs/{job_id}/checkpoints/{checkpoint_id}/content"
                with self._http.stream("GET", url, params={"variant": variant}) as response:
                    _raise_for_error(response)
                    for chunk in response.iter_bytes():
                        part.write(chunk)
                part.close()
                return safe_extract(Path(part.name), dest)
            except httpx.TransportError as exc:
                raise SageTrainError(f"download failed: {exc}") from exc
            except tarfile.TarError as exc:
                raise SageTrainError(f"the checkpoint archive is unreadable: {exc}") from exc
            finally:
                Path(part.name).unlink(missing_ok=True)

    def stream(self, job_id: str, last_event_id: str | None = None) -> Iterator[SSEMessage]:
        """The job's live stream: (event name, data, cursor) until `end`, which is yielded
        last. Pass the last cursor seen as `last_event_id` to resume after it."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(self.timeout, read=STREAM_READ_TIMEOUT)
        with self._http.stream("GET", f"/fine_tuning/jobs/{job_id}/stream", headers=headers,
                               timeout=timeout) as response:
            _raise_for_error(response)
            yield from parse_sse(response.iter_lines())

