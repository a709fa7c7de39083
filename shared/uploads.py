"""Reading the image parts of a multipart upload, with the limits and errors both APIs share.

Two paths give the same parts: a body of at most ``FAST_PATH_MAX_BYTES`` whose every part is a
well-formed file part named ``images`` is split in one pass over the bytes (``_split_image_parts``);
anything else (larger or chunked bodies, other fields, odd headers, malformed bodies) goes through
Starlette's streaming form parser, which also words every error; a body that ends before its closing
boundary is refused (that parser would drop its unfinished last part without a word). The fast path exists for the
many small requests of a busy cell service: the general parser's per-part callbacks, spooled
files and form objects cost several times more than the split (issue 12).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import Request
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from shared.problems import ProblemError

FAST_PATH_MAX_BYTES = 8 * 1024 * 1024  # larger bodies stream through the general parser (spooled to disk)
_HEADER_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# what clients send nearly always; anything else goes through python-multipart's header parser
_PLAIN_CONTENT_TYPE = re.compile(r"multipart/form-data; ?boundary=([0-9A-Za-z'()+_,./:=?-]{1,70})")
_PLAIN_DISPOSITION = re.compile(rb'form-data; ?name="images"; ?filename="([^"\\\x00-\x1f]*)"')
MAX_FIELDS = 64  # form fields besides the files (the general parser's limit)
NOT_MULTIPART = "send the images as multipart/form-data parts named 'images'"


def _boundary(content_type: str) -> bytes | None:
    """The boundary of a multipart Content-Type without a charset; None if absent or with a charset."""
    plain = _PLAIN_CONTENT_TYPE.fullmatch(content_type)
    if plain:
        return plain.group(1).encode()
    _, params = parse_options_header(content_type)
    return None if b"charset" in params else params.get(b"boundary")


def _image_filename(disposition: bytes) -> bytes | None:
    """The filename of a ``form-data`` part named ``images`` with a filename; None for any other part."""
    plain = _PLAIN_DISPOSITION.fullmatch(disposition)
    if plain:
        return plain.group(1)
    kind, options = parse_options_header(disposition)
    return options.get(b"filename") if kind == b"form-data" and options.get(b"name") == b"images" else None


CLIENT_DISCONNECTED = "client_disconnected"  # set on request.state: no one is left to answer (metrics skip it)


def _disconnected(request: Request) -> ProblemError:
    setattr(request.state, CLIENT_DISCONNECTED, True)
    return ProblemError(400, "the client disconnected during the upload; nothing was processed",
                        title="Client Closed Request")


def _parser_problem(message: str, max_images: int, per: str) -> ProblemError:
    """Starlette's multipart parser error -> ours: a count or size limit is 413 (``max_files`` is one more than
    ``max_images``, so too many images are refused the same from the first image too many on), the rest 422."""
    if message.startswith("Too many files"):
        return ProblemError(413, f"too many images: at most {max_images} per {per}")
    if message.startswith("Too many fields"):
        return ProblemError(413, f"too many form fields: at most {MAX_FIELDS}")
    if "exceeded maximum size" in message:  # a form field (not a file) over the parser's part size
        return ProblemError(413, f"a form field is too large: {message}")
    return ProblemError(422, f"malformed multipart body: {message}")


def _split_image_parts(body: bytes, boundary: bytes, max_images: int) -> list[tuple[str, bytes]] | None:
    """(filename, bytes) of every part when the body is a plain multipart body of 1 to ``max_images``
    file parts named ``images``; None for anything else (the general parser then decides)."""
    delimiter = b"--" + boundary
    if not boundary or not body.startswith(delimiter + b"\r\n"):
        return None
    separator = b"\r\n" + delimiter
    parts: list[tuple[str, bytes]] = []
    position = len(delimiter) + 2
    while True:
        end = body.find(separator, position)
        if end < 0:
            return None
        head_end = body.find(b"\r\n\r\n", position, end)
        if head_end < 0:
            return None
        disposition = None
        for line in body[position:head_end].split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if not colon or not _HEADER_NAME.fullmatch(name):
                return None
            if name.lower() == b"content-disposition":
                if disposition is not None:
                    return None
                disposition = value.strip(b" \t")
        if disposition is None:
            return None
        filename = _image_filename(disposition)
        if filename is None:
            return None
        try:
            parts.append((filename.decode("utf-8"), body[head_end + 4:end]))
        except UnicodeDecodeError:
            return None
        if len(parts) > max_images:
            return None
        position = end + len(separator)
        following = body[position:position + 2]
        if following == b"--":
            return parts if body[position + 2:] in (b"", b"\r\n") else None
        if following != b"\r\n":
            return None
        position += 2


class _ClosingWatch:
    """Passes a body's chunks on and notes whether the closing delimiter (``--boundary--``) went by: the
    general parser takes a body cut off before it as complete and silently drops the unfinished last part."""

    def __init__(self, content_type: str):
        _, params = parse_options_header(content_type)
        self.closing = b"--" + params.get(b"boundary", b"") + b"--"
        self.seen = False

    async def chunks(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        tail = b""
        async for chunk in stream:
            if not self.seen and chunk:
                window = tail + chunk
                self.seen = self.closing in window
                tail = window[-(len(self.closing) - 1):]
            yield chunk


def _image_too_large(filename: str, max_image_bytes: int) -> ProblemError:
    return ProblemError(413, f"image {filename!r} is larger than the limit of {max_image_bytes} bytes per image")


async def read_image_parts(request: Request, max_images: int, per: str = "request",
                           max_image_bytes: int | None = None) -> list[tuple[str, bytes]]:
    """(filename, bytes) of every part named ``images``, in order.

    415 when the body is not multipart (media types are case-insensitive: ``Multipart/Form-Data`` is
    multipart), 422 when it holds no image parts (or a part is not a file, or the body is malformed), 413
    when it holds more than ``max_images`` (or too many or too large other fields) or, with
    ``max_image_bytes``, an image larger than that (the first such one named; checked before any large part
    is read into memory), all problem+json ``ProblemError``s, in an app as outside one. The gateway passes a
    limit: its body may be far larger than what a cell service accepts, and one image over the service's
    own limits came back as a misleading 502.
    """
    content_type = request.headers.get("content-type", "")
    if content_type.partition(";")[0].strip(" \t").lower() != "multipart/form-data":
        raise ProblemError(415, NOT_MULTIPART)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) <= FAST_PATH_MAX_BYTES:
        boundary = _boundary(content_type)
        if boundary:
            try:
                body = await request.body()  # kept on the request: the general parser below re-reads it
            except ClientDisconnect:
                raise _disconnected(request) from None
            parts = _split_image_parts(body, boundary, max_images)
            if parts is not None:
                named = [(filename or f"image-{i}", data) for i, (filename, data) in enumerate(parts)]
                if max_image_bytes is not None:
                    for filename, data in named:
                        if len(data) > max_image_bytes:
                            raise _image_too_large(filename, max_image_bytes)
                return named
    watch = _ClosingWatch(content_type)
    try:
        async with aclosing(watch.chunks(request.stream())) as stream:
            form = await MultiPartParser(request.headers, stream, max_files=max_images + 1,
                                         max_fields=MAX_FIELDS).parse()
    except ClientDisconnect:
        raise _disconnected(request) from None
    except MultiPartException as exc:
        raise _parser_problem(exc.message, max_images, per) from None
    try:
        if not watch.seen:
            raise ProblemError(422, "malformed multipart body: it ends before its closing boundary (the last "
                                    "image may be cut off); nothing was processed, send the upload again")
        parts = form.getlist("images")
        files = [part for part in parts if isinstance(part, UploadFile)]
        if len(files) != len(parts):
            raise ProblemError(422, "every 'images' part must be a file upload")
        if not files:
            raise ProblemError(422, "no images: send one or more multipart parts named 'images'")
        if len(files) > max_images:
            raise ProblemError(413, f"too many images: {len(files)}, at most {max_images} per {per}")
        if max_image_bytes is not None:
            for i, part in enumerate(files):  # the parser spooled each part (to disk past 1 MiB): not read yet
                if part.size is not None and part.size > max_image_bytes:
                    raise _image_too_large(part.filename or f"image-{i}", max_image_bytes)
        return [(part.filename or f"image-{i}", await part.read()) for i, part in enumerate(files)]
    finally:
        await form.close()
