"""/v1/webhooks: a key's endpoints for job events (create, list, delete). Sending is
`sage_core.webhooks`; what is sent, and when, `sage_core.db.webhooks`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from sqlalchemy import CursorResult, delete, func, select

from api.deps import CurrentKey, SessionDep, SessionRoute, SettingsDep
from api.errors import InvalidRequestError
from api.schemas import ListPage, WebhookCreate, WebhookPublic
from sage_core.db.models import WebhookDelivery, WebhookEndpoint
from sage_core.db.webhooks import create_endpoint
from sage_core.errors import NotFoundError
from sage_core.net_guard import BlockedTargetError, check_literal_host

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], route_class=SessionRoute)


@router.post("", response_model=WebhookPublic)
def create_webhook(body: WebhookCreate, key: CurrentKey, session: SessionDep,
                   settings: SettingsDep) -> WebhookPublic:
    """Send this key's job events (succeeded, failed, cancelled) to `url`, signed the
    Standard Webhooks way with the returned `secret`, which is shown only here. A key has
    at most SAGETRAIN_WEBHOOK_MAX_ENDPOINTS endpoints; loopback, private and link-local
    hosts are refused unless SAGETRAIN_ALLOW_PRIVATE_TARGETS is set."""
    if not settings.allow_private_targets:
        try:
            check_literal_host(body.url)
        except BlockedTargetError as exc:
            raise InvalidRequestError(f"Invalid value for 'url': {exc}", param="url",
                                      code="invalid_value") from None
    # Counted, then inserted: two requests at once may pass one over the cap, no further.
    count = session.scalar(select(func.count()).select_from(WebhookEndpoint)
                           .where(WebhookEndpoint.owner_id == key.id)) or 0
    if count >= settings.webhook_max_endpoints:
        raise InvalidRequestError(
            f"This key has {count} webhook endpoints, the most it may have "
            f"({settings.webhook_max_endpoints}); delete one first", param="url",
            code="webhook_limit_reached")
    row = create_endpoint(session, key.id, body.url, list(body.events) if body.events else None)
    session.commit()
    return WebhookPublic.from_row(row, with_secret=True)


@router.get("", response_model=ListPage[WebhookPublic])
def list_webhooks(key: CurrentKey, session: SessionDep) -> ListPage[WebhookPublic]:
    """The key's endpoints, each with its newest delivery and how that went."""
    rows = session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.owner_id == key.id)
                           .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)).all()
    newest = (select(WebhookDelivery, func.row_number().over(
        partition_by=WebhookDelivery.endpoint_id,
        order_by=(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())).label("n"))
        .where(WebhookDelivery.endpoint_id.in_([r.id for r in rows])).subquery())
    last = {d.endpoint_id: d for d in session.scalars(
        select(WebhookDelivery).join(newest, newest.c.id == WebhookDelivery.id)
        .where(newest.c.n == 1))} if rows else {}
    data = [WebhookPublic.from_row(r, last=last.get(r.id)) for r in rows]
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
