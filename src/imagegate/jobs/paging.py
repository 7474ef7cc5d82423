"""Listings: keyset pagination with an opaque cursor, and time ranges.

A cursor is the sort key of the last row of a page, so the next page starts strictly after it and
rows inserted meanwhile never shift a page (no ``OFFSET``). Clients pass ``next_cursor`` back
unchanged; a cursor they altered, or one from another listing, is refused as a bad field.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Callable, Generic, Sequence, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from imagegate.exceptions import ValidationError

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
BAD_CURSOR = "is not a cursor this listing issued (pass next_cursor back unchanged)"


@dataclass
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True)
class TimeRange:
    """``since`` ≤ t < ``until`` in epoch seconds; either end may be open."""

    since: float | None = None
    until: float | None = None

    def clauses(self, column: Any) -> list[Any]:
        out = []
        if self.since is not None:
            out.append(column >= self.since)
        if self.until is not None:
            out.append(column < self.until)
        return out


@dataclass(frozen=True)
class SortKey:
    """One column of a listing's order: the row label it is read back from, the expression it
    sorts by, its direction, and the Python type a cursor must hold for it."""

    label: str
    expression: Any
    descending: bool
    kind: type


def encode_cursor(values: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values), separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, kinds: Sequence[type]) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise ValidationError("cursor", BAD_CURSOR) from exc
    if not isinstance(values, list) or len(values) != len(kinds):
        raise ValidationError("cursor", BAD_CURSOR)
    for value, kind in zip(values, kinds):
        # JSON has one number type: an integral float sort key comes back as an int.
        accepted = (int, float) if kind is float else (kind,)
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise ValidationError("cursor", BAD_CURSOR)
    return values


def _after(keys: Sequence[SortKey], values: Sequence[Any]) -> Any:
    """Rows that sort strictly after ``values``: (a > x) or (a = x and b > y) or …, each
    comparison in its key's direction."""
    terms = []
    for i, key in enumerate(keys):
        equal = [k.expression == v for k, v in zip(keys[:i], values[:i])]
        beyond = key.expression < values[i] if key.descending else key.expression > values[i]
        terms.append(sa.and_(*equal, beyond))
    return sa.or_(*terms)


def fetch_page(
    conn: Connection,
    query: Any,
    keys: Sequence[SortKey],
    *,
    cursor: str | None,
    limit: int,
    convert: Callable[[Any], T],
) -> Page[T]:
    """One page of ``query`` in the order of ``keys`` (fetching one row more tells whether another
    page follows)."""
    if cursor:
        query = query.where(_after(keys, decode_cursor(cursor, [k.kind for k in keys])))
    query = query.order_by(*(k.expression.desc() if k.descending else k.expression.asc() for k in keys)).limit(limit + 1)
    rows = conn.execute(query).all()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor([rows[-1]._mapping[k.label] for k in keys]) if more and rows else None
    return Page([convert(r) for r in rows], next_cursor)


def page_of(items: Sequence[T], key: Callable[[T], str], *, cursor: str | None, limit: int) -> Page[T]:
    """A page of a short list already in memory (the catalog, the worker registry), ordered by
    ``key``; the cursor is the last item's key, so an item that vanished meanwhile shifts nothing."""
    ordered = sorted(items, key=key)
    if cursor:
        (last,) = decode_cursor(cursor, [str])
        ordered = [item for item in ordered if key(item) > last]
    chunk = ordered[:limit]
    return Page(chunk, encode_cursor([key(chunk[-1])]) if len(ordered) > limit else None)
