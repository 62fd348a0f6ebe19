"""/v1/models: the catalog's base models and the caller's fine-tuned ones."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from sqlalchemy import select

from api.deps import CurrentKey, SessionDep, SessionRoute, SettingsDep
from api.schemas import ListPage, ModelPublic, ts
from sage_core.catalog import list_models
from sage_core.db.models import Job, JobStatus
from sage_core.errors import NotFoundError
from sage_core.settings import Settings

router = APIRouter(prefix="/v1/models", tags=["models"], route_class=SessionRoute)


def _created(path: str) -> int:
    try:
        return int(Path(path).stat().st_mtime)
    except OSError:
        return 0


def _all_models(key_id: str, session: SessionDep, settings: Settings) -> list[ModelPublic]:
    base = [ModelPublic(id=m.name, created=_created(m.path), owned_by="sagetrain")
            for m in list_models(settings)]
    tuned = session.execute(
        select(Job.fine_tuned_model, Job.finished_at).where(
            Job.owner_id == key_id, Job.status == JobStatus.SUCCEEDED,
            Job.fine_tuned_model.is_not(None)).order_by(Job.created_at.desc())).all()
    mine: dict[str, ModelPublic] = {}
    for name, done in tuned:
        if name and name not in mine:  # a sweep's parent names its best child's model
            mine[name] = ModelPublic(id=name, created=ts(done) or 0, owned_by=key_id)
    return base + list(mine.values())


@router.get("", response_model=ListPage[ModelPublic])
def list_all(key: CurrentKey, session: SessionDep, settings: SettingsDep) -> ListPage[ModelPublic]:
    return ListPage(data=_all_models(key.id, session, settings))


@router.get("/{model:path}", response_model=ModelPublic)
def get_model(model: Annotated[str, PathParam(max_length=400)], key: CurrentKey,
              session: SessionDep, settings: SettingsDep) -> ModelPublic:
    for item in _all_models(key.id, session, settings):
        if item.id == model:
            return item
    raise NotFoundError(f"The model '{model}' does not exist", param="model",
                        code="model_not_found")
