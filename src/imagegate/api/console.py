"""The web console at ``/ui``: the single-page app built from ``ui/`` into ``ui_static/``.

Every ``/ui/…`` path that is not a built file answers ``index.html``, so the app's own paths
(``/ui/playground/flux-dev``) survive a reload. Built assets carry a content hash in their name
and are cached for a year; ``index.html`` is revalidated on every load, so a new build is seen at
once. The console calls only this server: its Content-Security-Policy says so to the browser.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

from imagegate.exceptions import RequestNotFoundError

CONSOLE_PATH = "/ui"
STATIC_DIR = Path(__file__).parent / "ui_static"
ASSETS = "assets"
NOT_BUILT = (
    "The web console is not built: run `make setup` (or `npm ci && npm run build` in ui/) and restart"
)

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
# Scripts, styles and API calls from this server only; images may also come from object
# storage (presigned S3 media URLs) or be local previews (blob:, data:).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob: https: http:; connect-src 'self'; object-src 'none'; "
        "base-uri 'self'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(include_in_schema=False)


def _file(path: Path, cache_control: str) -> Response:
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": cache_control, **SECURITY_HEADERS})


def _built(relative: str) -> Path | None:
    """A file of the build, never a path outside it."""
    root = STATIC_DIR.resolve()
    candidate = (root / relative).resolve()
    if candidate != root and root in candidate.parents and candidate.is_file():
        return candidate
    return None


def _index() -> Response:
    index = _built("index.html")
    if index is None:
        raise RequestNotFoundError(NOT_BUILT)
    return _file(index, REVALIDATE)


@router.get("/", summary="The web console")
def root() -> RedirectResponse:
    return RedirectResponse(CONSOLE_PATH, status_code=307)


@router.api_route(CONSOLE_PATH, methods=["GET", "HEAD"], summary="The web console")
def console_index() -> Response:
    return _index()


@router.api_route(CONSOLE_PATH + "/{path:path}", methods=["GET", "HEAD"], summary="The web console")
def console_path(path: str) -> Response:
    found = _built(path) if path else None
    if found is not None:
        return _file(found, IMMUTABLE if path.startswith(ASSETS + "/") else REVALIDATE)
    if path.startswith(ASSETS + "/"):
        # A missing script must not come back as HTML (a stale page after a deploy says so).
        raise RequestNotFoundError(f"No console asset {path!r}")
    return _index()
