"""Dependencies as Annotated aliases: the session, the caller's key, and ownership lookups
that answer 404 for anything the key does not own, so handlers stay thin."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.dispatch import Dispatcher
from api.errors import AuthenticationError
from api.uploads import Upload, read_upload
from sage_core.artifacts import ArtifactStore
from sage_core.db.keys import find_key
from sage_core.db.models import ApiKey, Checkpoint, File, Job
from sage_core.errors import NotFoundError
from sage_core.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="An API key from `sagetrain keys create`")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.session_factory() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
SessionDep = Annotated[Session, Depends(get_session)]


def get_current_key(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    if credentials is None:
        raise AuthenticationError(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
    key = find_key(session, credentials.credentials)
    if key is None:
        raise AuthenticationError("Incorrect API key provided.")
    return key


CurrentKey = Annotated[ApiKey, Depends(get_current_key)]


def _not_found(kind: str, ident: str, param: str) -> NotFoundError:
    return NotFoundError(f"No such {kind}: '{ident}'", param=param)


def get_owned_file(file_id: Annotated[str, Path(max_length=64)], key: CurrentKey,
                   session: SessionDep) -> File:
    row = session.scalar(select(File).where(File.id == file_id, File.owner_id == key.id))
    if row is None:
        raise _not_found("file", file_id, "file_id")
    return row


def get_owned_job(job_id: Annotated[str, Path(max_length=64)], key: CurrentKey,
                  session: SessionDep) -> Job:
    row = session.scalar(select(Job).where(Job.id == job_id, Job.owner_id == key.id))
    if row is None:
        raise _not_found("fine-tuning job", job_id, "fine_tuning_job_id")
    return row


OwnedFile = Annotated[File, Depends(get_owned_file)]
OwnedJob = Annotated[Job, Depends(get_owned_job)]


def get_owned_checkpoint(checkpoint_id: Annotated[str, Path(max_length=64)], job: OwnedJob,
                         session: SessionDep) -> Checkpoint:
    row = session.scalar(select(Checkpoint).where(
        Checkpoint.id == checkpoint_id, Checkpoint.job_id == job.id))
    if row is None:
        raise _not_found("checkpoint", checkpoint_id, "checkpoint_id")
    return row


OwnedCheckpoint = Annotated[Checkpoint, Depends(get_owned_checkpoint)]


async def get_upload(request: Request, key: CurrentKey) -> AsyncIterator[Upload]:
    """The multipart upload, read only once the caller's key checked out."""
    store: ArtifactStore = request.app.state.store
    settings: Settings = request.app.state.settings
    scratch = store.scratch_file()
    upload = await read_upload(request, scratch, settings.max_upload_bytes)
    try:
        yield upload
    finally:
        scratch.unlink(missing_ok=True)  # gone already if the handler stored it


UploadDep = Annotated[Upload, Depends(get_upload)]
