"""The OpenAI-compatible images API: ``POST /v1/images/generations`` (JSON) and
``POST /v1/images/edits`` (multipart ``image``/``image[]`` and ``mask`` files, or JSON with URLs),
``Authorization: Bearer``.

A request goes through the submit pipeline of the model's native endpoint (auth, rate limit, the
model's own validation, its price held with the job), waits like a synchronous request
(``sync_timeout_seconds``) and answers ``{"created", "data": [{"url" | "b64_json"}]}`` with the
request id in ``x-request-id``. Files sent as multipart become uploads of the key, so the worker
reads them as it reads any upload. Errors come in OpenAI's shape (:mod:`imagegate.api.errors`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from imagegate.api.files import check_file, keep_file
from imagegate.api.responses import answer, error_responses
from imagegate.api.services import Services
from imagegate.api.submission import admit, enqueue, is_multipart, read_form, read_json, wait_or_timeout
from imagegate.catalog import ModelSpec
from imagegate.catalog.base import parse_body
from imagegate.exceptions import ValidationError
from imagegate.jobs.status import JobStatus
from imagegate.media.uploads import new_upload_id, upload_url
from imagegate.protocol import openai, views
from imagegate.protocol.models import OpenAIError, OpenAIImages

# The most images an edit may send as files (no model takes more than 10), plus one mask.
MAX_EDIT_FILES = 10 + 1
IMAGE_PARTS = ("image", "image[]")
MASK_PART = "mask"
REQUEST_SCHEMAS = (openai.ImageGenerationRequest, openai.ImageEditRequest)

router = APIRouter()


@dataclass
class _File:
    field: str  # "image" or "mask"
    data: bytes
    upload_id: str = field(default_factory=new_upload_id)
    content_type: str = ""


@dataclass
class _Incoming:
    fields: Any  # the OpenAI fields, as JSON would carry them
    images: list[_File] = field(default_factory=list)
    mask: _File | None = None
    # What a retry with the same Idempotency-Key must match: the body (the files by digest).
    digest: Any = None

    @property
    def files(self) -> list[_File]:
        return self.images + ([self.mask] if self.mask else [])


async def _multipart(request: Request, services: Services) -> _Incoming:
    incoming = _Incoming(fields={})
    async with read_form(request, max_file_bytes=services.settings.max_input_bytes, max_files=MAX_EDIT_FILES) as form:
        for name, value in form.multi_items():
            if not isinstance(value, UploadFile):
                if name in IMAGE_PARTS:  # an image given by URL in a form
                    incoming.fields.setdefault("image", []).append(value)
                else:
                    incoming.fields[name] = value
            elif name in IMAGE_PARTS:
                incoming.images.append(_File("image", await value.read()))
            elif name == MASK_PART:
                incoming.mask = _File("mask", await value.read())
            else:
                raise ValidationError(name, "is not a file field (send images as image or image[], a mask as mask)")
    files = [[f.field, hashlib.sha256(f.data).hexdigest()] for f in incoming.files]
    incoming.digest = {"fields": incoming.fields, "files": files}
    return incoming


def _wrong_route(spec: ModelSpec, binding: openai.Binding | None) -> str:
    if binding is None:
        return f"'{spec.id}' takes no prompt, which this API cannot express: use {spec.routes[0].path}"
    if binding.path == openai.EDITS_PATH:
        return f"'{spec.id}' edits images: use POST {openai.EDITS_PATH}"
    return f"'{spec.id}' makes images from a prompt alone: use POST {openai.GENERATIONS_PATH}"


async def _images(request: Request, path: str) -> JSONResponse:
    services: Services = request.app.state.services
    settings = services.settings
    edits = path == openai.EDITS_PATH
    key = await admit(request, services, openai.AUTH)
    if edits and is_multipart(request):
        incoming = await _multipart(request, services)
    else:
        body = await read_json(request)
        incoming = _Incoming(fields=body, digest=body)
    fields = parse_body(openai.ImageEditRequest if edits else openai.ImageGenerationRequest, incoming.fields)
    model_id = fields.model or (settings.openai_default_edit_model if edits else settings.openai_default_model)
    spec = await run_in_threadpool(services.enabled_model, model_id)
    binding = openai.binding(spec)
    if binding is None or binding.path != path:
        raise ValidationError("model", _wrong_route(spec, binding))

    for file in incoming.files:
        file.content_type = await check_file(services, file.data, file.field)
    base = services.base_url
    images = [upload_url(base, f.upload_id) for f in incoming.images]
    mask = upload_url(base, incoming.mask.upload_id) if incoming.mask else None
    if isinstance(fields, openai.ImageEditRequest):
        images += fields.image_urls()
        mask = mask or fields.mask_url()
    route = spec.routes[0]  # the native endpoint whose validation and price apply
    try:
        params = spec.validate(openai.native_body(binding, fields, images, mask), route)
    except ValidationError as exc:
        raise binding.translate(exc) from exc
    for file in incoming.files:
        await keep_file(services, key.id, file.upload_id, file.data, file.content_type)
    job = await enqueue(request, services, key, spec, route, params, body=incoming.digest, protocol=openai.PROTOCOL)

    done = await wait_or_timeout(services, job)
    headers = {"x-request-id": job.id}
    if done.status is not JobStatus.COMPLETED:
        status_code, error = views.openai_failure_view(done, binding.field_of(done.error))
        return answer(error, status_code, headers)
    b64 = fields.response_format == "b64_json"
    images_view = await run_in_threadpool(views.openai_images_view, done, base, b64=b64, storage=services.storage)
    return answer(images_view, headers=headers)


ERRORS = error_responses(
    OpenAIError,
    {
        400: "A field breaks a rule of the model's schema, or the job failed on its input",
        401: "Missing or unknown key",
        402: "Insufficient balance",
        404: "Unknown or disabled model",
        413: "A file over max_input_bytes",
        429: "Rate limited",
        500: "The job ended ERROR (not charged)",
        504: "Not finished within sync_timeout_seconds (canceled, not charged)",
    },
)


def _json_body(schema: type[Any]) -> dict[str, Any]:
    return {"schema": {"$ref": f"#/components/schemas/{schema.__name__}"}}


@router.post(
    openai.GENERATIONS_PATH,
    tags=["openai"],
    summary="Generate images (OpenAI-compatible)",
    responses={200: {"model": OpenAIImages}, **ERRORS},
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": _json_body(openai.ImageGenerationRequest)}}},
)
async def generations(request: Request) -> JSONResponse:
    return await _images(request, openai.GENERATIONS_PATH)


@router.post(
    openai.EDITS_PATH,
    tags=["openai"],
    summary="Edit images (OpenAI-compatible)",
    responses={200: {"model": OpenAIImages}, **ERRORS},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": _json_body(openai.ImageEditRequest),
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
                            "mask": {"type": "string", "format": "binary"},
                            "prompt": {"type": "string"},
                        },
                        "required": ["image", "prompt"],
                        "description": "The fields of ImageEditRequest, with image/image[] and mask as files",
                    }
                },
            },
        }
    },
)
async def edits(request: Request) -> JSONResponse:
    return await _images(request, openai.EDITS_PATH)
