"""Uploaded files: validate with sage_core.datafiles, store under a generated id."""

from __future__ import annotations

from typing import cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import InvalidRequestError
from api.uploads import Upload
from sage_core.artifacts import ArtifactStore
from sage_core.datafiles import Dataset, parse_dataset
from sage_core.db import limits
from sage_core.db.ids import FILE, new_id
from sage_core.db.models import ApiKey, File, Job, JobStatus
from sage_core.errors import ConflictError, DataFileError, NotFoundError
from sage_core.names import DEFAULT_TASK, TASKS, TEXT_TASKS, TaskName
from sage_core.settings import Settings

PURPOSE_FINE_TUNE = "fine-tune"
PURPOSE_RESULTS = "fine-tune-results"
_UNFINISHED = (JobStatus.VALIDATING_FILES, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED)


def _validate(upload: Upload, settings: Settings) -> tuple[str, Dataset]:
    """The purpose and the validated rows. With no `task` field the task is the one the
    rows' layout shows (chat, completion, seq2seq, image-classification for `image` rows
    and archives, else text-classification); a task given that
    the rows do not fit is a DataFileError naming both."""
    purpose = upload.fields.get("purpose")
    if purpose != PURPOSE_FINE_TUNE:
        raise InvalidRequestError(
            f"purpose must be '{PURPOSE_FINE_TUNE}', got {purpose!r}", param="purpose")
    task = upload.fields.get("task") or None
    if task is not None and task not in TASKS:
        raise InvalidRequestError(f"task must be one of {', '.join(TASKS)}; got {task!r}",
                                  param="task")
    if upload.path is None or upload.filename is None:
        raise InvalidRequestError("missing the 'file' part", param="file")
    if upload.size == 0:
        raise InvalidRequestError("the file is empty", param="file")
    dataset = parse_dataset(upload.path.read_bytes(), upload.filename, task,
                            max_rows=settings.max_file_rows)
    return purpose, dataset


def store_upload(session: Session, key: ApiKey, upload: Upload, store: ArtifactStore,
                 settings: Settings) -> File:
    """Validate and keep an upload, with the task it was validated for (detected when not
    given); DataFileError (400) names the first bad lines. A key over its upload rate or
    storage quota gets 429 (`sage_core.db.limits`): checked before the file is parsed, and
    again, with the key locked, in the transaction that adds the row."""
    limited = limits.file_limits_apply(key, settings)
    if limited:
        limits.check_file_creation(session, key, settings, size=upload.size)
        session.commit()
    purpose, dataset = _validate(upload, settings)
    assert upload.path is not None and upload.filename is not None
    file_id = new_id(FILE)
    # The extension is the detected format, so readers later detect the same one.
    storage_key = f"files/{file_id}.{dataset.format}"
    size = store.put_file(storage_key, upload.path)
    row = File(id=file_id, owner_id=key.id, filename=upload.filename[:512], purpose=purpose,
               bytes=size, storage_key=storage_key, status="processed", task=dataset.task,
               stats=dataset.stats())
    try:
        if limited:
            limits.lock_key(session, key)
            limits.check_file_creation(session, key, settings, size=size)
        session.add(row)
        session.commit()
    except BaseException:
        session.rollback()
        store.delete(storage_key)
        raise
    return row


def task_family(task: str) -> str:
    """What a file of `task` holds: "text" for classification and regression (their rows
    share a layout, so a text file may serve either), else the task itself."""
    return "text" if task in TEXT_TASKS else task


def file_rows(file: File) -> int | None:
    """The examples in `file`, from the stats counted at upload; None if unknown."""
    stats = file.stats or {}
    rows = stats.get("rows", stats.get("examples"))
    return rows if isinstance(rows, int) else None


def file_task(file: File) -> TaskName:
    """The task `file` was validated for (one of TASKS: uploads check it); rows from
    before files kept their task were validated as the default."""
    return cast(TaskName, file.task or DEFAULT_TASK)


def ensure_file_for_task(file: File, task: str, store: ArtifactStore, settings: Settings,
                         param: str) -> None:
    """`file` holds data for `task`: a file of another family (chat, completion, text) is a
    400 naming both tasks; a text file validated for the other text task is checked again
    for `task` (400 if it fails)."""
    held = file_task(file)
    if held == task:
        return
    if task_family(held) != task_family(task):
        raise InvalidRequestError(
            f"{param} {file.id} holds {task_family(held)} data (task {held}), but the job's "
            f"task is {task}", param=param, code="invalid_file")
    with store.open(file.storage_key) as source:
        data = source.read()
    try:
        parse_dataset(data, file.filename, task, max_rows=settings.max_file_rows)
    except DataFileError as exc:
        exc.param = param
        raise


def delete_file(session: Session, file: File, store: ArtifactStore) -> None:
    """Delete the file unless an unfinished job uses it (409). Its row is locked for update
    first: a job being created with it (which holds it share-locked) commits before the
    check below looks for it, or finds the file gone."""
    locked = session.scalar(select(File.id).where(File.id == file.id).with_for_update())
    if locked is None:
        raise NotFoundError(f"No such file: '{file.id}'", param="file_id")
    in_use = session.scalar(select(Job.id).where(
        Job.owner_id == file.owner_id, Job.status.in_(_UNFINISHED),
        (Job.training_file_id == file.id) | (Job.validation_file_id == file.id)).limit(1))
    if in_use:
        raise ConflictError(f"file {file.id} is used by the unfinished job {in_use}",
                            param="file_id", code="file_in_use")
    session.delete(file)
    session.commit()
    store.delete(file.storage_key)
