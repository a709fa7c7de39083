import os
import shutil
from pathlib import Path

import pytest

from tests.helpers.processes import start_cell_service, start_subtype_service
from tests.helpers.redis_server import RedisServer


@pytest.fixture(scope="session")
def cell_service(tmp_path_factory):
    process = start_cell_service(tmp_path_factory.mktemp("cell-shared"))
    yield process
    process.stop()


@pytest.fixture(scope="session")
def subtype_service(tmp_path_factory):
    process = start_subtype_service(tmp_path_factory.mktemp("subtype-shared"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def plain_gateway(tmp_path_factory, cell_service, subtype_service):
    """A gateway over the shared cell and subtype services, in-process cache, for one test module."""
    from tests.helpers.processes import start_gateway

    process = start_gateway(tmp_path_factory.mktemp("gateway"), cell_service.url, subtype_service.url)
    yield process
    process.stop()


# --- APL alert (issue 10): services with an APL head and an APL patient model ---------------------------
# The committed artifacts when the lead's training has written them, else small real ones in the same
# format (tests/helpers/apl_artifacts.py), so the wiring is tested either way.

@pytest.fixture(scope="session")
def apl_cell_service(request, tmp_path_factory):
    """A cell service with an APL head: the shared one when the committed model has it."""
    import json

    from tests.helpers.apl_artifacts import CELL_MODEL_DIR, cell_model_dir_with_head

    if json.loads((CELL_MODEL_DIR / "model_card.json").read_text()).get("apl_cell_head"):
        yield request.getfixturevalue("cell_service")
        return
    pytest.importorskip("onnx")
    directory = cell_model_dir_with_head(tmp_path_factory.mktemp("apl-cell") / "model")
    process = start_cell_service(tmp_path_factory.mktemp("apl-cell-log"), CELL_MODEL_DIR=str(directory))
    yield process
    process.stop()


def apl_subtype_model_dir(target, cell_head_sha256: str, threshold: float | None = None):
    """The committed subtype model directory with its APL model (when it matches the head), else with a
    small one; ``threshold`` overrides the APL card's alert threshold (0: the alert always fires)."""
    import json
    import shutil

    from tests.helpers.apl_artifacts import SUBTYPE_MODEL_DIR, subtype_model_dir_with_apl

    shutil.copytree(SUBTYPE_MODEL_DIR, target)
    card_path = target / "apl_card.json"
    if not (card_path.exists() and json.loads(card_path.read_text()).get("cell_head_sha256") == cell_head_sha256):
        subtype_model_dir_with_apl(target, cell_head_sha256)
    if threshold is not None:
        card = json.loads(card_path.read_text())
        card["threshold"] = threshold
        card_path.write_text(json.dumps(card))
    return target


@pytest.fixture(scope="session")
def apl_head_sha256(apl_cell_service) -> str:
    import httpx

    return httpx.get(f"{apl_cell_service.url}/v1/model", timeout=10).json()["apl_head"]["sha256"]


@pytest.fixture(scope="session")
def apl_subtype_service(request, tmp_path_factory, apl_head_sha256):
    """A subtype service with the APL model (its own threshold) for the head of ``apl_cell_service``."""
    from tests.helpers.apl_artifacts import committed_apl_artifacts

    if committed_apl_artifacts():
        yield request.getfixturevalue("subtype_service")
        return
    directory = apl_subtype_model_dir(tmp_path_factory.mktemp("apl-subtype") / "model", apl_head_sha256)
    process = start_subtype_service(tmp_path_factory.mktemp("apl-subtype-log"), SUBTYPE_MODEL_DIR=str(directory))
    yield process
    process.stop()


@pytest.fixture(scope="session")
def apl_alert_subtype_service(tmp_path_factory, apl_head_sha256):
    """A subtype service whose APL threshold is 0: the alert fires for every patient (page banner test)."""
    directory = apl_subtype_model_dir(tmp_path_factory.mktemp("apl-always") / "model", apl_head_sha256, 0.0)
    process = start_subtype_service(tmp_path_factory.mktemp("apl-always-log"), SUBTYPE_MODEL_DIR=str(directory))
    yield process
    process.stop()


CHROMIUM = os.environ.get("CHROMIUM_PATH", shutil.which("chromium") or "/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium driven by playwright (skips without it, unless REQUIRE_BROWSER_TESTS=1)."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("REQUIRE_BROWSER_TESTS") == "1":
            pytest.fail(f"Chromium not found at {CHROMIUM}")
        pytest.skip("Chromium not installed (apt-get install chromium; .ci/run does it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield browser
        browser.close()
