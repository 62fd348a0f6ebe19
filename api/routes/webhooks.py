"""/v1/webhooks: a key's endpoints for job events (create, list, delete). Sending is
`sage_core.webhooks`; what is sent, and when, `sage_core.db.webhooks`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from sqlalchemy import CursorResult, delete, select

from api.deps import CurrentKey, SessionDep, SessionRoute
from api.schemas import ListPage, WebhookCreate, WebhookPublic
from sage_core.db.models import WebhookDelivery, WebhookEndpoint
from sage_core.db.webhooks import create_endpoint
from sage_core.errors import NotFoundError

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], route_class=SessionRoute)


@router.post("", response_model=WebhookPublic)
def create_webhook(body: WebhookCreate, key: CurrentKey, session: SessionDep) -> WebhookPublic:
    """Send this key's job events (succeeded, failed, cancelled) to `url`, signed the
    Standard Webhooks way with the returned `secret`, which is shown only here."""
    row = create_endpoint(session, key.id, body.url, list(body.events) if body.events else None)
    session.commit()
    return WebhookPublic.from_row(row, with_secret=True)


@router.get("", response_model=ListPage[WebhookPublic])
def list_webhooks(key: CurrentKey, session: SessionDep) -> ListPage[WebhookPublic]:
    rows = session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.owner_id == key.id)
                           .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)).all()
    data = [WebhookPublic.from_row(r) for r in rows]
    return ListPage(data=data, first_id=data[0].id if data else None,
                    last_id=data[-1].id if data else None)


@router.delete("/{webhook_id}")
def delete_webhook(webhook_id: Annotated[str, Path(max_length=64)], key: CurrentKey,
                   session: SessionDep) -> dict[str, object]:
    """Stop sending to this endpoint; its pending deliveries are dropped."""
    owned = select(WebhookEndpoint.id).where(WebhookEndpoint.id == webhook_id,
                                             WebhookEndpoint.owner_id == key.id)
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id.in_(owned)))
    result = session.execute(delete(WebhookEndpoint).where(
        WebhookEndpoint.id == webhook_id, WebhookEndpoint.owner_id == key.id))
    assert isinstance(result, CursorResult)
    if result.rowcount != 1:
        raise NotFoundError(f"No such webhook: '{webhook_id}'", param="webhook_id")
    session.commit()
    return {"id": webhook_id, "object": "webhook_endpoint", "deleted": True}
