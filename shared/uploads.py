"""Reading the image parts of a multipart upload, with the limits and errors both APIs share."""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from shared.problems import ProblemError


async def read_image_parts(request: Request, max_images: int, per: str = "request") -> list[tuple[str, bytes]]:
    """(filename, bytes) of every part named ``images``, in order.

    415 when the body is not multipart, 422 when it holds no image parts (or a part is not a
    file), 413 when it holds more than ``max_images``.
    """
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ProblemError(415, "send the images as multipart/form-data parts named 'images'")
    try:
        form = await request.form(max_files=max_images + 1, max_fields=64)
    except ClientDisconnect:
        raise ProblemError(400, "the client disconnected during the upload; nothing was processed",
                           title="Client Closed Request") from None
    except MultiPartException as exc:
        if "Too many files" in str(exc):
            raise ProblemError(413, f"too many images: at most {max_images} per {per}") from None
        raise ProblemError(422, f"malformed multipart body: {exc}") from None
    try:
        parts = form.getlist("images")
        files = [part for part in parts if isinstance(part, UploadFile)]
        if len(files) != len(parts):
            raise ProblemError(422, "every 'images' part must be a file upload")
        if not files:
            raise ProblemError(422, "no images: send one or more multipart parts named 'images'")
        if len(files) > max_images:
            raise ProblemError(413, f"too many images: {len(files)}, at most {max_images} per {per}")
        return [(part.filename or f"image-{i}", await part.read()) for i, part in enumerate(files)]
    finally:
        await form.close()
