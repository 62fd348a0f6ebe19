"""Dependencies as Annotated aliases: the session, the caller's key, and ownership lookups
that answer 404 for anything the key does not own, so handlers stay thin."""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from functools import cache
from typing import Annotated, Any, TypeVarTuple

import anyio
from fastapi import Depends, Path, Query, Request
from fastapi.routing import APIRoute
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


_READING_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CLOSING_THREADS = 8


async def get_session(request: Request) -> AsyncIterator[Session]:
    """The request's session: read-only for GET (on SQLite its transactions begin DEFERRED,
    so they never hold the write lock), else one whose transactions begin IMMEDIATE.

    No transaction may stay open while its request waits for a worker thread: a request
    that holds SQLite's write lock and waits for a thread, while every thread waits for
    that lock, locks the server up. Dependencies end their transactions in the thread they
    ran in; what a handler leaves open is rolled back here in threads of its own, which
    never wait for the request threads."""
    state = request.app.state
    factory = state.read_session_factory if request.method in _READING_METHODS \
        else state.session_factory
    session = factory()  # no I/O until first used
    try:
        yield session
    finally:
        if session.in_transaction():
            if getattr(state, "closing_threads", None) is None:
                state.closing_threads = anyio.CapacityLimiter(_CLOSING_THREADS)
            await anyio.to_thread.run_sync(session.close, limiter=state.closing_threads)
        else:
            session.close()


class SessionRoute(APIRoute):
    """A route whose plain-`def` handler ends the transactions of its sessions in its own
    worker thread, when it returns or raises. FastAPI checks a sync handler's answer in
    one more worker thread; a session still open then would hold a pooled connection, and
    on SQLite a snapshot or the write lock, while it waits for a thread (see get_session).
    Every router uses it."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any):
        if not inspect.iscoroutinefunction(endpoint):
            endpoint = _ending_sessions(endpoint)
        super().__init__(path, endpoint, **kwargs)


def _ending_sessions(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(endpoint)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return endpoint(*args, **kwargs)
        finally:
            for value in kwargs.values():
                if isinstance(value, Session) and value.in_transaction():
                    value.close()  # loaded attributes stay readable
    return run


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


def authenticate(request: Request, token: str) -> ApiKey:
    """The live key row for `token` (401 if none), read in a short read-only transaction that
    ends here, in the calling thread (blocking: call it from a worker thread)."""
    with request.app.state.read_session_factory() as session:
        return _authenticate(session, token)


async def get_current_key(request: Request, token: Token) -> ApiKey:
    # A key that the body guard (api/body_guard.py) already checked is not read again.
    known = getattr(request.state, "api_key", None)
    if isinstance(known, ApiKey) and known.key_hash == hash_key(token):
        return known
    return await run_in_threadpool(authenticate, request, token)


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
    try:
        found = session.execute(statement, {**params, "key_hash": hash_key(token)}).one_or_none()
        if found is None:
            _authenticate(session, token)
            raise missing
    except BaseException:
        session.rollback()  # here, in this thread: see get_session
        raise
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
    try:
        return stream_tokens.verify(session, request.app.state.stream_token_secret, job_id,
                                    token)
    except BaseException:
        session.rollback()  # here, in this thread: see get_session
        raise


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
