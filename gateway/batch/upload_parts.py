"""A patient's images as the parts of aml-classify's multipart upload, read from disk while they are
sent: one file open at a time, 64 KiB in memory, whatever the folder's size (it held every image in
memory, up to the gateway's 1 GiB body limit). The body's length is known before it is sent (the sizes
checked against the limits), so the gateway sees a Content-Length; a file that changes size during
the upload is that patient's error, never a body cut short or a part taken from another file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from gateway.batch.folders import PatientProblem, unreadable

PART_NAME = "images"


class ImageFile:
    """One image as httpx reads a file part: its length from ``seek(0, SEEK_END)`` (the size checked
    before the upload, without opening it), then ``seek(0)`` and ``read`` until b"". The file is opened
    at the first read and closed once ``size`` bytes are read, so a retry (which seeks to 0) reads it
    afresh."""

    def __init__(self, path: Path, size: int):
        self.path = path
        self.size = size
        self._position = 0
        self._file: BinaryIO | None = None

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self.size}[whence]
        position = base + offset
        if position != self._position:
            self._close_file()
            self._position = position
        return position

    def read(self, n: int = -1) -> bytes:
        left = self.size - self._position
        if left <= 0:
            return b""
        wanted = left if n is None or n < 0 else min(n, left)
        try:
            if self._file is None:
                self._file = open(self.path, "rb")  # noqa: SIM115 (closed at the end of the file or by seek/close)
                self._file.seek(self._position)
            chunk = self._file.read(wanted)
            if len(chunk) < wanted:
                raise self._changed("shrank")
            self._position += len(chunk)
            if self._position == self.size and self._file.read(1):
                raise self._changed("grew")
        except OSError as exc:
            self._close_file()
            raise unreadable(self.path, exc) from exc
        except PatientProblem:
            self._close_file()
            raise
        if self._position == self.size:
            self._close_file()
        return chunk

    def close(self) -> None:
        self._close_file()

    def _changed(self, how: str) -> PatientProblem:
        return PatientProblem(f"{self.path.name} {how} while it was being sent (was {self.size} bytes): "
                              "let whatever writes the folder finish, then rerun")

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def image_parts(sizes: dict[Path, int]) -> list[tuple[str, tuple[str, ImageFile, str]]]:
    """The multipart parts for httpx's ``files=``, in the order of ``sizes``."""
    return [(PART_NAME, (path.name, ImageFile(path, size), "application/octet-stream"))
            for path, size in sizes.items()]


def close_parts(parts: list[tuple[str, tuple[str, ImageFile, str]]]) -> None:
    for _, (_, image, _) in parts:
        image.close()
