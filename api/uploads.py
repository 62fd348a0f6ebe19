"""Streaming multipart parsing for uploads, with the size limit enforced while reading.

Starlette's form parser spools a file of any size before the handler runs; this one
writes the single `file` part straight to a scratch file in the artifact store and stops
with 413 as soon as it passes the limit. Other form fields are small strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from api.errors import InvalidRequestError, PayloadTooLargeError

MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 20
# multipart framing (boundaries, part headers) around the file itself
ENVELOPE_BYTES = 64 * 1024


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    path: Path | None = None  # the file's bytes, in the store's scratch area
    size: int = 0


class _Collector:
    def __init__(self, scratch: Path, max_file_bytes: int):
        self.upload = Upload()
        self._scratch, self._max = scratch, max_file_bytes
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name: str | None = None
        self._is_file = False
        self._buffer = bytearray()
        self._out: IO[bytes] | None = None

    def on_part_begin(self) -> None:
        self._disposition, self._name, self._is_file = b"", None, False
        self._buffer.clear()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise InvalidRequestError("a multipart part has no name", param="file")
        self._name = options[b"name"].decode("utf-8", "replace")
        if self._name == "file" and b"filename" in options:
            if self.upload.path is not None:
                raise InvalidRequestError("send exactly one file", param="file")
            self._is_file = True
            self.upload.filename = options[b"filename"].decode("utf-8", "replace")
            self.upload.path = self._scratch
            self._out = self._scratch.open("wb")
        elif len(self.upload.fields) >= MAX_FIELDS:
            raise InvalidRequestError("too many form fields")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self.upload.size += end - start
            if self.upload.size > self._max:
                raise PayloadTooLargeError(
                    f"file larger than the limit of {self._max} bytes", param="file")
            assert self._out is not None
            self._out.write(data[start:end])
            return
        if len(self._buffer) + (end - start) > MAX_FIELD_BYTES:
            raise InvalidRequestError(f"form field {self._name!r} is too long", param=self._name)
        self._buffer.extend(data[start:end])

    def on_part_end(self) -> None:
        if self._is_file:
            assert self._out is not None
            self._out.close()
            self._out = None
        elif self._name is not None:
            self.upload.fields[self._name] = self._buffer.decode("utf-8", "replace")

    def close(self) -> None:
        if self._out is not None:
            self._out.close()


async def read_upload(request: Request, scratch: Path, max_file_bytes: int) -> Upload:
    """Parse a multipart body; the `file` part lands in `scratch`. Removes `scratch` on error."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise InvalidRequestError("expected a multipart/form-data body", param="file")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_file_bytes + ENVELOPE_BYTES:
        raise PayloadTooLargeError(f"file larger than the limit of {max_file_bytes} bytes",
                                   param="file")
    collector = _Collector(scratch, max_file_bytes)
    callbacks = {name: getattr(collector, name) for name in (
        "on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value",
        "on_header_end", "on_headers_finished")}
    parser = MultipartParser(params[b"boundary"], callbacks)  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except BaseException as exc:
        collector.close()
        scratch.unlink(missing_ok=True)
        if isinstance(exc, FormParserError):
            raise InvalidRequestError(f"malformed multipart body: {exc}", param="file") from None
        raise
    collector.close()
    return collector.upload
