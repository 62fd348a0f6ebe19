"""/v1/files: upload (validated now), list, get, content, delete."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from api.deps import (
    CurrentKey,
    OwnedFile,
    SessionDep,
    SessionRoute,
    SettingsDep,
    StoreDep,
    UploadDep,
)
from api.schemas import FileDeleted, FilePublic, ListPage
from api.services.files import delete_file, store_upload
from api.services.paging import page
from sage_core.db.models import File
from sage_core.names import DEFAULT_TASK, TASKS

router = APIRouter(prefix="/v1/files", tags=["files"], route_class=SessionRoute)

_UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["file", "purpose"],
        "properties": {
            "file": {"type": "string", "format": "binary",
                     "description": "JSONL, or CSV/TSV with a header; for "
                                    "image-classification also a .zip, .tar, .tar.gz or "
                                    ".tgz of class folders (ImageFolder)"},
            "purpose": {"type": "string", "enum": ["fine-tune"]},
            "task": {"type": "string", "enum": list(TASKS),
                     "description": "sagetrain, optional: the task to validate the rows "
                                    "for. Absent, it is recognised from the rows: "
                                    "`messages` is chat, `prompt`/`completion` is "
                                    "completion, `source`/`target` is seq2seq, `image` "
                                    "or an archive is image-classification, anything "
                                    f"else {DEFAULT_TASK} "
                                    "(text-regression must be named). A task the rows do "
                                    "not fit is a 400 naming both"},
        }}}}}}


@router.post("", response_model=FilePublic, openapi_extra=_UPLOAD_BODY)
def create_file(upload: UploadDep, key: CurrentKey, session: SessionDep, store: StoreDep,
                settings: SettingsDep) -> FilePublic:
    """Upload a training or validation file; a bad one gets 400 naming its first bad lines.
    The answer's `stats` carry the task it was validated for (recognised from the rows when
    none is given) and the rows' statistics."""
    return FilePublic.from_row(store_upload(session, key, upload, store, settings))


@router.get("", response_model=ListPage[FilePublic])
def list_files(key: CurrentKey, session: SessionDep, after: str | None = None,
               limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
               purpose: str | None = None) -> ListPage[FilePublic]:
    stmt = select(File).where(File.owner_id == key.id)
    if purpose:
        stmt = stmt.where(File.purpose == purpose)
    rows, more = page(session, stmt, created=File.created_at, ident=File.id, after=after,
                      limit=limit)
    data = [FilePublic.from_row(r) for r in rows]
    return ListPage(data=data, has_more=more, first_id=data[0].id if data else None,
                    last_id=data[-1].id if data else None)


@router.get("/{file_id}", response_model=FilePublic)
async def get_file(file: OwnedFile) -> FilePublic:
    return FilePublic.from_row(file)


@router.get("/{file_id}/content", response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}}}})
def get_file_content(file: OwnedFile, store: StoreDep) -> StreamingResponse:
    source = store.open(file.storage_key)

    def chunks() -> Iterator[bytes]:
        with source:
            while chunk := source.read(256 * 1024):
                yield chunk

    return StreamingResponse(chunks(), media_type="application/octet-stream",
                             headers={"Content-Length": str(file.bytes)})


@router.delete("/{file_id}", response_model=FileDeleted)
def remove_file(file: OwnedFile, session: SessionDep, store: StoreDep) -> FileDeleted:
    delete_file(session, file, store)
    return FileDeleted(id=file.id)
