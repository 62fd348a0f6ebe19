"""/v1/fine_tuning/jobs: create (a sweep too), list, get, cancel, pause, resume, events,
metrics, the live stream and its short-lived tokens, checkpoints and checkpoint downloads,
the sensitivity report, a sweep's report."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from api.deps import (
    CurrentKey,
    DispatcherDep,
    OwnedCheckpoint,
    OwnedJob,
    SessionDep,
    SessionRoute,
    SettingsDep,
    ShownJob,
    StoreDep,
    StreamedJob,
)
from api.dispatch import Dispatcher
from api.errors import InvalidRequestError
from api.schemas import (
    CheckpointPublic,
    EventPublic,
    JobCreate,
    JobPublic,
    ListPage,
    MetricRow,
    SensitivityPublic,
    StreamToken,
    SweepReport,
)
from api.services import checkpoints as checkpoint_service
from api.services import jobs as service
from api.services import sensitivity as sensitivity_service
from api.services import stream_tokens
from api.services import sweeps as sweep_service
from api.services.paging import page
from api.services.stream import PING_SECONDS, job_stream, parse_cursor
from sage_core.artifacts import ArtifactStore
from sage_core.db.models import ApiKey, Checkpoint, Job, JobEvent, JobMetric
from sage_core.errors import ConflictError
from sage_core.net_guard import BlockedTargetError, check_literal_host
from sage_core.settings import Settings

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"],
                   route_class=SessionRoute)
Limit = Annotated[int, Query(ge=1, le=1000)]


def _listing(items: list, more: bool) -> ListPage:  # type: ignore[type-arg]
    return ListPage(data=items, has_more=more, first_id=items[0].id if items else None,
                    last_id=items[-1].id if items else None)


@router.post("", response_model=JobPublic)
async def create_job(body: JobCreate, key: CurrentKey, session: SessionDep,
                     settings: SettingsDep, store: StoreDep, dispatcher: DispatcherDep,
                     response: Response,
                     idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
                     ) -> JobPublic:
    """Queue a fine-tuning job. The same Idempotency-Key and body return the same job.

    With `sweep` or `compare_to`: a parent job (`running`, never trained itself) and one
    queued child job per optimizer and learning rate; the parent is returned."""
    _refuse_private_tracking(body, settings)
    # async, with the blocking part in one worker thread: a sync route would cost one more
    # thread hop, for FastAPI's check of the answer.
    job, created = await run_in_threadpool(
        _create, session, key, body, idempotency_key, store, settings, dispatcher)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return job


def _refuse_private_tracking(body: JobCreate, settings: Settings) -> None:
    """A user's MLflow server on a loopback, private or link-local address is refused now,
    as a webhook URL is; the worker checks the name's addresses again when it connects."""
    if settings.allow_private_targets:
        return
    for index, integration in enumerate(body.integrations):
        uri = integration.mlflow.tracking_uri if integration.mlflow else None
        if uri is None or uri == settings.mlflow_tracking_uri:
            continue
        try:
            check_literal_host(uri)
        except BlockedTargetError as exc:
            raise InvalidRequestError(
                f"Invalid value for 'integrations[{index}].mlflow.tracking_uri': {exc}",
                param=f"integrations[{index}].mlflow.tracking_uri",
                code="invalid_value") from None


def _create(session: Session, key: ApiKey, body: JobCreate, idempotency_key: str | None,
            store: ArtifactStore, settings: Settings, dispatcher: Dispatcher,
            ) -> tuple[JobPublic, bool]:
    try:
        if sweep_service.is_sweep_request(body):
            job, queued, created = sweep_service.create_sweep(
                session, key, body, idempotency_key=idempotency_key, store=store,
                settings=settings)
        else:
            job, created = service.create_job(
                session, key, body, idempotency_key=idempotency_key, store=store,
                settings=settings)
            queued = [job.id] if created else []
    finally:
        session.close()  # here, in this thread: see api/deps.py's get_session
    for job_id in queued:
        dispatcher.dispatch(job_id)  # only after the rows are committed
    return job, created


@router.get("", response_model=ListPage[JobPublic])
def list_jobs(key: CurrentKey, session: SessionDep, after: str | None = None,
              limit: Limit = 20) -> ListPage[JobPublic]:
    rows, more = page(session, select(Job).where(Job.owner_id == key.id),
                      created=Job.created_at, ident=Job.id, after=after, limit=limit)
    return _listing(service.to_public(session, rows), more)


@router.get("/{job_id}", response_model=JobPublic)
async def get_job(job: ShownJob) -> JobPublic:
    return job  # async: ShownJob did the reads


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job: OwnedJob, session: SessionDep) -> JobPublic:
    """Queued: cancelled at once. Running: cancelled at once; its process stops soon after.
    A sweep's parent: cancelled with every unfinished child."""
    service.cancel_job(session, job)
    return service.to_public(session, [job])[0]


@router.post("/{job_id}/pause", response_model=JobPublic)
def pause_job(job: OwnedJob, session: SessionDep) -> JobPublic:
    """Queued: paused at once. Running: saves a checkpoint, stops, then reads `paused`. A
    sweep's parent cannot be paused (409); its children can."""
    if job.sweep is not None:
        raise ConflictError(f"Job {job.id} is a sweep; pause its child jobs instead",
                            param="fine_tuning_job_id", code="invalid_job_state")
    service.pause_job(session, job)
    return service.to_public(session, [job])[0]


@router.post("/{job_id}/resume", response_model=JobPublic)
def resume_job(job: OwnedJob, session: SessionDep, dispatcher: DispatcherDep,
               settings: SettingsDep) -> JobPublic:
    """Paused: queued again, to continue from its last checkpoint (429 if the key's quota
    of jobs queued or running is full)."""
    if service.resume_job(session, job, settings):
        dispatcher.dispatch(job.id)
    return service.to_public(session, [job])[0]


@router.get("/{job_id}/events", response_model=ListPage[EventPublic])
def list_events(job: OwnedJob, session: SessionDep, after: str | None = None,
                limit: Limit = 20) -> ListPage[EventPublic]:
    rows, more = page(session, select(JobEvent).where(JobEvent.job_id == job.id),
                      created=JobEvent.created_at, ident=JobEvent.id, after=after, limit=limit)
    return _listing([EventPublic.from_row(r) for r in rows], more)


@router.get("/{job_id}/metrics", response_model=ListPage[MetricRow])
def list_metrics(job: OwnedJob, session: SessionDep,
                 from_step: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,  # a database integer
                 limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000) -> ListPage[MetricRow]:
    """Every logged row from `from_step` on, oldest first."""
    rows = session.scalars(
        select(JobMetric).where(JobMetric.job_id == job.id, JobMetric.step >= from_step)
        .order_by(JobMetric.step, JobMetric.id).limit(limit + 1)).all()
    data = [MetricRow.from_row(r) for r in rows[:limit]]
    return ListPage(data=data, has_more=len(rows) > limit)


STREAM_DESCRIPTION = """The job's events and metrics rows as Server-Sent Events, as they are
written, oldest first; the stream ends once the job has ended.

Messages: `event: event` (data: a `fine_tuning.job.event`), `event: metrics` (data: a row as
/metrics gives it) and, last, `event: end` (data: `{"status": "<final status>"}`). A comment
line is sent every 15 s to keep the connection alive.

Every message's `id` is the stream's cursor, `<event id>.<metrics row id>`: the last event
and the last metrics row sent so far, `0` for either before the first of its kind (e.g.
`ftevent-01jd8v2k3m4n5p6q7r8s9t0.12`, or `0.3` with no event yet). Send the last one received
as the `Last-Event-ID` header to resume after it, with nothing repeated; a malformed cursor,
or one naming no event of this job, is 400.

Instead of the Authorization header (which a browser's EventSource cannot send), `?token=`
takes a token from POST .../stream_token: good for this job only, for a few minutes, while
its key is live."""


@router.get("/{job_id}/stream", response_class=EventSourceResponse,
            description=STREAM_DESCRIPTION,
            responses={200: {"content": {"text/event-stream": {}}}})
def stream_job(job: StreamedJob, session: SessionDep, request: Request,
               last_event_id: Annotated[str | None, Header(max_length=200)] = None,
               ) -> EventSourceResponse:
    """Events and metrics as Server-Sent Events until the job ends; resumes from
    `Last-Event-ID` (cursor format in api/services/stream.py)."""
    cursor = parse_cursor(session, job.id, last_event_id)
    session.commit()  # the stream polls with sessions of its own
    return EventSourceResponse(job_stream(request.app.state.read_session_factory, job.id, cursor),
                               ping=PING_SECONDS)


@router.post("/{job_id}/stream_token", response_model=StreamToken)
def create_stream_token(job: OwnedJob, request: Request) -> StreamToken:
    """A token that reads this job's stream (`GET .../stream?token=`) for 5 minutes, while
    the key that asked for it (the job's owner) is live; the key never goes into a URL."""
    token, expires = stream_tokens.issue(request.app.state.stream_token_secret, job.id,
                                         job.owner_id)
    return StreamToken(fine_tuning_job_id=job.id, token=token, expires_at=expires)


@router.get("/{job_id}/checkpoints", response_model=ListPage[CheckpointPublic])
def list_checkpoints(job: OwnedJob, session: SessionDep, after: str | None = None,
                     limit: Limit = 10) -> ListPage[CheckpointPublic]:
    """The job's checkpoints, newest first. A sweep's parent has none of its own: it lists
    its promoted (best) child's, each naming that child in `fine_tuning_job_id` (download
    them under the child's id); none until the sweep has settled on a best child."""
    source = job.id if job.sweep is None else job.sweep.get("best_job_id")
    if source is None:
        return _listing([], False)
    rows, more = page(session, select(Checkpoint).where(Checkpoint.job_id == source),
                      created=Checkpoint.created_at, ident=Checkpoint.id, after=after,
                      limit=limit)
    return _listing([CheckpointPublic.from_row(r) for r in rows], more)


CheckpointVariant = Literal["merged", "adapter"]


@router.get("/{job_id}/checkpoints/{checkpoint_id}/content", response_class=StreamingResponse,
            responses={200: {"content": {"application/gzip": {}}},
                       400: {"description": "variant=adapter on a checkpoint of a job that "
                                            "trained every weight (code `no_adapter`), or "
                                            "an unknown variant"}})
def download_checkpoint(
        checkpoint: OwnedCheckpoint, store: StoreDep,
        variant: Annotated[CheckpointVariant, Query(
            description="merged (default): the whole model as a Hugging Face folder (a LoRA "
                        "job's adapters merged in); adapter: a LoRA job's peft adapter "
                        "folder alone (adapter_config.json and the adapter weights), to load "
                        "on top of the base model")] = "merged",
) -> StreamingResponse:
    """The checkpoint as a .tar.gz of one folder: a Hugging Face model folder
    (`from_pretrained`), or with `variant=adapter` a LoRA job's peft adapter folder."""
    body = checkpoint_service.archive(store, checkpoint, variant)
    return StreamingResponse(body.chunks, media_type="application/gzip", headers={
        "Content-Disposition": f'attachment; filename="{body.name}.tar.gz"'})


@router.get("/{job_id}/sensitivity", response_model=SensitivityPublic,
            responses={200: {"content": {"image/png": {}}},
                       404: {"description": "No such job, or it has no report (code "
                                            "`sensitivity_not_available`)"}})
def get_sensitivity(job: OwnedJob,
                    format: Literal["json", "png"] = "json") -> SensitivityPublic | Response:
    """The final model's parameter sensitivity report (I = |θ·∂L/∂θ|, measured on the
    validation data once the job has succeeded). `format=png`: a plot of the overall
    log10(I) histogram and each block's mean sensitivity. 404 with code
    `sensitivity_not_available` while the job has not succeeded, or when it was trained
    without a validation file."""
    report = sensitivity_service.report_of(job)
    if format == "png":
        return Response(sensitivity_service.render_png(job, report), media_type="image/png",
                        headers={"Content-Disposition":
                                 f'inline; filename="{job.id}-sensitivity.png"'})
    return SensitivityPublic.model_validate(sensitivity_service.to_body(job, report))


@router.get("/{job_id}/sweep", response_model=SweepReport,
            responses={404: {"description": "No such job, or not a sweep's parent (code "
                                            "`not_a_sweep`)"}})
def get_sweep(job: OwnedJob, session: SessionDep) -> SweepReport:
    """A sweep's report: every child (optimizer, learning rate, status, last validation
    metrics), the best succeeded child of each optimizer side by side with a summary of its
    sensitivity report, and the best overall (the one whose model the parent took)."""
    return sweep_service.report(session, job)
