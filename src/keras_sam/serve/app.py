"""The web app of `keras-sam serve`: the page and its HTTP API.

Routes (coordinates in the original picture's pixels; every error is
`{"error": "<one sentence>"}` with a 4xx status, never a traceback):

- `GET /`: the page (`static/index.html`, plain HTML, CSS, JavaScript).
- `POST /api/images` (multipart field `file`): read and encode a picture
  -> `{"image_id", "width", "height"}`.
- `POST /api/images/{image_id}/predict` -> `{"masks": [{"rle", "score"}]}`.
- `POST /api/images/{image_id}/everything` -> COCO-style annotations;
  `GET /api/images/{image_id}/progress` -> `{"done", "total"}` meanwhile.
- `DELETE /api/images/{image_id}`.
- `GET /api/examples`, `GET /api/examples/{name}.png`: bundled pictures.
- `GET /openapi.json`: the OpenAPI description.
"""

import functools
import io as stdlib_io
import os
import pathlib
import re

from fastapi import FastAPI
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.responses import JSONResponse
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import StrictBool
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.formparsers import MultiPartParser

from keras_sam import io
from keras_sam.serve.segmenter import Segmenter
from keras_sam.serve.sessions import ImageNotFound
from keras_sam.serve.sessions import ImageStore

STATIC = pathlib.Path(__file__).resolve().parent / "static"
MAX_UPLOAD_BYTES = 32 * 2**20
MAX_PIXELS = 50_000_000
# Held-out shapes pictures (never seen in training), by name.
EXAMPLES = {"shapes-1": 11, "shapes-2": 12, "shapes-3": 13}
EXAMPLE_SIZE = (256, 256)  # the bundled model's training size
# Every page response: no framing by other sites, no sniffing, and only
# this server's scripts (the page loads nothing from elsewhere).
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; "
        "style-src 'self'; script-src 'self'; object-src 'none'"
    ),
}


class PredictRequest(BaseModel):
    """One prompt on an uploaded picture."""

    model_config = ConfigDict(extra="forbid")
    points: list[tuple[float, float]] = Field(
        default_factory=list, description="[[x, y], ...] picture pixels"
    )
    labels: list[int] = Field(
        default_factory=list,
        description="1 foreground, 0 background; default all 1",
    )
    box: tuple[float, float, float, float] | None = Field(
        default=None, description="[x1, y1, x2, y2] picture pixels"
    )
    multimask: StrictBool = Field(
        default=True, description="three candidates (true) or one mask"
    )
    previous_mask: StrictBool = Field(
        default=False,
        description="feed the last remembered prediction's low-res logits "
        "back as the mask prompt",
    )
    previous_index: int | None = Field(
        default=None,
        description="which candidate of that prediction (default: the "
        "best-scored)",
    )
    remember: StrictBool = Field(
        default=True,
        description="keep this prediction for previous_mask (a hover "
        "preview sends false)",
    )


class EverythingRequest(BaseModel):
    """Options of "segment everything" (unset: the server's defaults, the
    official ones unless `create_app` was told otherwise)."""

    model_config = ConfigDict(extra="forbid")
    points_per_side: int | None = Field(default=None, ge=1, le=64)
    pred_iou_thresh: float | None = Field(default=None, allow_inf_nan=False)
    stability_score_thresh: float | None = Field(default=None, ge=0, le=1)


class ImageResponse(BaseModel):
    image_id: str
    width: int
    height: int


class MaskResponse(BaseModel):
    rle: dict = Field(description='{"size": [H, W], "counts": [...]}')
    score: float


class PredictResponse(BaseModel):
    masks: list[MaskResponse]


class UploadTooLarge(Exception):
    pass


def create_app(
    model,
    *,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_PIXELS,
    max_images: int = 16,
    max_bytes: int = 2**31,
    everything_options: dict | None = None,
) -> FastAPI:
    """The app for `model`, a `keras_sam.SAM`.

    Args:
        model: the model every request uses.
        max_upload_bytes: largest upload accepted (413 beyond).
        max_pixels: largest picture decoded, width x height (413 beyond:
            a possible decompression bomb).
        max_images: encoded pictures kept (least recently used evicted;
            a request for an evicted one gets 404 saying so).
        max_bytes: bytes of pictures and embeddings kept.
        everything_options: defaults of "segment everything"
            (`points_per_side`, `pred_iou_thresh`,
            `stability_score_thresh`); the official ones otherwise.
    """
    defaults = {
        "points_per_side": 32,
        "pred_iou_thresh": 0.88,
        "stability_score_thresh": 0.95,
        **(everything_options or {}),
    }
    segmenter = Segmenter(model)
    store = ImageStore(max_images=max_images, max_bytes=max_bytes)
    app = FastAPI(
        title="keras-sam serve",
        description="Segment Anything: click on a picture, get its mask.",
        docs_url=None,  # Swagger UI would load scripts from a CDN
        redoc_url=None,
    )
    app.state.store = store
    app.state.segmenter = segmenter

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):
        return JSONResponse({"error": str(exc.detail)}, exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return JSONResponse({"error": validation_message(exc)}, 422)

    @app.exception_handler(Exception)
    async def internal_error(request, exc):
        return JSONResponse(
            {"error": f"internal error ({type(exc).__name__})"}, 500
        )

    def entry_of(image_id: str):
        try:
            return store.get(image_id)
        except ImageNotFound as e:
            raise HTTPException(404, str(e)) from None

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.post(
        "/api/images",
        response_model=ImageResponse,
        summary="Upload and encode a picture (multipart field `file`)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {
                                "file": {"type": "string", "format": "binary"}
                            },
                        }
                    }
                },
            }
        },
    )
    async def upload(request: Request):
        name, data = await read_upload(request, max_upload_bytes)
        try:
            image = io.read_image_bytes(data, name, max_pixels=max_pixels)
        except ValueError as e:
            status = 413 if str(e).startswith("refusing") else 400
            raise HTTPException(status, str(e)) from None
        try:
            entry = await run_in_threadpool(segmenter.encode, image)
        except ValueError as e:
            raise HTTPException(400, f"{name}: {e}") from None
        h, w = entry.size
        return {"image_id": store.add(entry), "width": w, "height": h}

    @app.post(
        "/api/images/{image_id}/predict",
        response_model=PredictResponse,
        summary="Masks for points and/or a box",
    )
    async def predict(image_id: str, body: PredictRequest):
        entry = entry_of(image_id)
        try:
            masks = await run_in_threadpool(
                functools.partial(
                    segmenter.predict,
                    entry,
                    points=[list(p) for p in body.points],
                    labels=body.labels,
                    box=None if body.box is None else list(body.box),
                    multimask=body.multimask,
                    previous_mask=body.previous_mask,
                    previous_index=body.previous_index,
                    remember=body.remember,
                )
            )
        except ValueError as e:
            raise HTTPException(400, prompt_message(str(e))) from None
        return {"masks": masks}

    @app.post(
        "/api/images/{image_id}/everything",
        summary="Segment everything: COCO-style annotations",
    )
    async def everything(image_id: str, body: EverythingRequest | None = None):
        entry = entry_of(image_id)
        if entry.progress is not None:
            raise HTTPException(
                409, "segment everything is already running on this image"
            )
        given = body.model_dump(exclude_none=True) if body else {}
        try:
            document = await run_in_threadpool(
                functools.partial(
                    segmenter.everything,
                    entry,
                    **{**defaults, **given},
                    file_name=image_id,
                )
            )
        except (ValueError, ImportError) as e:
            raise HTTPException(400, str(e)) from None
        return io.jsonable(document)

    @app.get(
        "/api/images/{image_id}/progress",
        summary="Progress of a running segment everything",
    )
    async def progress(image_id: str):
        entry = entry_of(image_id)
        done, total = entry.progress or (0, 0)
        return {
            "running": entry.progress is not None,
            "done": done,
            "total": total,
        }

    @app.delete("/api/images/{image_id}", summary="Forget a picture")
    async def delete(image_id: str):
        try:
            store.remove(image_id)
        except ImageNotFound as e:
            raise HTTPException(404, str(e)) from None
        return {"deleted": image_id}

    @app.get("/api/examples", summary="The bundled example pictures")
    async def examples():
        return {
            "examples": [
                {"name": n, "url": f"/api/examples/{n}.png"} for n in EXAMPLES
            ]
        }

    @app.get("/api/examples/{name}.png", summary="A bundled example picture")
    async def example(name: str):
        if name not in EXAMPLES:
            raise HTTPException(404, f"no example named {name!r}")
        data = await run_in_threadpool(example_png, name)
        return Response(data, media_type="image/png")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(SecurityHeaders)
    return app


class SecurityHeaders:
    """ASGI middleware: `SECURITY_HEADERS` on every HTTP response (plain
    ASGI, which adds nothing per request beyond the headers)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [
                    (k.lower().encode(), v.encode())
                    for k, v in SECURITY_HEADERS.items()
                    if k.lower().encode() not in names
                ]
                message = {
                    **message,
                    "headers": [*message.get("headers", []), *extra],
                }
            await send(message)

        await self.app(scope, receive, send_with_headers)


@functools.cache
def example_png(name: str) -> bytes:
    """The PNG of bundled example `name`: a held-out shapes picture."""
    from PIL import Image

    from keras_sam.training.datasets.shapes import make_scene
    from keras_sam.training.evaluation import EVALUATION_SEED

    image, _ = make_scene(
        (EVALUATION_SEED, EXAMPLES[name], 0, 1), image_size=EXAMPLE_SIZE
    )
    buffer = stdlib_io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


async def read_upload(request: Request, limit: int) -> tuple[str, bytes]:
    """`(file name, bytes)` of the multipart field `file`, refusing bodies
    over `limit` bytes before reading them whole."""
    too_large = HTTPException(
        413, f"the upload is larger than the server's limit of {limit} bytes"
    )
    length = request.headers.get("content-length")
    # the multipart framing adds a few hundred bytes to the file
    if length is not None and length.isdigit() and int(length) > limit + 4096:
        raise too_large
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise HTTPException(
            415,
            "send the picture as multipart/form-data with the field 'file'. "
            f"Received: Content-Type {content_type or 'none'}",
        )

    async def capped():
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit + 4096:
                raise UploadTooLarge
            yield chunk

    parser = MultiPartParser(
        request.headers,
        capped(),
        max_files=1,
        max_fields=8,
    )
    try:
        form = await parser.parse()
    except UploadTooLarge:
        raise too_large from None
    except MultiPartException as e:
        raise HTTPException(
            400, f"bad multipart upload ({e.message})"
        ) from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        await form.close()
        raise HTTPException(
            400, "the upload has no file in the multipart field 'file'"
        )
    try:
        data = await upload.read()
    finally:
        await form.close()
    if len(data) > limit:
        raise too_large
    if not data:
        raise HTTPException(400, "the uploaded file is empty")
    return upload_name(upload.filename), data


def upload_name(filename: str | None) -> str:
    """A file name fit for a message: its last part, printable, short."""
    name = os.path.basename((filename or "").replace("\\", "/"))
    name = re.sub(r"[^\w.\- ]", "_", name)[:80]
    return name or "upload"


def prompt_message(message: str) -> str:
    """The predictor's message in the API's words (`point_coords` ->
    points)."""
    for old, new in (
        ("`point_coords`", "points"),
        ("`point_labels`", "labels"),
        ("`box`", "box"),
        ("point_coords", "points"),
        ("point_labels", "labels"),
    ):
        message = message.replace(old, new)
    return message


def validation_message(exc: RequestValidationError) -> str:
    """One sentence for a request FastAPI could not parse."""
    errors = exc.errors()
    if not errors:
        return "bad request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON"
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    message = first.get("msg", "invalid value")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if where:
        return f"{where}: {message}{more}"
    return f"{message}{more}"
