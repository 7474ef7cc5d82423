"""Uploads: ``POST /v2/files`` stores an input for the calling key, ``GET /v2/files/{id}`` gives
it back. The URL an upload answers works as any image (or zip) input of any endpoint, for that
key only (see :mod:`imagegate.media.uploads`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from imagegate.api.responses import answer, error_responses
from imagegate.api.services import Services
from imagegate.api.submission import admit, read_form
from imagegate.exceptions import RequestNotFoundError, ValidationError
from imagegate.jobs.store import Upload
from imagegate.media.uploads import FILES_PATH, check_upload, new_upload_id, save_upload
from imagegate.protocol import views
from imagegate.protocol.models import QueueError, Uploaded

TAG = "files"
FIELD = "file"

router = APIRouter()


async def check_file(services: Services, data: bytes, field: str) -> str:
    """The content type of an acceptable input file (400/413 naming ``field`` otherwise)."""
    settings = services.settings
    return await run_in_threadpool(
        check_upload, data, field=field, max_bytes=settings.max_input_bytes, max_pixels=settings.max_input_pixels
    )


async def keep_file(services: Services, key_id: str, upload_id: str, data: bytes, content_type: str) -> Upload:
    """Store a checked file as ``key_id``'s upload."""
    return await run_in_threadpool(
        save_upload,
        services.store,
        services.storage,
        services.settings,
        key_id=key_id,
        upload_id=upload_id,
        data=data,
        content_type=content_type,
    )


@router.post(
    FILES_PATH,
    tags=[TAG],
    summary="Upload an input image (or a zip for the trainers)",
    status_code=201,
    responses={
        201: {"model": Uploaded},
        **error_responses(
            QueueError,
            {
                400: "No file, or not an image or zip within max_input_pixels",
                401: "Missing or unknown key",
                413: "Larger than max_input_bytes",
                415: "Not multipart/form-data",
                429: "Rate limited",
            },
        ),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {FIELD: {"type": "string", "format": "binary"}},
                        "required": [FIELD],
                    }
                }
            },
        }
    },
)
async def upload_file(request: Request) -> Response:
    services: Services = request.app.state.services
    key = await admit(request, services, None)
    async with read_form(request, max_file_bytes=services.settings.max_input_bytes, max_files=1) as form:
        part = form.get(FIELD)
        if not isinstance(part, UploadFile):
            raise ValidationError(FIELD, "is required: send the file as the multipart field 'file'")
        data = await part.read()
    content_type = await check_file(services, data, FIELD)
    upload = await keep_file(services, key.id, new_upload_id(), data, content_type)
    return answer(views.uploaded_view(upload, services.base_url), 201)


@router.get(
    FILES_PATH + "/{upload_id}",
    tags=[TAG],
    summary="An upload's bytes (for the key that uploaded it, until it expires)",
    responses={
        200: {"content": {"image/*": {}, "application/zip": {}}, "description": "The file"},
        **error_responses(QueueError, {401: "Missing or unknown key", 404: "No such upload for this key, or expired"}),
    },
)
def download_file(upload_id: str, request: Request) -> Response:
    services: Services = request.app.state.services
    key = services.auth(request)
    upload = services.store.uploads.get(upload_id)
    if upload is None or not upload.readable_by(key.id):
        raise RequestNotFoundError(f"File '{upload_id}' not found")
    try:
        data, _stored_type = services.storage.get(upload.storage_key)
    except KeyError as exc:
        raise RequestNotFoundError(f"File '{upload_id}' not found") from exc
    return Response(data, media_type=upload.content_type, headers={"Cache-Control": "private, max-age=3600"})
