"""The calling key's own history: its requests (``GET /v2/requests``) and its ledger
(``GET /v2/account/ledger``), newest first, a page at a time.

Cursors are opaque to clients: the position after the last item of a page (the request's
creation time and id, or the ledger row's id), so pages stay stable while new items arrive.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from imagegate.api.responses import answer, error_responses
from imagegate.api.services import Services
from imagegate.exceptions import ValidationError
from imagegate.jobs.ids import unstorable
from imagegate.jobs.status import JobStatus
from imagegate.protocol import views
from imagegate.protocol.models import LedgerPage, QueueError, RequestPage

MAX_PAGE = 100
DEFAULT_PAGE = 20
NOT_OURS = "is not a cursor this endpoint gave out"

router = APIRouter()

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"Items per page (at most {MAX_PAGE})")]
Cursor = Annotated[str | None, Query(description="The next_cursor of the previous page")]
ERRORS = error_responses(QueueError, {400: "A bad limit, cursor or status", 401: "Missing or unknown key"})


def encode_cursor(position: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(position, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, size: int) -> list[Any]:
    """The position a cursor of ours holds; anything else answers 400 naming ``cursor``."""
    try:
        position = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        position = None
    if not (isinstance(position, list) and len(position) == size):
        raise ValidationError("cursor", NOT_OURS)
    return position


def _time_and_id(cursor: str) -> tuple[float, str]:
    created_at, job_id = decode_cursor(cursor, 2)
    if not (isinstance(created_at, (int, float)) and isinstance(job_id, str) and not unstorable(job_id)):
        raise ValidationError("cursor", NOT_OURS)
    try:
        position = float(created_at)
    except OverflowError:
        position = math.inf
    if not math.isfinite(position):
        raise ValidationError("cursor", NOT_OURS)
    return position, job_id


def _row_id(cursor: str) -> int:
    [row_id] = decode_cursor(cursor, 1)
    if not (isinstance(row_id, int) and not isinstance(row_id, bool) and 0 <= row_id < 2**63):
        raise ValidationError("cursor", NOT_OURS)
    return row_id


def _statuses(text: str | None) -> list[JobStatus] | None:
    if not text:
        return None
    try:
        return [JobStatus(part.strip().upper()) for part in text.split(",")]
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
    before = _time_and_id(cursor) if cursor else None
    jobs = services.store.jobs.page(key.id, limit=limit, before=before, statuses=_statuses(status))
    next_cursor = encode_cursor([jobs[-1].created_at, jobs[-1].id]) if len(jobs) == limit else None
    return answer(RequestPage(items=[views.summary_view(job, services.base_url) for job in jobs], next_cursor=next_cursor))


@router.get(
    "/v2/account/ledger",
    tags=["account"],
    summary="The key's ledger (top-ups, holds, captures, releases), newest first",
    responses={200: {"model": LedgerPage}, **ERRORS},
)
def ledger(request: Request, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None) -> JSONResponse:
    services: Services = request.app.state.services
    key = services.auth(request)
    before = _row_id(cursor) if cursor else None
    entries = services.store.keys.ledger_page(key.id, limit=limit, before=before)
    next_cursor = encode_cursor([entries[-1].id]) if len(entries) == limit else None
    return answer(LedgerPage(items=[views.ledger_item_view(e) for e in entries], next_cursor=next_cursor))
