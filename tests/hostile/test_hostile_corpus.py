"""The hostile-input corpus, one row per case, through the real server.

Every row states the answer it must get: a 4xx naming the field (nothing queued, nothing
charged), or a 202 whose job ends FAILED with an error naming the field (charged: the seeds
capture the hold on FAILED), COMPLETED (accepted input, charged) or ERROR (the server's own
fault, not charged). After every row the server must still answer /healthz and run a valid
request to completion, so a row that wedges the API or kills the worker fails too.
"""

from __future__ import annotations

import io
import json
import socket
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import pytest
from harness import RunningServer, zip_of
from PIL import Image, ImageStat

from imagegate.catalog import MODELS, Auth
from imagegate.jobs.store import JobStore

from .support import (
    FETCH_TIMEOUT_S,
    FRAME_COLOURS,
    SECRET,
    SUB,
    UPSCALE,
    HostileHost,
    animated_gif,
    assert_still_serving,
    balance,
    bilevel_png,
    cmyk_jpeg,
    data_uri,
    encode,
    gif_huge_screen,
    jpeg_huge_header,
    patch_member,
    png16,
    safetensors_of,
    server_db,
    small_png,
    truncated_png,
    wait_terminal,
)

FLUX_DEV = "/flux-dev/v1/dev/textToImage"
BOOGU = "/boogu-image/v1/boogu-image-request"
KLEIN = "/flux-2-klein-4b/v1/generateImage"
FLUX2_EDIT = "/flux-2-pro-image-to-image-866/v1/flux-2-pro-image-to-image-request"
P_IMAGE = "/p-image/v1/p-image-edit/generate"
RELIGHT = "/pixelforge-relighting-api/v1/relighting/generate"
PIXELFORGE = "/pixelforge-image/v1/qwen_image_gen/serve_image"
KONTEXT = "/flux-kontext-restore-image/v1/flux-kontext-restore-image/generate"
SCHNELL_BATCH = "/flux-1-schnell/v1/getDataBatch"
CHECK_STATUS = "/flux-1-schnell/v1/checkStatus"
FILL = "/flux-fill-dev/v1/flux-fill/generate"
TRAINER_712 = "/flux-2-pro-text-to-image-trainer-712/v1/flux-2-pro-text-to-image-trainer-request"
DOJO_EDIT = "/api/v1/models/boogu-image-edit/run"

# Prices the rows expect to be captured (USD): the catalog's, or the $0.01 default per image.
UPSCALE_HOLD = "0.01"  # factor mode holds the most an upscale can cost
UPSCALE_SMALL = "0.005"  # settled at completion: output of at most 4 MP

AUTH = {route.path: route.auth for spec in MODELS.values() for route in spec.routes}
AUTH[CHECK_STATUS] = Auth.SECRET

JSON = {"Content-Type": "application/json"}


def auth_headers(path: str, key: str) -> dict[str, str]:
    auth = AUTH.get(path, Auth.SUBSCRIPTION)
    if auth is Auth.SECRET:
        return {SECRET: key}
    if auth is Auth.BEARER:
        return {"Authorization": f"Bearer {key}"}
    return {SUB: key}


def up(image: str, **extra: Any) -> dict[str, Any]:
    """An upscale body (the cheapest model to run) around one image URL."""
    return {"image": image, "upscale_mode": "factor", "factor": 1, **extra}


def uri(data: bytes, mime: str = "image/png") -> str:
    return data_uri(data, mime)


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once the socket is closed


# -- output checks ---------------------------------------------------------------------------------


def first_frame_kept(img: Image.Image) -> None:
    r, g, b = ImageStat.Stat(img.convert("RGB")).mean
    want = FRAME_COLOURS[0]
    assert abs(r - want[0]) < 40 and abs(g - want[1]) < 40 and abs(b - want[2]) < 40, (r, g, b)


def mid_grey(img: Image.Image) -> None:
    # 0x8000 of 0xFFFF is 50 %: scaled to 8 bits it is ~128, not clipped to 255.
    for channel in ImageStat.Stat(img.convert("RGB")).mean:
        assert 100 < channel < 156, ImageStat.Stat(img).mean


def reddish(img: Image.Image) -> None:
    r, g, b = ImageStat.Stat(img.convert("RGB")).mean
    assert r > 120 and r > g + 60 and r > b + 60, (r, g, b)


# -- the table --------------------------------------------------------------------------------------


Body = Any  # a JSON value, or a callable taking the hostile host and returning one


@dataclass(frozen=True)
class Row:
    id: str
    path: str
    status: int  # the answer at submit
    field: str  # the field the answer (or the job's error) names
    words: str  # a substring of the message (or of the job's error)
    body: Body = None
    raw: bytes | None = None  # exact body bytes instead of `body`
    headers: dict[str, str] = field(default_factory=dict)
    job: str | None = None  # terminal status when the submit answers 2xx
    charge: str = "0"  # what the wallet loses, USD
    check: Callable[[Image.Image], None] | None = None  # on the first output image
    max_seconds: float | None = None  # submit to terminal, for rows about time bounds


def rejected(id: str, path: str, field: str, words: str, *, status: int = 400, **kw: Any) -> Row:
    return Row(id, path, status, field, words, **kw)


def failed(id: str, path: str, field: str, words: str, body: Body, *, charge: str = UPSCALE_HOLD, **kw: Any) -> Row:
    return Row(id, path, 202, field, words, body=body, job="FAILED", charge=charge, **kw)


def accepted(id: str, body: Body, *, path: str = UPSCALE, charge: str = UPSCALE_SMALL, job: str = "COMPLETED", **kw: Any) -> Row:
    return Row(id, path, 202, "", "", body=body, job=job, charge=charge, **kw)


MB_TEXT = "x" * (1024 * 1024)
PNG = small_png()
TRAINER_831 = "/flux-2-pro-image-to-image-trainer-831/v1/flux-2-pro-image-to-image-trainer-request"
TRAIN_PNG = encode(Image.new("RGB", (80, 80), (10, 200, 30)), "PNG")
STORED_ZIP = zip_of({"a.png": TRAIN_PNG}, zipfile.ZIP_STORED)
DEFLATED_ZIP = zip_of({"a.png": TRAIN_PNG})
LORA = safetensors_of({"transformer.x.lora_A.weight": ("F16", [4, 8]), "transformer.x.lora_B.weight": ("F16", [8, 4])})


def dataset(archive: bytes) -> dict[str, str]:
    return {"image_data_url": uri(archive, "application/zip")}


ROWS: list[Row] = [
    # -- bytes that are not a JSON object --------------------------------------------------------
    rejected("malformed-json", FLUX_DEV, "body", "is not valid JSON", raw=b'{"prompt": "x"'),
    rejected("trailing-garbage", FLUX_DEV, "body", "is not valid JSON", raw=b'{"prompt": "x"} {}'),
    rejected("single-quoted-json", FLUX_DEV, "body", "is not valid JSON", raw=b"{'prompt': 'x'}"),
    rejected("empty-body", FLUX_DEV, "body", "must be a JSON object", raw=b""),
    rejected("whitespace-body", FLUX_DEV, "body", "must be a JSON object", raw=b" \r\n\t "),
    rejected("json-array", FLUX_DEV, "body", "must be a JSON object", raw=b'[{"prompt": "x"}]'),
    rejected("json-string", FLUX_DEV, "body", "must be a JSON object", raw=b'"prompt"'),
    rejected("json-null", FLUX_DEV, "body", "must be a JSON object", raw=b"null"),
    rejected("json-number", FLUX_DEV, "body", "must be a JSON object", raw=b"42"),
    rejected("invalid-utf8", FLUX_DEV, "body", "must be UTF-8", raw=b'{"prompt": "caf\xe9"}'),
    rejected("utf16-json", FLUX_DEV, "body", "must be UTF-8", raw='{"prompt": "x"}'.encode("utf-16")),
    rejected("utf8-bom", FLUX_DEV, "body", "BOM", raw=b'\xef\xbb\xbf{"prompt": "x"}'),
    rejected("nan-literal", FLUX_DEV, "body", "NaN is not valid JSON", raw=b'{"prompt": "x", "guidance_scale": NaN}'),
    rejected("infinity-literal", FLUX_DEV, "body", "Infinity is not valid JSON", raw=b'{"prompt": "x", "guidance_scale": Infinity}'),
    rejected("minus-infinity-literal", FLUX_DEV, "body", "-Infinity is not valid JSON", raw=b'{"prompt": "x", "seed": -Infinity}'),
    rejected("float-overflows-to-inf", FLUX_DEV, "guidance_scale", "must be a finite number", raw=b'{"prompt": "x", "guidance_scale": 1e999}'),
    rejected("deeply-nested-array", FLUX_DEV, "body", "nested too deeply", raw=b"[" * 100_000 + b"]" * 100_000),
    rejected("deeply-nested-unknown-field", FLUX_DEV, "body", "nested too deeply", body={"prompt": "x", "extra": nested(200)}),
    rejected("deeply-nested-known-field", FLUX_DEV, "body", "nested too deeply", body={"prompt": "x", "image_size": nested(100)}),
    rejected("5000-digit-integer", FLUX_DEV, "body", "more than 4300 digits", raw=b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}"),
    # -- declared content type ---------------------------------------------------------------------
    rejected("content-type-text-plain", FLUX_DEV, "Content-Type", "must be application/json", status=415, body={"prompt": "x"}, headers={"Content-Type": "text/plain"}),
    rejected("content-type-form", FLUX_DEV, "Content-Type", "must be application/json", status=415, raw=b"prompt=x", headers={"Content-Type": "application/x-www-form-urlencoded"}),
    rejected("content-type-multipart", FLUX_DEV, "Content-Type", "must be application/json", status=415, raw=b"--b\r\n\r\nx\r\n--b--", headers={"Content-Type": "multipart/form-data; boundary=b"}),
    rejected("content-type-text-plain-dojo", DOJO_EDIT, "Content-Type", "must be application/json", status=415, body={"prompt": "x", "image": "https://a.test/x.png"}, headers={"Content-Type": "text/plain"}),
    accepted("content-type-json-with-charset", up(uri(PNG)), headers={"Content-Type": "application/json; charset=utf-8"}),
    accepted("content-type-absent", up(uri(PNG)), headers={"Content-Type": ""}),
    # -- wrong types --------------------------------------------------------------------------------
    rejected("prompt-number", FLUX_DEV, "prompt", "must be a string", body={"prompt": 5}),
    rejected("prompt-null", FLUX_DEV, "prompt", "must be a string", body={"prompt": None}),
    rejected("prompt-array", FLUX_DEV, "prompt", "must be a string", body={"prompt": ["x"]}),
    rejected("prompt-object", FLUX_DEV, "prompt", "must be a string", body={"prompt": {"text": "x"}}),
    rejected("steps-string", FLUX_DEV, "num_inference_steps", "must be an integer", body={"prompt": "x", "num_inference_steps": "28"}),
    rejected("steps-whole-float", FLUX_DEV, "num_inference_steps", "must be an integer", body={"prompt": "x", "num_inference_steps": 28.0}),
    rejected("bool-for-int", FLUX_DEV, "num_images", "must be an integer", body={"prompt": "x", "num_images": True}),
    rejected("string-for-bool", FLUX_DEV, "enable_safety_checker", "must be a boolean", body={"prompt": "x", "enable_safety_checker": "true"}),
    rejected("image-size-array", FLUX_DEV, "image_size", "must be one of", body={"prompt": "x", "image_size": [512, 512]}),
    rejected("image-size-width-string", FLUX_DEV, "image_size.width", "must be an integer", body={"prompt": "x", "image_size": {"width": "512", "height": 512}}),
    rejected("image-urls-not-array", FLUX2_EDIT, "image_urls", "must be an array", body={"prompt": "x", "image_urls": "https://a.test/x.png"}),
    rejected("images-item-number", P_IMAGE, "images[0]", "must be a string", body={"prompt": "x", "images": [5]}),
    rejected("loras-item-string", RELIGHT, "loras[0]", "must be an object", body={"prompt": "x", "image_urls": ["https://a.test/x.png"], "loras": ["x"]}),
    rejected("check-status-id-number", CHECK_STATUS, "requestId", "must be a string", body={"requestId": 5}),
    # -- negative and huge numbers ------------------------------------------------------------------
    rejected("seed-negative", FLUX_DEV, "seed", "must be ≥ 0", body={"prompt": "x", "seed": -1}),
    rejected("seed-2**70", FLUX_DEV, "seed", "must be ≤ 4294967295", body={"prompt": "x", "seed": 2**70}),
    rejected("seed-1e308", FLUX_DEV, "seed", "must be an integer", raw=b'{"prompt": "x", "seed": 1e308}'),
    rejected("num-images-2**70", FLUX_DEV, "num_images", "must be ≤ 4", body={"prompt": "x", "num_images": 2**70}),
    rejected("num-images-minus-2**70", FLUX_DEV, "num_images", "must be ≥ 1", body={"prompt": "x", "num_images": -(2**70)}),
    rejected("guidance-1e308", FLUX_DEV, "guidance_scale", "must be ≤ 20", body={"prompt": "x", "guidance_scale": 1e308}),
    rejected("guidance-minus-1e308", FLUX_DEV, "guidance_scale", "must be ≥ 1", body={"prompt": "x", "guidance_scale": -1e308}),
    rejected("upscale-factor-1e308", UPSCALE, "factor", "must be ≤ 8", body=up("https://a.test/x.png", factor=1e308)),
    rejected("klein-width-2**70", KLEIN, "width", "must be one of: 512, 1024, 1448, 2048", body={"prompt": "x", "width": 2**70}),
    rejected("custom-size-2**70", FLUX_DEV, "image_size.width", "between 64 and 2048", body={"prompt": "x", "image_size": {"width": 2**70, "height": 512}}),
    rejected("wxh-size-huge", FLUX2_EDIT, "image_size", "between 64 and 2048", body={"prompt": "x", "image_urls": ["https://a.test/x.png"], "image_size": "99999999999x5"}),
    # -- strings ------------------------------------------------------------------------------------
    rejected("prompt-1mb", FLUX_DEV, "prompt", "must be at most 10000 characters", body={"prompt": MB_TEXT}),
    rejected("negative-prompt-1mb", BOOGU, "negative_prompt", "must be at most 10000 characters", body={"prompt": "x", "negative_prompt": MB_TEXT}),
    rejected("relight-prompt-801", RELIGHT, "prompt", "must be at most 800 characters", body={"prompt": "x" * 801, "image_urls": ["https://a.test/x.png"]}),
    rejected("prompt-blank", FLUX_DEV, "prompt", "must not be empty", body={"prompt": " \t\n "}),
    rejected("prompt-lone-surrogate", FLUX_DEV, "prompt", "must be valid Unicode text", raw=b'{"prompt": "\\ud800"}'),
    rejected("webhook-with-nul", KONTEXT, "webhook", "control characters", body={"input_image": "https://a.test/x.png", "webhook": "https://a.test/\u0000"}),
    rejected("webhook-url-with-space", SCHNELL_BATCH, "webhook_url", "whitespace", body={"prompt": "x", "webhook_url": "https://a.test/a b"}),
    rejected("image-url-crlf-injection", UPSCALE, "image", "control characters", body=up("https://a.test/x.png\r\nHost: evil")),
    rejected("image-url-javascript", UPSCALE, "image", "must be an http, https or data: URL", body=up("javascript:alert(1)")),
    rejected("image-url-file", UPSCALE, "image", "must be an http, https or data: URL", body=up("file:///etc/passwd")),
    rejected("image-url-9000-chars", UPSCALE, "image", "longer than 8192", body=up("https://a.test/" + "a" * 9000)),
    # -- unknown fields are ignored ------------------------------------------------------------------
    accepted("unknown-fields", up(uri(PNG), colour="blue", Image=5, nested={"a": [1, {"b": None}]})),
    accepted("unknown-field-1mb", up(uri(PNG), notes=MB_TEXT)),
    accepted(
        "unknown-field-lone-surrogate-with-idempotency-key",
        None,
        raw=b'{"image": "' + uri(PNG).encode() + b'", "upscale_mode": "factor", "factor": 1, "x": "\\udc80"}',
        headers={"Idempotency-Key": f"hostile-{uuid.uuid4().hex}"},
    ),
    accepted("valid-request-model-without-weights", {"prompt": "x", "typo_field": 1}, path=FLUX_DEV, job="ERROR", charge="0"),
    # -- empty arrays ---------------------------------------------------------------------------------
    rejected("images-empty", P_IMAGE, "images", "must have at least 1 item", body={"prompt": "x", "images": []}),
    rejected("image-urls-empty-relight", RELIGHT, "image_urls", "must have at least 1 item", body={"prompt": "x", "image_urls": []}),
    rejected("image-urls-empty-flux2", FLUX2_EDIT, "image_urls", "must have at least 1 item", body={"prompt": "x", "image_urls": []}),
    rejected("image-urls-empty-sync", PIXELFORGE, "image_urls", "must have at least 1 item", body={"prompt": "x", "image_urls": []}),
    accepted("loras-empty", {"prompt": "x", "image_urls": [uri(PNG)], "loras": []}, path=RELIGHT, job="ERROR", charge="0"),
    # -- too many -------------------------------------------------------------------------------------
    rejected("images-50", P_IMAGE, "images", "must have at most", body={"prompt": "x", "images": ["https://a.test/x.png"] * 50}),
    rejected("image-urls-11", RELIGHT, "image_urls", "must have at most 10 item", body={"prompt": "x", "image_urls": ["https://a.test/x.png"] * 11}),
    rejected("image-urls-100000", FLUX2_EDIT, "image_urls", "must have at most 10 item", body={"prompt": "x", "image_urls": ["https://a.test/x.png"] * 100_000}),
    rejected("loras-4", RELIGHT, "loras", "must have at most 3 item", body={"prompt": "x", "image_urls": ["https://a.test/x.png"], "loras": [{"path": "https://a.test/l.safetensors"}] * 4}),
    rejected("webhook-events-8", P_IMAGE, "webhook_events_filter", "must have at most 7 item", body={"prompt": "x", "images": ["https://a.test/x.png"], "webhook_events_filter": ["*"] * 8}),
    # -- data: URIs -------------------------------------------------------------------------------------
    rejected("data-uri-without-comma", UPSCALE, "image", "not a valid data: URI", body=up("data:image/png;base64")),
    failed("data-uri-plain-text", UPSCALE, "image", "is not a decodable image", up("data:text/plain,hello")),
    failed("data-uri-html", UPSCALE, "image", "is not a decodable image", up(uri(b"<html><body>hi</body></html>", "text/html"))),
    failed("data-uri-svg", UPSCALE, "image", "is not a decodable image", up(uri(b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', "image/svg+xml"))),
    failed("data-uri-bad-base64", UPSCALE, "image", "is not valid base64", up("data:image/png;base64,!!!!")),
    failed("data-uri-truncated-base64", UPSCALE, "image", "is not valid base64", up(uri(PNG)[:-3])),
    failed("data-uri-truncated-png", UPSCALE, "image", "is not a decodable image", up(uri(truncated_png()))),
    failed("data-uri-empty", UPSCALE, "image", "holds no data", up("data:image/png;base64,")),
    failed("data-uri-over-limit", UPSCALE, "image", "larger than the 256 KB limit", up(uri(b"\x89PNG" + b"\0" * 300_000))),
    accepted("data-uri-mislabeled-type", up(uri(PNG, "image/jpeg"))),
    # -- decompression bombs (small files, huge canvases) ----------------------------------------------
    failed("png-bomb-20000x20000", UPSCALE, "image", "too many pixels", lambda h: up(uri(bilevel_png(20_000, 20_000)))),
    failed("png-8000x8000-over-pixel-limit", UPSCALE, "image", "8000x8000 = 64,000,000 pixels", lambda h: up(uri(bilevel_png(8000, 8000)))),
    failed("gif-screen-65535x65535", UPSCALE, "image", "too many pixels", up(uri(gif_huge_screen(), "image/gif"))),
    failed("jpeg-header-65500x65500", UPSCALE, "image", "too many pixels", up(uri(jpeg_huge_header(), "image/jpeg"))),
    # -- unusual but valid images are accepted -----------------------------------------------------------
    accepted("animated-gif-first-frame", up(uri(animated_gif(), "image/gif")), check=first_frame_kept),
    accepted("cmyk-jpeg", up(uri(cmyk_jpeg(), "image/jpeg")), check=reddish),
    accepted("16-bit-grey-png", up(uri(png16(24, 16, 0, 1, 0x8000))), check=mid_grey),
    accepted("16-bit-rgb-png", up(uri(png16(24, 16, 2, 3, 0x8000))), check=mid_grey),
    # -- URLs on a misbehaving host ------------------------------------------------------------------------
    failed("url-404", UPSCALE, "image", "HTTP 404", lambda h: up(h.url("/status/404"))),
    failed("url-500", UPSCALE, "image", "HTTP 500", lambda h: up(h.url("/status/500"))),
    failed("url-never-answers", UPSCALE, "image", f"no complete answer within {FETCH_TIMEOUT_S} s", lambda h: up(h.url("/hang")), max_seconds=FETCH_TIMEOUT_S),
    failed("url-drips-one-byte-at-a-time", UPSCALE, "image", f"no complete answer within {FETCH_TIMEOUT_S} s", lambda h: up(h.url("/drip")), max_seconds=FETCH_TIMEOUT_S),
    failed("url-over-limit-declared", UPSCALE, "image", "larger than the 256 KB limit", lambda h: up(h.url("/big/300000"))),
    failed("url-over-limit-undeclared", UPSCALE, "image", "larger than the 256 KB limit", lambda h: up(h.url("/big-unsized/300000"))),
    failed("url-empty-body", UPSCALE, "image", "the response body is empty", lambda h: up(h.url("/empty"))),
    failed("url-html-page", UPSCALE, "image", "is not a decodable image", lambda h: up(h.add("page.html", b"<html>hi</html>", "text/html"))),
    accepted("url-png-served-as-text-html", lambda h: up(h.add("png-as-html", PNG, "text/html"))),
    failed("url-redirect-loop", UPSCALE, "image", "more than 5 redirects", lambda h: up(h.url("/loop"))),
    failed("url-redirect-to-ftp", UPSCALE, "image", "only http and https URLs are followed", lambda h: up(h.redirect("ftp://127.0.0.1/x.png"))),
    accepted("url-redirect-to-image", lambda h: up(h.redirect(h.add("target.png", PNG), 307))),
    failed("url-connection-refused", UPSCALE, "image", "connection failed", lambda h: up(f"http://127.0.0.1:{closed_port()}/x.png")),
    failed("url-unresolvable-host", UPSCALE, "image", "could not resolve host", up("http://no-such-host.invalid/x.png")),
    # -- the failing input is named, wherever it sits --------------------------------------------------------
    failed("second-of-two-images", P_IMAGE, "images[1]", "HTTP 404", lambda h: {"prompt": "x", "images": [uri(PNG), h.url("/status/404")]}),
    failed("mask-not-an-image", FILL, "mask", "is not a decodable image", {"prompt": "x", "image": uri(PNG), "mask": "data:text/plain,mask"}, charge="0.04"),
    failed("lora-path-404", RELIGHT, "loras[0].path", "HTTP 404", lambda h: {"prompt": "x", "image_urls": [uri(PNG)], "loras": [{"path": h.url("/status/404")}]}),
    failed("dataset-zip-too-few-images", TRAINER_712, "image_data_url", "needs at least 10", {"image_data_url": uri(zip_of({"a.png": PNG, "b.png": PNG}), "application/zip")}, charge="8"),
    failed("dataset-zip-entry-over-limit", TRAINER_712, "image_data_url", "larger than the input size limit", {"image_data_url": uri(zip_of({"big.png": b"\0" * 400_000}), "application/zip")}, charge="8"),
    # -- a dataset zip's faults are the request's, never the server's ------------------------------------
    failed("dataset-zip-bad-crc", TRAINER_831, "image_data_url", "a.png cannot be read from the zip (Bad CRC-32", dataset(patch_member(STORED_ZIP, "a.png", crc=0))),
    failed("dataset-zip-encrypted", TRAINER_831, "image_data_url", "a.png is encrypted", dataset(patch_member(STORED_ZIP, "a.png", flags=0x1))),
    failed("dataset-zip-unknown-compression", TRAINER_831, "image_data_url", "a.png uses compression method 99", dataset(patch_member(STORED_ZIP, "a.png", method=99))),
    failed("dataset-zip-size-understated", TRAINER_831, "image_data_url", "a.png cannot be read from the zip", dataset(patch_member(DEFLATED_ZIP, "a.png", size=50))),
    failed("dataset-zip-compressed-size-lies", TRAINER_831, "image_data_url", "a.png cannot be read from the zip", dataset(patch_member(DEFLATED_ZIP, "a.png", compressed=20))),
    failed("dataset-zip-bomb", TRAINER_831, "image_data_url", "bomb.png is larger than the input size limit", dataset(zip_of({"bomb.png": TRAIN_PNG[:33] + b"\0" * 50_000_000}))),
    failed("dataset-zip-bomb-understated", TRAINER_831, "image_data_url", "bomb.png cannot be read from the zip", dataset(patch_member(zip_of({"bomb.png": TRAIN_PNG[:33] + b"\0" * 50_000_000}), "bomb.png", size=1000))),
    failed("dataset-pk-but-not-a-zip", TRAINER_831, "image_data_url", "is not a readable zip archive", dataset(b"PK\x03\x04" + b"garbage" * 10)),
    failed("dataset-over-the-pixel-budget", TRAINER_831, "image_data_url", "pixel limit for a dataset", lambda h: dataset(zip_of({f"{i}.png": bilevel_png(6324, 6324) for i in range(16)}))),
    failed("dataset-image-too-narrow-to-train-on", TRAINER_831, "image_data_url", "s.png: is 5473x47 at the training size", dataset(zip_of({"s.png": encode(Image.new("RGB", (8000, 70)), "PNG")}))),
    # -- LoRA files are validated before they are kept ----------------------------------------------------
    failed("lora-with-a-json-brace-but-not-safetensors", RELIGHT, "loras[0].path", "is not a valid safetensors file", {"prompt": "x", "image_urls": [uri(PNG)], "loras": [{"path": uri(b"\x10\0\0\0\0\0\0\0{not json really}", "application/octet-stream")}]}),
    failed("lora-truncated", RELIGHT, "loras[0].path", "file not fully covered", {"prompt": "x", "image_urls": [uri(PNG)], "loras": [{"path": uri(LORA[:-9], "application/octet-stream")}]}),
    failed("lora-without-lora-weights", RELIGHT, "loras[1].path", "holds no LoRA weights", {"prompt": "x", "image_urls": [uri(PNG)], "loras": [{"path": uri(LORA, "application/octet-stream")}, {"path": uri(safetensors_of({"model.weight": ("F32", [4])}), "application/octet-stream")}]}),
]


# URLs a server that refuses private addresses must not fetch. `{port}` is the hostile host's.
STRICT_ROWS: list[Row] = [
    failed("loopback-literal", UPSCALE, "image", "address 127.0.0.1 is private or loopback", lambda h: up(h.url("/img/strict-a.png"))),
    failed("localhost-name", UPSCALE, "image", "is private or loopback", lambda h: up(h.url("/img/strict-b.png").replace("127.0.0.1", "localhost"))),
    failed("loopback-ipv6", UPSCALE, "image", "address ::1 is private or loopback", lambda h: up(h.url("/img/strict-c.png").replace("127.0.0.1", "[::1]"))),
    failed("loopback-decimal-host", UPSCALE, "image", "address 127.0.0.1 is private or loopback", lambda h: up(h.url("/img/strict-d.png").replace("127.0.0.1", "2130706433"))),
    failed("unspecified-0.0.0.0", UPSCALE, "image", "is unspecified", lambda h: up(h.url("/img/strict-e.png").replace("127.0.0.1", "0.0.0.0"))),
    failed("private-10.x", UPSCALE, "image", "address 10.0.0.1 is private or loopback", up("http://10.0.0.1/x.png")),
    failed("cloud-metadata", UPSCALE, "image", "link-local (where cloud metadata services live)", up("http://169.254.169.254/latest/meta-data/iam/security-credentials/")),
    failed("cloud-metadata-ipv4-mapped", UPSCALE, "image", "link-local", up("http://[::ffff:169.254.169.254]/latest/meta-data/")),
    failed("loopback-redirector-to-metadata", UPSCALE, "image", "address 127.0.0.1 is private or loopback", lambda h: up(h.redirect("http://169.254.169.254/latest/meta-data/"))),
    failed("second-image-loopback", P_IMAGE, "images[1]", "private or loopback", lambda h: {"prompt": "x", "images": [uri(PNG), h.url("/img/strict-f.png")]}),
    failed("mask-loopback", FILL, "mask", "private or loopback", lambda h: {"prompt": "x", "image": uri(PNG), "mask": h.url("/img/strict-g.png")}, charge="0.04"),
    failed("lora-path-metadata", RELIGHT, "loras[0].path", "link-local", {"prompt": "x", "image_urls": [uri(PNG)], "loras": [{"path": "http://169.254.169.254/x.safetensors"}]}),
    accepted("data-uri-still-accepted", up(uri(PNG))),
]


# -- running a row ------------------------------------------------------------------------------------


@dataclass
class Keys:
    case: str
    probe: str


@pytest.fixture(scope="module")
def hostile_keys(hostile_server: RunningServer) -> Keys:
    return Keys(hostile_server.create_key("100", name="corpus"), hostile_server.create_key("100", name="probe"))


@pytest.fixture(scope="module")
def strict_keys(strict_server: RunningServer) -> Keys:
    return Keys(strict_server.create_key("100", name="corpus"), strict_server.create_key("100", name="probe"))


def message_of(response: httpx.Response) -> tuple[str | None, str]:
    body = response.json()
    if isinstance(body.get("error"), dict):  # the dojo protocol's error shape
        return None, body["error"]["message"]
    return body.get("field"), body["message"]


def send(client: httpx.Client, row: Row, host: HostileHost, key: str) -> httpx.Response:
    headers = {**JSON, **auth_headers(row.path, key), **row.headers}
    headers = {k: v for k, v in headers.items() if v != ""}  # "" = leave the header out
    if row.raw is not None:
        content = row.raw
    else:
        body = row.body(host) if callable(row.body) else row.body
        content = json.dumps(body).encode()
    return client.post(row.path, content=content, headers=headers)


def run_row(server: RunningServer, host: HostileHost, keys: Keys, row: Row) -> None:
    with server.client(timeout=60) as client:
        before = balance(client, keys.case)
        started = time.monotonic()
        r = send(client, row, host, keys.case)
        assert r.status_code == row.status, (row.id, r.status_code, r.text[:500])
        if row.job is None:
            field, message = message_of(r)
            if field is not None:
                assert field == row.field, (row.id, r.json())
            assert message.startswith(row.field + " "), (row.id, message)
            assert row.words in message, (row.id, message)
        else:
            request_id = r.json()["request_id"]
            done = wait_terminal(client, request_id, keys.case)
            elapsed = time.monotonic() - started
            assert done["status"] == row.job, (row.id, done)
            if row.job == "FAILED":
                assert done["error"].startswith(f"{row.field}: "), (row.id, done["error"])
                assert row.words in done["error"], (row.id, done["error"])
            if row.max_seconds is not None:
                # Bounded by the fetch deadline (plus scheduling slack on a busy machine), and
                # not failing early for another reason.
                assert row.max_seconds - 0.2 <= elapsed < row.max_seconds + 20, (row.id, elapsed)
            if row.check is not None:
                media = client.get(done["output"]["media_url"][0])
                assert media.status_code == 200
                row.check(Image.open(io.BytesIO(media.content)))
        after = balance(client, keys.case)
        assert before - after == Decimal(row.charge), (row.id, before, after)
        assert_still_serving(client, keys.probe)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_hostile_input(row: Row, hostile_server: RunningServer, hostile_host: HostileHost, hostile_keys: Keys) -> None:
    run_row(hostile_server, hostile_host, hostile_keys, row)


@pytest.mark.parametrize("row", STRICT_ROWS, ids=[r.id for r in STRICT_ROWS])
def test_private_address_refused(row: Row, strict_server: RunningServer, hostile_host: HostileHost, strict_keys: Keys) -> None:
    hits = len(hostile_host.hits)
    run_row(strict_server, hostile_host, strict_keys, row)
    # Refused before connecting: the loopback host never saw the request.
    assert not any("/img/strict-" in hit or "/redirect" in hit for hit in hostile_host.hits[hits:]), hostile_host.hits[hits:]


def test_wallets_match_their_ledgers(hostile_server: RunningServer, strict_server: RunningServer) -> None:
    """Every hold, capture and release of the rows above left balance == ledger sum."""
    for server in (hostile_server, strict_server):
        store = JobStore(server_db(server))
        try:
            rows = list(store.keys.balances())
            assert rows
            for key_id, balance_micros, ledger in rows:
                assert balance_micros == ledger, key_id
        finally:
            store.dispose()
