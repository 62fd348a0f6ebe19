"""Dependencies as Annotated aliases: the session, the caller's key, and ownership lookups
that answer 404 for anything the key does not own, so handlers stay thin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import cache
from typing import Annotated, TypeVarTuple

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Row, Select, bindparam, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.dispatch import Dispatcher
from api.errors import AuthenticationError
from api.schemas import JobPublic
from api.services import jobs, stream_tokens
from api.uploads import Upload, read_upload
from sage_core.artifacts import ArtifactStore
from sage_core.db.keys import KEY_PREFIX, find_key, hash_key
from sage_core.db.models import ApiKey, Checkpoint, File, Job
from sage_core.errors import NotFoundError
from sage_core.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="An API key from `sagetrain keys create`")


# FastAPI runs a plain `def` dependency in a worker thread: one thread hop per dependency
# per request. Dependencies that do no I/O are `async def` so they run on the event loop.


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


async def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


async def get_session(request: Request) -> AsyncIterator[Session]:
    # Creating a session does no I/O. Closing one that still holds a connection returns it
    # to the pool (a ROLLBACK round trip), so that happens in a worker thread; lookups that
    # end their own transaction (the ownership dependencies) leave nothing to do here.
    session = request.app.state.session_factory()
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
SessionDep = Annotated[Session, Depends(get_session)]


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def get_token(credentials: Credentials) -> str:
    """The bearer token, checked for shape only (no I/O: runs on the event loop)."""
    return _bearer_token(credentials)


def _bearer_token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None:
        raise AuthenticationError(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
    if not credentials.credentials.startswith(KEY_PREFIX) or len(credentials.credentials) > 200:
        raise AuthenticationError("Incorrect API key provided.")
    return credentials.credentials


Token = Annotated[str, Depends(get_token)]
_LIVE_KEY = (ApiKey.revoked_at.is_(None),)


def _authenticate(session: Session, token: str) -> ApiKey:
    key = find_key(session, token)
    if key is None:
        raise AuthenticationError("Incorrect API key provided.")
    return key


def get_current_key(session: SessionDep, token: Token) -> ApiKey:
    return _authenticate(session, token)


CurrentKey = Annotated[ApiKey, Depends(get_current_key)]


# Ownership lookups check the key in the same query (a join on the key's hash), so a request
# for an object costs one query and one worker-thread hop. Only on a miss does a second query
# tell a bad key (401) from someone else's or a missing object (404).


Columns = TypeVarTuple("Columns")


def _not_found(kind: str, ident: str, param: str) -> NotFoundError:
    return NotFoundError(f"No such {kind}: '{ident}'", param=param)


# Statements built once with bind parameters: SQLAlchemy memoizes a statement's cache key, so
# reusing the object skips rebuilding and re-keying it on every request.
@cache
def _owned_file_query() -> Select[File]:
    return select(File).join(ApiKey, ApiKey.id == File.owner_id).where(
        File.id == bindparam("file_id"), ApiKey.key_hash == bindparam("key_hash"), *_LIVE_KEY)


@cache
def _owned_job_query() -> Select[Job]:
    return select(Job).join(ApiKey, ApiKey.id == Job.owner_id).where(
        Job.id == bindparam("job_id"), ApiKey.key_hash == bindparam("key_hash"), *_LIVE_KEY)


@cache
def _owned_checkpoint_query() -> Select[Checkpoint]:
    return (select(Checkpoint).join(Job, Job.id == Checkpoint.job_id)
            .join(ApiKey, ApiKey.id == Job.owner_id).where(
                Checkpoint.id == bindparam("checkpoint_id"),
                Checkpoint.job_id == bindparam("job_id"),
                ApiKey.key_hash == bindparam("key_hash"), *_LIVE_KEY))


def _owned(session: Session, token: str, statement: Select[*Columns],
           params: dict[str, str], missing: NotFoundError) -> Row[*Columns]:
    """The statement's row for the key of `token` (its hash is bound here); `missing` if
    none, after 401 for a key that is wrong or revoked."""
    found = session.execute(statement, {**params, "key_hash": hash_key(token)}).one_or_none()
    if found is None:
        _authenticate(session, token)
        raise missing
    session.commit()  # end the read: the connection goes back to the pool in this thread
    return found


def get_owned_file(file_id: Annotated[str, Path(max_length=64)], token: Token,
                   session: SessionDep) -> File:
    return _owned(session, token, _owned_file_query(), {"file_id": file_id},
                  _not_found("file", file_id, "file_id"))[0]


def get_owned_job(job_id: Annotated[str, Path(max_length=64)], token: Token,
                  session: SessionDep) -> Job:
    return _owned(session, token, _owned_job_query(), {"job_id": job_id},
                  _not_found("fine-tuning job", job_id, "fine_tuning_job_id"))[0]


@cache
def _shown_job_query() -> Select[Job, int | None]:
    return _owned_job_query().add_columns(jobs.queue_position())


def get_shown_job(job_id: Annotated[str, Path(max_length=64)], token: Token,
                  session: SessionDep) -> JobPublic:
    """The owned job as GET shows it, its queue position read in the same query."""
    job, position = _owned(session, token, _shown_job_query(), {"job_id": job_id},
                           _not_found("fine-tuning job", job_id, "fine_tuning_job_id"))
    return JobPublic.from_row(job, position)


def get_streamed_job(
    job_id: Annotated[str, Path(max_length=64)], request: Request, credentials: Credentials,
    session: SessionDep,
    token: Annotated[str | None, Query(
        max_length=300, description="A stream token from POST .../stream_token, instead of "
        "the Authorization header (for EventSource, which cannot send one)")] = None,
) -> Job:
    """The owned job, by the key in the Authorization header or by a stream token."""
    if token is None:
        return get_owned_job(job_id, _bearer_token(credentials), session)
    return stream_tokens.verify(session, request.app.state.stream_token_secret, job_id, token)


OwnedFile = Annotated[File, Depends(get_owned_file)]
OwnedJob = Annotated[Job, Depends(get_owned_job)]
StreamedJob = Annotated[Job, Depends(get_streamed_job)]
ShownJob = Annotated[JobPublic, Depends(get_shown_job)]


def get_owned_checkpoint(job_id: Annotated[str, Path(max_length=64)],
                         checkpoint_id: Annotated[str, Path(max_length=64)], token: Token,
                         session: SessionDep) -> Checkpoint:
    return _owned(session, token, _owned_checkpoint_query(),
                  {"checkpoint_id": checkpoint_id, "job_id": job_id},
                  _not_found("checkpoint", checkpoint_id, "checkpoint_id"))[0]


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
