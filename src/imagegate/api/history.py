"""The calling key's own history: its requests (``GET /v2/requests``) and its ledger
(``GET /v2/account/ledger``), newest first, a page at a time.

Cursors are the store's keyset cursors (:mod:`imagegate.jobs.paging`), opaque to clients, so
pages stay stable while new items arrive.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from imagegate.api.responses import answer, error_responses
from imagegate.api.services import Services
from imagegate.exceptions import ValidationError
from imagegate.jobs.queue import JobFilter
from imagegate.jobs.status import JobStatus
from imagegate.protocol import views
from imagegate.protocol.models import LedgerPage, QueueError, RequestPage

MAX_PAGE = 100
DEFAULT_PAGE = 20

router = APIRouter()

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"Items per page (at most {MAX_PAGE})")]
Cursor = Annotated[str | None, Query(description="The next_cursor of the previous page")]
ERRORS = error_responses(QueueError, {400: "A bad limit, cursor or status", 401: "Missing or unknown key"})


def _statuses(text: str | None) -> tuple[JobStatus, ...]:
    if not text:
        return ()
    try:
        return tuple(JobStatus(part.strip().upper()) for part in text.split(","))
    except ValueError:
        raise ValidationError("status", f"must be one or more of: {', '.join(s.value for s in JobStatus)}") from None


@router.get(
    "/v2/requests",
    tags=["requests"],
    summary="The key's requests, newest first",
    responses={200: {"model": RequestPage}, **ERRORS},
)
def list_requests(
    request: Request,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
    status: Annotated[str | None, Query(description="Only these statuses, comma-separated (e.g. COMPLETED,FAILED)")] = None,
) -> JSONResponse:
    services: Services = request.app.state.services
    key = services.auth(request)
    where = JobFilter(key_id=key.id, statuses=_statuses(status))
    page = services.store.jobs.page(where, limit=limit, cursor=cursor, with_params=False)
    items = [views.summary_view(job, services.base_url, services.storage) for job in page.items]
    return answer(RequestPage(items=items, next_cursor=page.next_cursor))


@router.get(
    "/v2/account/ledger",
    tags=["account"],
    summary="The key's ledger (top-ups, holds, captures, releases), newest first",
    responses={200: {"model": LedgerPage}, **ERRORS},
)
def ledger(request: Request, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None) -> JSONResponse:
    services: Services = request.app.state.services
    key = services.auth(request)
    page = services.store.keys.ledger_page(key.id, limit=limit, cursor=cursor)
    return answer(LedgerPage(items=[views.ledger_item_view(e) for e in page.items], next_cursor=page.next_cursor))
