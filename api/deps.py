"""Dependencies as Annotated aliases: the session, the caller's key, and ownership lookups
that answer 404 for anything the key does not own, so handlers stay thin."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Select, and_, bindparam, select
from sqlalchemy.orm import Session, make_transient_to_detached
from starlette.concurrency import run_in_threadpool

from api.dispatch import Dispatcher
from api.errors import AuthenticationError
from api.services.jobs import queue_position_expr, remember_position
from api.uploads import Upload, read_upload
from sage_core.artifacts import ArtifactStore
from sage_core.db.keys import KEY_PREFIX, find_key, hash_key
from sage_core.db.models import ApiKey, Checkpoint, File, Job
from sage_core.db.session import statements_commit_alone
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


@dataclass(frozen=True)
class AppServices:
    settings: Settings
    store: ArtifactStore
    dispatcher: Dispatcher


async def get_services(request: Request) -> AppServices:
    """Settings, store and dispatcher as one dependency, for the hottest route (job
    creation): FastAPI spends tens of microseconds of CPU on each dependency of a request."""
    state = request.app.state
    return AppServices(state.settings, state.store, state.dispatcher)


ServicesDep = Annotated[AppServices, Depends(get_services)]


async def get_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The bearer token, checked for shape only (no I/O: runs on the event loop)."""
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


async def _peek_training_file(request: Request) -> str | None:
    """`training_file` from the raw JSON body, before validation (FastAPI has read and
    cached the body already; a bad body is validated, and refused, later)."""
    try:
        body = await request.json()
    except ValueError:
        return None
    value = body.get("training_file") if isinstance(body, dict) else None
    return value if isinstance(value, str) and len(value) <= 64 else None


@cache
def _key_and_file_query() -> Select[ApiKey, File | None]:
    return select(ApiKey, File).outerjoin(File, and_(
        File.owner_id == ApiKey.id, File.id == bindparam("file_id"))).where(
        ApiKey.key_hash == bindparam("key_hash"), *_LIVE_KEY)


@dataclass(frozen=True)
class KeyWithFile:
    key: ApiKey
    training_file: File | None  # the key's file named by the body's training_file, if any


KEY_CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class _CachedKey:
    row: dict[str, Any]  # the api_keys row's values
    read_at: float


class KeyCache:
    """Key hash -> the key's row, as read from the database at most `ttl` seconds ago; only
    live keys are kept (a wrong key is looked up every time). Job creation uses it: its
    insert checks the key again in the statement that writes (api/services/jobs.py), so a
    revoked key never creates a job; the cache only lets a request skip the lookup before
    its body is validated. Lives on the event loop: no lock."""

    def __init__(self, ttl: float = KEY_CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000):
        self.ttl = ttl
        self._clock = clock
        self._max_keys = max_keys
        self._rows: dict[str, _CachedKey] = {}

    def get(self, key_hash: str) -> ApiKey | None:
        found = self._rows.get(key_hash)
        if found is None:
            return None
        if self._clock() - found.read_at > self.ttl:
            del self._rows[key_hash]
            return None
        key = ApiKey(**found.row)  # a row of the request's own, never a shared one
        make_transient_to_detached(key)
        return key

    def put(self, key: ApiKey) -> None:
        if len(self._rows) >= self._max_keys:
            self._rows.clear()
        self._rows[key.key_hash] = _CachedKey(
            {attr: getattr(key, attr) for attr in _KEY_ATTRS}, self._clock())


_KEY_ATTRS = ("id", "name", "key_hash", "prefix", "created_at", "revoked_at")


def _key_cache(request: Request) -> KeyCache:
    keys: KeyCache | None = getattr(request.app.state, "key_cache", None)
    if keys is None:
        keys = request.app.state.key_cache = KeyCache()
    return keys


def _key_and_file(session: Session, key_hash: str, file_id: str | None) -> KeyWithFile | None:
    alone = statements_commit_alone(session)
    found = session.execute(_key_and_file_query(),
                            {"key_hash": key_hash, "file_id": file_id}).one_or_none()
    if alone:
        session.commit()  # no round trip: the connection goes back to the pool
    return None if found is None else KeyWithFile(found[0], found[1])


async def get_key_with_training_file(request: Request, session: SessionDep,
                                     token: Token) -> KeyWithFile:
    """The caller's key, checked before the body is, and the training file the body names
    when it has to be read: a key read in the last KEY_CACHE_SECONDS costs no query and no
    worker thread; otherwise the key and the file in one query."""
    key_hash = hash_key(token)
    keys = _key_cache(request)
    key = keys.get(key_hash)
    if key is not None:
        return KeyWithFile(key, None)
    found = await run_in_threadpool(_key_and_file, session, key_hash,
                                    await _peek_training_file(request))
    if found is None:
        raise AuthenticationError("Incorrect API key provided.")
    keys.put(found.key)
    return found


KeyAndTrainingFile = Annotated[KeyWithFile, Depends(get_key_with_training_file)]

# Ownership lookups check the key in the same query (a join on the key's hash), so a request
# for an object costs one query and one worker-thread hop. Only on a miss does a second query
# tell a bad key (401) from someone else's or a missing object (404).


def _not_found(kind: str, ident: str, param: str) -> NotFoundError:
    return NotFoundError(f"No such {kind}: '{ident}'", param=param)


# Statements built once with bind parameters: SQLAlchemy memoizes a statement's cache key, so
# reusing the object skips rebuilding and re-keying it on every request.
@cache
def _owned_file_query() -> Select[File]:
    return select(File).join(ApiKey, ApiKey.id == File.owner_id).where(
        File.id == bindparam("file_id"), ApiKey.key_hash == bindparam("key_hash"), *_LIVE_KEY)


@cache
def _owned_job_query() -> Select[Job, int | None]:
    return select(Job, queue_position_expr()).join(ApiKey, ApiKey.id == Job.owner_id).where(
        Job.id == bindparam("job_id"), ApiKey.key_hash == bindparam("key_hash"), *_LIVE_KEY)


@cache
def _owned_checkpoint_query() -> Select[Checkpoint]:
    return (select(Checkpoint).join(Job, Job.id == Checkpoint.job_id)
            .join(ApiKey, ApiKey.id == Job.owner_id).where(
                Checkpoint.id == bindparam("checkpoint_id"),
                Checkpoint.job_id == bindparam("job_id"),
                ApiKey.key_hash == bindparam("key_hash"), *_LIVE_KEY))


def get_owned_file(file_id: Annotated[str, Path(max_length=64)], token: Token,
                   session: SessionDep) -> File:
    row = session.scalar(_owned_file_query(), {"file_id": file_id, "key_hash": hash_key(token)})
    if row is None:
        _authenticate(session, token)
        raise _not_found("file", file_id, "file_id")
    session.commit()  # end the read: the connection goes back to the pool in this thread
    return row


def get_owned_job(job_id: Annotated[str, Path(max_length=64)], token: Token,
                  session: SessionDep) -> Job:
    found = session.execute(_owned_job_query(),
                            {"job_id": job_id, "key_hash": hash_key(token)}).one_or_none()
    if found is None:
        _authenticate(session, token)
        raise _not_found("fine-tuning job", job_id, "fine_tuning_job_id")
    job, position = found
    remember_position(session, job.id, position)  # saves GET a query for queue_position
    session.commit()  # end the read: the connection goes back to the pool in this thread
    return job


OwnedFile = Annotated[File, Depends(get_owned_file)]
OwnedJob = Annotated[Job, Depends(get_owned_job)]


def get_owned_checkpoint(job_id: Annotated[str, Path(max_length=64)],
                         checkpoint_id: Annotated[str, Path(max_length=64)], token: Token,
                         session: SessionDep) -> Checkpoint:
    row = session.scalar(_owned_checkpoint_query(), {
        "checkpoint_id": checkpoint_id, "job_id": job_id, "key_hash": hash_key(token)})
    if row is None:
        _authenticate(session, token)
        raise _not_found("checkpoint", checkpoint_id, "checkpoint_id")
    session.commit()  # end the read: the connection goes back to the pool in this thread
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
