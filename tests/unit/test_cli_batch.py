"""aml-classify over a batch, against a small local HTTP server standing in for the gateway: one bad
patient is that patient's error row and the batch goes on; subfolders, invalid ids and over-limit
folders are refused without an upload; hidden entries are skipped; 429/503 and connection errors are
retried; an unreachable gateway stops the run; images are sent from disk, not memory, and one that changes
size on the way is an error row; cell texts cannot run as spreadsheet formulas."""

from __future__ import annotations

import csv
import hashlib
import json
import socket
import threading
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gateway import cli
from gateway.batch import posting, results_file
from tests.helpers.reports import sample_report

KEY = "aml_x_" + "y" * 20
PART_MARKER = b'name="images"'


class FakeGateway:
    """Answers POST /patients/{id}/classify with a sample report, or with the answers queued for a path
    (status, headers, body). Records each request's path and number of image parts, and each body's
    sha256 and length, reading it in chunks (a test of the client's memory use must not count a copy
    of the body here)."""

    def __init__(self):
        self.requests: list[tuple[str, int]] = []
        self.bodies: list[tuple[str, int]] = []
        self.queued: dict[str, list[tuple[int, dict, bytes]]] = {}
        self.report_overrides: dict = {}
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                digest, length, parts, tail = hashlib.sha256(), 0, 0, b""
                left = int(self.headers["Content-Length"])
                while left:
                    chunk = self.rfile.read(min(left, 2 ** 16))
                    if not chunk:
                        return  # the client gave up part-way: no request to record, no answer
                    digest.update(chunk)
                    length, left = length + len(chunk), left - len(chunk)
                    window = tail + chunk  # a marker across two chunks is counted once, in the later one
                    parts += window.count(PART_MARKER)
                    tail = window[-(len(PART_MARKER) - 1):]
                gateway.requests.append((self.path, parts))
                gateway.bodies.append((digest.hexdigest(), length))
                status, headers, payload = gateway.answer(self.path)
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def answer(self, path: str) -> tuple[int, dict, bytes]:
        if self.queued.get(path):
            return self.queued[path].pop(0)
        patient_id = path.split("/")[2]
        report = {**sample_report(patient_id).model_dump(mode="json"), **self.report_overrides}
        return 200, {}, json.dumps(report).encode()

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    server = FakeGateway()
    yield server
    server.stop()


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    """The retry waits, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(posting, "_wait", recorded.append, raising=False)
    return recorded


def make_patient(root: Path, name: str, n_images: int = 2) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for index in range(n_images):
        (folder / f"c{index}.jpg").write_bytes(b"jpeg bytes")
    return folder


def run(root: Path, out: Path, url: str, *extra: str) -> int:
    return cli.main([str(root), "--out", str(out), "--gateway", url, "--api-key", KEY, *extra])


def rows(out: Path) -> dict[str, dict]:
    return {row["patient_id"]: row for row in csv.DictReader(open(out, newline="", encoding="utf-8"))}


def path_of(patient_id: str) -> str:
    return f"/patients/{patient_id}/classify"


# --- 1: one bad patient does not stop the batch --------------------------------------------------------

def test_a_broken_link_is_an_error_row_and_later_patients_are_done(tmp_path, gateway):
    root = tmp_path / "patients"
    broken = make_patient(root, "PAT-A")
    (broken / "c9.jpg").symlink_to(tmp_path / "gone.jpg")
    make_patient(root, "PAT-B")
    out = tmp_path / "results.csv"
    assert run(root, out, gateway.url) == 1
    result = rows(out)
    assert result["PAT-A"]["status"] == "error" and "c9.jpg" in result["PAT-A"]["error"]
    assert "broken link" in result["PAT-A"]["error"]
    assert result["PAT-B"]["status"] == "ok"
    assert gateway.paths() == [path_of("PAT-B")]


def test_an_unlistable_folder_is_an_error_row(tmp_path, gateway, monkeypatch):
    root = tmp_path / "patients"
    locked = make_patient(root, "PAT-A")
    make_patient(root, "PAT-B")
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self == locked:  # chmod 000 does not stop root, so the refusal is simulated
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    out = tmp_path / "results.csv"
    assert run(root, out, gateway.url) == 1
    result = rows(out)
    assert result["PAT-A"]["status"] == "error" and "Permission denied" in result["PAT-A"]["error"]
    assert result["PAT-B"]["status"] == "ok"


def test_a_200_that_is_not_json_or_not_a_report_is_an_error_row(tmp_path, gateway):
    root = tmp_path / "patients"
    for name in ("PAT-A", "PAT-B", "PAT-C"):
        make_patient(root, name)
    gateway.queued[path_of("PAT-A")] = [(200, {"Content-Type": "text/html"}, b"<html>proxy login</html>")]
    gateway.queued[path_of("PAT-B")] = [(200, {}, json.dumps({"patient_id": "PAT-B"}).encode())]
    out = tmp_path / "results.csv"
    assert run(root, out, gateway.url) == 1
    result = rows(out)
    assert result["PAT-A"]["status"] == "error" and "not JSON" in result["PAT-A"]["error"]
    assert result["PAT-B"]["status"] == "error" and "KeyError" in result["PAT-B"]["error"]
    assert result["PAT-C"]["status"] == "ok"


def test_a_report_with_labels_this_version_does_not_know_is_an_error_row(tmp_path, gateway):
    """A gateway with a newer vocabulary: the CSV's columns cannot hold its counts; that patient's error row (the
    CSV writer raised outside the per-patient guard and ended the batch)."""
    root = tmp_path / "patients"
    for name in ("PAT-A", "PAT-B"):
        make_patient(root, name)
    newer = sample_report("PAT-A").model_dump()
    newer["cell_counts"]["myelocyte"] = 3
    gateway.queued[path_of("PAT-A")] = [(200, {}, json.dumps(newer).encode())]
    out = tmp_path / "results.csv"
    assert run(root, out, gateway.url) == 1
    result = rows(out)
    assert result["PAT-A"]["status"] == "error" and "count_myelocyte" in result["PAT-A"]["error"]
    assert "update aml-classify" in result["PAT-A"]["error"]
    assert result["PAT-B"]["status"] == "ok"


# --- 2: subfolders and hidden entries -------------------------------------------------------------------

def test_a_subfolder_is_an_error_row_and_hidden_entries_are_skipped(tmp_path, gateway):
    root = tmp_path / "patients"
    nested = make_patient(root, "PAT-A")
    make_patient(nested, "slide2")
    clean = make_patient(root, "PAT-B", n_images=3)
    (clean / "._c0.jpg").write_bytes(b"AppleDouble")
    (clean / ".DS_Store").write_bytes(b"x")
    make_patient(clean, ".ipynb_checkpoints")
    make_patient(clean, "@eaDir")
    make_patient(root, "@eaDir")
    make_patient(root, ".Trash")
    make_patient(root, "System Volume Information")
    out = tmp_path / "results.csv"
    assert run(root, out, gateway.url) == 1
    result = rows(out)
    assert set(result) == {"PAT-A", "PAT-B"}, "hidden and system folders are not patients"
    assert result["PAT-A"]["status"] == "error"
    assert "slide2" in result["PAT-A"]["error"] and "directly in its folder" in result["PAT-A"]["error"]
    assert result["PAT-B"]["status"] == "ok"
    assert gateway.requests == [(path_of("PAT-B"), 3)], "PAT-A not sent; PAT-B without its hidden files"


# --- 3: retries and stopping ----------------------------------------------------------------------------

def test_429_with_retry_after_is_retried(tmp_path, gateway, waits):
    root = tmp_path / "patients"
    make_patient(root, "PAT-A")
    gateway.queued[path_of("PAT-A")] = [(429, {"Retry-After": "7"}, b'{"detail": "rate limit"}'),
                                        (429, {"Retry-After": "600"}, b'{"detail": "rate limit"}')]
    out = tmp_path / "results.csv"
    assert run(root, out, gateway.url) == 0
    assert rows(out)["PAT-A"]["status"] == "ok"
    assert gateway.requests == [(path_of("PAT-A"), 2)] * 3, "each retry sends every image again"
    assert len({length for _, length in gateway.bodies}) == 1, "each retry sends the images whole"
    assert waits == [7.0, 60.0], "Retry-After, capped at a minute"


def test_503_without_retry_after_backs_off_and_gives_up_after_retries(tmp_path, gateway, waits):
    root = tmp_path / "patients"
    make_patient(root, "PAT-A")
    make_patient(root, "PAT-B")
    gateway.queued[path_of("PAT-A")] = [(503, {}, b'{"detail": "busy"}')] * 3
    out = tmp_path / "results.csv"
    assert run(root, out, gateway.url, "--retries", "2") == 1
    result = rows(out)
    assert result["PAT-A"]["status"] == "error" and "HTTP 503: busy" in result["PAT-A"]["error"]
    assert result["PAT-B"]["status"] == "ok"
    assert gateway.paths() == [path_of("PAT-A")] * 3 + [path_of("PAT-B")]
    assert waits == [2.0, 4.0]


def test_other_errors_are_not_retried(tmp_path, gateway, waits):
    root = tmp_path / "patients"
    make_patient(root, "PAT-A")
    gateway.queued[path_of("PAT-A")] = [(422, {}, b'{"detail": "no decodable image"}')]
    out = tmp_path / "results.csv"
    assert run(root, out, gateway.url) == 1
    assert rows(out)["PAT-A"]["error"] == "HTTP 422: no decodable image"
    assert len(gateway.requests) == 1 and waits == []


# --- 4: the images are read from disk as they are sent ---------------------------------------------------

def test_the_images_are_sent_from_disk_not_held_in_memory(tmp_path, gateway):
    folder = tmp_path / "patients" / "PAT-A"
    folder.mkdir(parents=True)
    for index in range(3):
        with open(folder / f"c{index}.jpg", "wb") as image:
            image.truncate(16 * 2 ** 20)
    out = tmp_path / "results.csv"
    tracemalloc.start()
    try:
        assert run(folder.parent, out, gateway.url) == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert gateway.requests == [(path_of("PAT-A"), 3)]
    assert gateway.bodies[0][1] > 48 * 2 ** 20, "every byte of the three images was sent"
    assert peak < 8 * 2 ** 20, f"{peak / 2 ** 20:.1f} MiB held while sending 48 MiB of images"


@pytest.mark.parametrize("change, how", [(b"jpeg bytes and more", "grew"), (b"jpeg", "shrank")])
def test_an_image_that_changes_size_before_it_is_sent_is_an_error_row(tmp_path, gateway, monkeypatch, change, how):
    root = tmp_path / "patients"
    changing = make_patient(root, "PAT-A")
    make_patient(root, "PAT-B")
    checked = cli.check_limits

    def check_then_change(images, limits):
        sizes = checked(images, limits)
        if images[0].parent == changing:
            images[-1].write_bytes(change)  # still being copied in, say
        return sizes

    monkeypatch.setattr(cli, "check_limits", check_then_change)
    out = tmp_path / "results.csv"
    assert run(root, out, gateway.url) == 1
    result = rows(out)
    assert result["PAT-A"]["status"] == "error"
    assert f"c1.jpg {how} while it was being sent (was 10 bytes)" in result["PAT-A"]["error"]
    assert result["PAT-B"]["status"] == "ok"
    assert gateway.paths() == [path_of("PAT-B")], "no body of PAT-A reached the gateway whole"


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_an_unreachable_gateway_stops_the_run_after_three_patients(tmp_path, waits, capsys):
    root = tmp_path / "patients"
    for index in range(6):
        make_patient(root, f"PAT-{index}")
    out = tmp_path / "results.csv"
    assert run(root, out, closed_port_url()) == 1
    result = rows(out)
    assert list(result) == ["PAT-0", "PAT-1", "PAT-2"], "stopped; the rest is left for a rerun"
    assert all(r["status"] == "error" and "unreachable" in r["error"] for r in result.values())
    assert waits == [2.0, 4.0, 8.0] * 3, "each patient tried 1 + --retries times with backoff"
    assert "stopped" in capsys.readouterr().err


# --- 5: patient ids -------------------------------------------------------------------------------------

def test_an_invalid_patient_id_is_an_error_row_without_an_upload(tmp_path, gateway):
    root = tmp_path / "patients"
    make_patient(root, "PAT#2")
    make_patient(root, "PAT-B")
    out = tmp_path / "results.csv"
    assert run(root, out, gateway.url) == 1
    result = rows(out)
    assert result["PAT#2"]["status"] == "error" and "not a valid patient id: 'PAT#2'" in result["PAT#2"]["error"]
    assert gateway.paths() == [path_of("PAT-B")]


def test_the_patient_id_is_quoted_in_the_url():
    assert posting.classify_path("PAT#2") == "/patients/PAT%232/classify"
    assert posting.classify_path("a/b?c") == "/patients/a%2Fb%3Fc/classify"


# --- 6: CSV formula injection ---------------------------------------------------------------------------

def test_texts_that_a_spreadsheet_would_run_are_quoted(tmp_path, gateway):
    root = tmp_path / "patients"
    make_patient(root, "PAT-A")
    gateway.report_overrides = {"warnings": ['=HYPERLINK("http://x","click")'], "prediction": "+cmd",
                                "quality": {"appearance_distance": -1.5, "smudge_fraction": 0.1}}
    make_patient(root, "PAT-B")
    out = tmp_path / "results.csv"
    gateway.queued[path_of("PAT-B")] = [(400, {}, b'{"detail": "-2+3\\nsecond line"}')]
    run(root, out, gateway.url)
    result = rows(out)
    assert result["PAT-A"]["warnings"] == '\'=HYPERLINK("http://x","click")'
    assert result["PAT-A"]["prediction"] == "'+cmd"
    assert result["PAT-A"]["appearance_distance"] == "-1.5", "numbers are left as numbers"
    assert result["PAT-B"]["error"] == "HTTP 400: -2+3 second line", "one line per row"
    assert results_file.safe_cell("@SUM(A1)") == "'@SUM(A1)" and results_file.safe_cell("\tx") == "'\tx"
    assert results_file.safe_cell("-x") == "'-x" and results_file.safe_cell(-2) == -2


# --- 7: limits checked before the upload ----------------------------------------------------------------

def test_too_many_images_is_an_error_row_without_an_upload(tmp_path, gateway):
    root = tmp_path / "patients"
    make_patient(root, "PAT-A", n_images=3)
    make_patient(root, "PAT-B", n_images=2)
    out = tmp_path / "results.csv"
    assert run(root, out, gateway.url, "--max-images", "2") == 1
    result = rows(out)
    assert "3 images, more than --max-images 2" in result["PAT-A"]["error"]
    assert gateway.paths() == [path_of("PAT-B")]


def test_an_image_over_the_size_limit_is_an_error_row_without_an_upload(tmp_path, gateway):
    root = tmp_path / "patients"
    big = make_patient(root, "PAT-A")
    (big / "huge.png").write_bytes(b"\0" * (2 * 2 ** 20))
    out = tmp_path / "results.csv"
    assert run(root, out, gateway.url, "--max-image-mib", "1") == 1
    error = rows(out)["PAT-A"]["error"]
    assert "huge.png (2.0 MiB)" in error and "--max-image-mib 1" in error
    assert gateway.requests == []


def test_the_default_limits_are_the_gateways():
    from gateway.settings import GatewaySettings

    fields = GatewaySettings.model_fields
    assert cli.DEFAULT_MAX_IMAGES == fields["max_images"].default
    assert cli.DEFAULT_MAX_IMAGE_MIB * 2 ** 20 == fields["max_image_bytes"].default


# --- 8: the last row is the result ----------------------------------------------------------------------

def test_help_says_a_patients_last_row_is_its_result(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "last row is its result" in capsys.readouterr().out.lower().replace("\n", " ")


# --- folders still being copied in, usage errors, proxies, Ctrl-C ---------------------------------------

def test_a_folder_that_gains_an_image_while_it_is_sent_is_an_error_row_and_redone(tmp_path, gateway, monkeypatch):
    """Small images copy in within a millisecond each: the listing falls between two files, no size ever
    changes, and the report is of part of the cells. The folder is listed again after the upload."""
    root = tmp_path / "patients"
    copying = make_patient(root, "PAT-A")
    make_patient(root, "PAT-B")
    posted = cli.post

    def post_while_copying(client, patient_id, parts, retries):
        result = posted(client, patient_id, parts, retries)
        if patient_id == "PAT-A" and not (copying / "c9.jpg").exists():
            (copying / "c9.jpg").write_bytes(b"the next cell")
        return result

    monkeypatch.setattr(cli, "post", post_while_copying)
    out = tmp_path / "results.csv"
    assert run(root, out, gateway.url) == 1
    first = rows(out)
    assert first["PAT-A"]["status"] == "error" and first["PAT-B"]["status"] == "ok"
    assert "the folder changed while it was sent (1 image(s) added, e.g. c9.jpg)" in first["PAT-A"]["error"]
    assert run(root, out, gateway.url) == 0
    assert rows(out)["PAT-A"]["status"] == "ok"
    assert gateway.requests[-1] == (path_of("PAT-A"), 3), "the rerun sent the folder whole"


@pytest.mark.parametrize("mistake", ["one patient's folder", "missing out folder", "out is a folder", "timeout 0"])
def test_usage_mistakes_exit_2_before_any_upload(tmp_path, gateway, mistake, capsys):
    root = tmp_path / "patients"
    folder = make_patient(root, "PAT-A")
    directory, out, extra = root, tmp_path / "results.csv", []
    if mistake == "one patient's folder":
        directory = folder
    elif mistake == "missing out folder":
        out = tmp_path / "nowhere" / "results.csv"
    elif mistake == "out is a folder":
        out = tmp_path
    else:
        extra = ["--timeout", "0"]
    with pytest.raises(SystemExit) as exited:
        run(directory, out, gateway.url, *extra)
    assert exited.value.code == 2 and gateway.requests == []
    assert "Traceback" not in capsys.readouterr().err


def test_a_local_gateway_is_reached_without_the_environments_proxy(tmp_path, gateway, monkeypatch):
    make_patient(tmp_path / "patients", "PAT-A")
    monkeypatch.setenv("HTTP_PROXY", closed_port_url())  # a proxy that would refuse every patient
    assert run(tmp_path / "patients", tmp_path / "results.csv", gateway.url) == 0
    assert gateway.paths() == [path_of("PAT-A")]


def test_ctrl_c_keeps_the_rows_written_and_exits_130(tmp_path, gateway, monkeypatch, capsys):
    root = tmp_path / "patients"
    for name in ("PAT-A", "PAT-B", "PAT-C"):
        make_patient(root, name)
    one_row = cli._patient_row

    def interrupted_at_b(client, folder, limits):
        if folder.name == "PAT-B":
            raise KeyboardInterrupt
        return one_row(client, folder, limits)

    monkeypatch.setattr(cli, "_patient_row", interrupted_at_b)
    out = tmp_path / "results.csv"
    assert run(root, out, gateway.url) == cli.INTERRUPTED == 130
    assert list(rows(out)) == ["PAT-A"] and "rerun the same command" in capsys.readouterr().err
    monkeypatch.setattr(cli, "_patient_row", one_row)
    assert run(root, out, gateway.url) == 0 and list(rows(out)) == ["PAT-A", "PAT-B", "PAT-C"]


def test_an_image_rewritten_at_the_same_size_while_the_folder_is_sent_is_an_error_row(tmp_path, gateway, monkeypatch):
    """Some copy tools set a file's full size first and fill it in later: only its modification time changes."""
    import os

    root = tmp_path / "patients"
    folder = make_patient(root, "PAT-A")
    posted = cli.post

    def post_then_filled_in(client, patient_id, parts, retries):
        result = posted(client, patient_id, parts, retries)
        image = folder / "c1.jpg"
        image.write_bytes(b"JPEG BYTES")  # the same 10 bytes' length, other content
        stat = image.stat()
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
        return result

    monkeypatch.setattr(cli, "post", post_then_filled_in)
    out = tmp_path / "results.csv"
    assert run(root, out, gateway.url) == 1
    assert "1 image(s) rewritten, e.g. c1.jpg" in rows(out)["PAT-A"]["error"]
