"""The multipart fast path (shared/uploads.py) gives what Starlette's parser gives, or steps aside."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request

from shared import uploads
from shared.problems import ProblemError

BOUNDARY = "b0undary"


def part(data: bytes, filename: str | None = "a.jpg", name: str = "images", extra: str = "") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return (f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n{extra}"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"


def body(*parts: bytes, epilogue: bytes = b"\r\n") -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--".encode() + epilogue


def request(data: bytes, content_type: str = f"multipart/form-data; boundary={BOUNDARY}",
            length: bool = True, split: int = 7) -> Request:
    headers = [(b"content-type", content_type.encode())]
    if length:
        headers.append((b"content-length", str(len(data)).encode()))
    chunks = [data[:split], data[split:]]

    async def receive():
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}, receive)


def both(data: bytes, max_images: int = 4, max_image_bytes: int | None = None, **kwargs):
    """(fast path's answer, general parser's answer): a list of parts, or (status, detail) of the error."""
    def run(fast_limit: int):
        original = uploads.FAST_PATH_MAX_BYTES
        uploads.FAST_PATH_MAX_BYTES = fast_limit
        try:
            return asyncio.run(uploads.read_image_parts(request(data, **kwargs), max_images,
                                                        max_image_bytes=max_image_bytes))
        except ProblemError as problem:
            return problem.status, problem.detail
        finally:
            uploads.FAST_PATH_MAX_BYTES = original
    return run(1 << 30), run(-1)


SAME = [
    body(part(b"\xff\xd8jpeg")),
    body(part(b"one"), part(b"two\r\n--not-it"), part(b""), epilogue=b""),
    body(part(b"x", filename="")),  # no filename: image-0
    body(part(b"x", filename="caf\u00e9 \u00fcber.jpg")),
    body(part(b"x", filename="C:\\cells\\a.jpg")),
    body(part(b"x", extra="X-Other: 1\r\n")),
    body(part(b"1"), part(b"2"), part(b"3"), part(b"4"), part(b"5")),  # too many: 413
    body(part(b"x", name="other")),  # no images: 422
    body(part(b"x"), part(b"y", name="note", filename=None)),  # a field beside the file
    body(part(b"x", name="images", filename=None)),  # not a file: 422
    body(part(b"x"), epilogue=b"\r\ntrailing words"),
    body(part(b"x")).replace(b"\r\n", b"\n"),  # bare LF
    body(part(b"x"))[:-12],  # truncated
    b"garbage",
    b"",
]


@pytest.mark.parametrize("data", SAME)
def test_fast_path_agrees_with_the_general_parser(data):
    fast, general = both(data)
    assert fast == general


def test_fast_path_answers_common_bodies_itself(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the general parser was used")
    monkeypatch.setattr(uploads, "MultiPartParser", refuse)
    data = body(part(b"one", filename="x.jpg"), part(b"two", filename=""))
    assert asyncio.run(uploads.read_image_parts(request(data), 4)) == [("x.jpg", b"one"), ("image-1", b"two")]


def test_without_content_length_and_with_charset_the_general_parser_reads():
    data = body(part(b"one"))
    assert both(data, length=False) == ([("a.jpg", b"one")], [("a.jpg", b"one")])
    typed = f"multipart/form-data; charset=latin-1; boundary={BOUNDARY}"
    assert both(data, content_type=typed)[0] == both(data, content_type=typed)[1]


def test_not_multipart_is_415():
    fast, general = both(b"{}", content_type="application/json")
    assert fast == general and fast[0] == 415


def in_an_app(data: bytes, max_images: int = 4, content_type: str = f"multipart/form-data; boundary={BOUNDARY}",
              fast: bool = False):
    """Status, media type and body of an app's answer (``Request.form`` would turn the multipart parser's errors
    into a plain HTTPException(400) in an app, not outside one: both must give the same problem)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from shared.problems import install_problem_handlers

    app = FastAPI()
    install_problem_handlers(app)

    @app.post("/")
    async def upload(request: Request):
        return {"n": len(await uploads.read_image_parts(request, max_images))}

    original = uploads.FAST_PATH_MAX_BYTES
    uploads.FAST_PATH_MAX_BYTES = (1 << 30) if fast else -1
    try:
        answer = TestClient(app).post("/", content=data, headers={"content-type": content_type})
    finally:
        uploads.FAST_PATH_MAX_BYTES = original
    return answer.status_code, answer.headers["content-type"], answer.json()


@pytest.mark.parametrize("count", [5, 6, 9])
def test_too_many_images_is_413_however_many_in_an_app_too(count):
    data = body(*(part(str(i).encode()) for i in range(count)))
    for fast in (True, False):
        status, media_type, problem = in_an_app(data, fast=fast)
        assert (status, media_type) == (413, "application/problem+json"), (count, fast, problem)
        assert "at most 4" in problem["detail"]


def test_too_many_images_beside_other_fields_is_413():
    data = body(*(part(b"x") for _ in range(4)), part(b"y", name="other"), part(b"z", name="other"))
    assert in_an_app(data)[0] == 413


def test_a_malformed_body_is_a_problem_in_an_app_as_outside_one():
    data = body(part(b"x"), part(b"y").replace(b' name="images";', b""))  # a part without a name
    status, media_type, problem = in_an_app(data)
    assert (status, media_type) == (422, "application/problem+json")
    assert (status, problem["detail"]) == both(data)[1]


@pytest.mark.parametrize("content_type", [f"Multipart/Form-Data; boundary={BOUNDARY}",
                                          f"MULTIPART/FORM-DATA; Boundary={BOUNDARY}",
                                          f"multipart/form-data ; boundary={BOUNDARY}"])
def test_the_media_type_is_case_insensitive(content_type):
    data = body(part(b"one"), part(b"two", filename="b.png"))
    assert both(data, content_type=content_type) == ([("a.jpg", b"one"), ("b.png", b"two")],) * 2
    assert in_an_app(data, content_type=content_type, fast=True)[:2] == (200, "application/json")


@pytest.mark.parametrize("content_type", ["multipart/form-datax; boundary=b0undary", "text/plain", ""])
def test_other_media_types_are_415(content_type):
    assert both(body(part(b"x")), content_type=content_type) == ((415, uploads.NOT_MULTIPART),) * 2


def test_an_image_over_the_per_image_limit_is_413_naming_it_on_both_paths():
    data = body(part(b"s" * 10, filename="small.jpg"), part(b"b" * 101, filename="big.jpg"),
                part(b"c" * 200, filename="bigger.jpg"))
    fast, general = both(data, max_image_bytes=100)
    assert fast == general == (413, "image 'big.jpg' is larger than the limit of 100 bytes per image")
    assert both(data, max_image_bytes=200) == ([("small.jpg", b"s" * 10), ("big.jpg", b"b" * 101),
                                               ("bigger.jpg", b"c" * 200)],) * 2
    assert both(data) == both(data, max_image_bytes=200)  # no limit: as before
    unnamed = body(part(b"x" * 101, filename=""))
    assert both(unnamed, max_image_bytes=100) == ((413, "image 'image-0' is larger than the limit of 100 bytes per "
                                                        "image"),) * 2


def test_a_large_image_is_refused_before_it_is_read_into_memory(monkeypatch):
    read = []
    original = uploads.UploadFile.read

    async def reading(self, *args):
        read.append(self.filename)
        return await original(self, *args)

    monkeypatch.setattr(uploads.UploadFile, "read", reading)
    data = body(part(b"s"), part(b"b" * (2 << 20), filename="big.jpg"))  # spooled to disk by the parser
    assert both(data, max_image_bytes=1 << 20)[1][0] == 413
    assert read == []


@pytest.mark.parametrize("cut", [0, 6, 12, 40])
def test_a_body_cut_before_its_closing_boundary_is_422_never_a_short_list(cut):
    """The general parser alone returns the parts before the cut as if the body were whole: one image lost
    without a word. Both paths refuse it."""
    whole = body(part(b"first image"), part(b"second image"))
    data = whole[:whole.rindex(f"--{BOUNDARY}--".encode()) - cut]
    fast, general = both(data)
    assert fast == general and fast[0] == 422 and "closing boundary" in fast[1]
    assert in_an_app(data)[0] == 422


def test_a_closing_boundary_split_between_chunks_is_seen():
    data = body(part(b"one"), part(b"two"))
    for split in range(len(data) - 14, len(data)):  # every cut through "--b0undary--\r\n"
        original = uploads.FAST_PATH_MAX_BYTES
        uploads.FAST_PATH_MAX_BYTES = -1
        try:
            parts = asyncio.run(uploads.read_image_parts(request(data, split=split), 4))
        finally:
            uploads.FAST_PATH_MAX_BYTES = original
        assert parts == [("a.jpg", b"one"), ("a.jpg", b"two")], split
