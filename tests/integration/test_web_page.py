"""The lab web page in a real headless Chromium (Debian's, driven by playwright)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.vocabulary import CELL_LABELS, LEUKOCYTE_TYPES, NON_LEUKOCYTE_TYPES
from tests.helpers.images import DATA_DIR, fullsize_images
from tests.helpers.keys import CLASSIFY_KEY, LAB_KEY
from tests.helpers.processes import REPO_ROOT, start_gateway

pytestmark = pytest.mark.integration
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR", REPO_ROOT / "artifacts"))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, cell_service, subtype_service):
    process = start_gateway(tmp_path_factory.mktemp("gateway-page"), cell_service.url, subtype_service.url)
    yield process
    process.stop()


def upload(browser, url: str, patient: str, key: str, paths: list):
    """A new tab on the page at ``url`` that uploads ``paths`` for ``patient`` and waits for the result."""
    page = browser.new_page(viewport={"width": 1200, "height": 1600})
    page.goto(url + "/")
    page.fill("#patient-id", patient)
    page.fill("#api-key", key)
    page.set_input_files("#images", [str(p) for p in paths])
    page.click("#submit")
    page.wait_for_selector("#result:not([hidden])", timeout=120_000)
    return page


def test_upload_images_and_see_the_result(browser, gateway):
    page = browser.new_page(viewport={"width": 1200, "height": 1600})
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((gateway.url, "blob:", "data:")) else None)
    page.goto(gateway.url + "/")
    page.fill("#patient-id", "WEB-001")
    page.fill("#api-key", CLASSIFY_KEY)
    page.set_input_files("#images", [str(path) for _, path in fullsize_images()[::2]])
    assert "32 image(s) selected" in page.inner_text("#selection")
    page.click("#submit")
    page.wait_for_selector("#result:not([hidden])", timeout=120_000)
    assert "WEB-001" in page.inner_text("#r-patient")
    assert "32 images" in page.inner_text("#r-summary")
    chart_labels = page.locator("#chart-counts text:nth-child(3n+1)").all_text_contents()
    assert chart_labels == list(CELL_LABELS), "the counts chart shows every label of the vocabulary"
    assert page.locator("#chart-probabilities rect").count() == 5
    assert page.locator("#r-differential tbody td:first-child").all_inner_texts() == list(LEUKOCYTE_TYPES)
    assert page.locator("#r-per100 tbody td:first-child").all_inner_texts() == list(NON_LEUKOCYTE_TYPES)
    assert "unclassified" in page.inner_text("#r-quality")
    assert page.locator("#r-quality-banner").is_hidden(), "in-domain originals raise no quality banner"
    assert page.locator("#gallery .group:not(.apl-top) .cell img").count() == 32
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_page.png"), full_page=True)
    assert outside == [], "the page loads nothing from outside the gateway"

    assert page.evaluate("sessionStorage.getItem('aml-api-key')") == CLASSIFY_KEY
    page.fill("#patient-id", "../bad")
    page.click("#submit")
    assert "Invalid patient id" in page.inner_text("#error")
    page.fill("#patient-id", "WEB-002")
    page.fill("#api-key", "aml_wrong_" + "x" * 40)
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])")
    assert "401" in page.inner_text("#error")
    page.close()


def test_every_cell_of_a_large_group_can_be_reviewed_least_confident_first(browser, gateway):
    neutrophils = sorted((DATA_DIR / "pbc" / "neutrophil").glob("SNE_*.jpg"))[:75]
    assert len(neutrophils) == 75
    page = upload(browser, gateway.url, "WEB-MANY", CLASSIFY_KEY, neutrophils)
    group = page.locator('#gallery .group[data-label="neutrophil"]')
    total = int(group.locator("h4").inner_text().split("(")[1].split(",")[0])
    assert total > 60, "most of 75 segmented neutrophils are labelled neutrophil"
    assert group.locator(".cell").count() == 60, "the first 60 at once"
    shown = [float(t.strip().rstrip("%")) for t in group.locator(".cell").evaluate_all(
        "boxes => boxes.map(b => b.lastChild.textContent)")]
    assert shown == sorted(shown), "least confident first"
    group.locator("button.show-all").click()
    assert group.locator(".cell").count() == total and group.locator("button.show-all").count() == 0
    last = group.locator(".cell").last
    assert last.locator(".label-badge").inner_text().startswith("neutrophil"), "labels filled in for the rest too"
    last.click()
    assert page.locator("#cell-editor").is_visible(), "a cell beyond the first 60 can be corrected"
    page.close()


def test_review_a_cell_and_sign_off(browser, gateway):
    import httpx

    page = upload(browser, gateway.url, "WEB-REVIEW", LAB_KEY, [path for _, path in fullsize_images()[1::4]])
    assert page.inner_text("#r-status").startswith("preliminary")
    counts_before = dict(zip(page.locator("#chart-counts text:nth-child(3n+1)").all_text_contents(),
                             map(int, page.locator("#chart-counts text:nth-child(3n)").all_text_contents())))
    cell = page.locator("#gallery .cell").first
    sha = cell.get_attribute("data-sha256")
    cell.click()
    assert page.locator("#cell-editor").is_visible()
    old = page.input_value("#relabel")
    new = "blast" if old != "blast" else "lymphocyte"
    page.select_option("#relabel", new)
    counts_after = dict(zip(page.locator("#chart-counts text:nth-child(3n+1)").all_text_contents(),
                            map(int, page.locator("#chart-counts text:nth-child(3n)").all_text_contents())))
    assert counts_after[old] == counts_before[old] - 1 and counts_after[new] == counts_before[new] + 1
    assert "1 correction" in page.inner_text("#r-corrections")
    assert f"(model: {old})" in cell.inner_text()
    page.fill("#reviewer", "Dr. Page")
    page.click("#sign-off")
    page.wait_for_function("document.querySelector('#r-status').textContent.startsWith('final')", timeout=60_000)
    assert "Dr. Page" in page.inner_text("#r-status")
    assert f"(model: {old})" in page.locator(f'#gallery .cell[data-sha256="{sha}"]').first.inner_text()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_page_review.png"), full_page=True)
    stored = httpx.get(f"{gateway.url}/patients/WEB-REVIEW/classification",
                       headers={"X-API-Key": LAB_KEY}, timeout=10).json()
    assert stored["status"] == "final" and stored["reviewed_by"] == "Dr. Page"
    assert stored["cell_counts"][new] == counts_before[new] + 1
    page.close()

    later = browser.new_page(viewport={"width": 1200, "height": 1600})  # another day, another tab
    later.goto(gateway.url + "/")
    later.fill("#patient-id", "WEB-REVIEW")
    later.fill("#api-key", LAB_KEY)
    later.click("#open-latest")
    later.wait_for_function("document.querySelector('#r-status').textContent.startsWith('final')", timeout=30_000)
    later.wait_for_function("[...document.querySelectorAll('#gallery .cell img')].every(i => i.complete && "
                            "i.naturalWidth > 0)", timeout=30_000)
    assert later.locator("#gallery .group:not(.apl-top) .cell img").count() == 16, \
        "the stored thumbnails, not the local files"
    assert f"(model: {old})" in later.locator(f'#gallery .cell[data-sha256="{sha}"]').first.inner_text()
    later.close()


def test_unsaved_corrections_are_not_dropped_without_asking(browser, gateway):
    from playwright.sync_api import Error as PlaywrightError

    page = upload(browser, gateway.url, "WEB-UNSAVED", LAB_KEY, [path for _, path in fullsize_images()[2::8]])
    page.locator("#gallery .cell").first.click()
    page.select_option("#relabel", "blast" if page.input_value("#relabel") != "blast" else "lymphocyte")
    assert "1 correction(s) not saved yet" in page.inner_text("#r-corrections")

    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.click("#open-latest")  # the stored report would replace the screen: the reviewer stays
    assert asked and "1 correction(s) of patient WEB-UNSAVED are not saved" in asked[0]
    assert "1 correction(s) not saved yet" in page.inner_text("#r-corrections")
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.click("#submit")  # nor does a new upload replace it unasked
    assert len(asked) == 2 and "1 correction(s) not saved yet" in page.inner_text("#r-corrections")

    leaving = []
    page.once("dialog", lambda dialog: (leaving.append(dialog.type), dialog.dismiss()))
    with pytest.raises(PlaywrightError):  # leaving the page (reload, another address, closing) asks too
        page.reload(timeout=5_000)
    assert leaving == ["beforeunload"]
    assert "1 correction(s) not saved yet" in page.inner_text("#r-corrections"), "the reviewer stayed"

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#open-latest")  # accepted: the stored report, no unsaved correction left
    page.wait_for_function("document.querySelector('#r-corrections').textContent === ''", timeout=30_000)
    page.close()


@pytest.fixture(scope="module")
def alerting_gateway(tmp_path_factory, apl_cell_service, apl_alert_subtype_service):
    """A gateway whose subtype service's APL threshold is 0: the APL alert fires for every patient."""
    process = start_gateway(tmp_path_factory.mktemp("gateway-apl-page"), apl_cell_service.url,
                            apl_alert_subtype_service.url)
    yield process
    process.stop()


def test_apl_alert_banner_and_the_top_cells_first(browser, alerting_gateway):
    import httpx

    from tests.helpers.images import DEEPAPL_DIR

    files = sorted((DEEPAPL_DIR / "images" / "Patient_00").glob("*.jpg"), key=lambda p: p.name)[:24]
    page = upload(browser, alerting_gateway.url, "WEB-APL", LAB_KEY, files)
    banner = page.locator("#r-apl-banner")
    assert banner.is_visible() and banner.inner_text() == "Suspected APL: urgent confirmation of PML::RARA"
    assert banner.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(204, 0, 0)", "a red banner"
    report = httpx.get(f"{alerting_gateway.url}/patients/WEB-APL/classification?include=cells",
                       headers={"X-API-Key": LAB_KEY},
                       timeout=10).json()
    assert report["apl_alert"] is True and report["apl_threshold"] == 0.0
    assert f"APL probability {100 * report['apl_probability']:.1f}%" in page.inner_text("#r-apl")
    first_group = page.locator("#gallery .group").first
    assert "apl-top" in first_group.get_attribute("class"), "the top APL cells come first in the gallery"
    shown = first_group.locator(".cell").evaluate_all("boxes => boxes.map(b => b.dataset.sha256)")
    assert shown == [c["sha256"] for c in report["apl_top_cells"]] and len(shown) == 10
    assert "APL logit" in first_group.locator(".cell").first.inner_text()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_page_apl_alert.png"), full_page=True)

    first_group.locator(".cell").first.click()  # a top cell can be relabelled like any other
    assert page.locator("#cell-editor").is_visible()
    assert page.inner_text("#cell-name") == report["apl_top_cells"][0]["filename"]
    page.close()

    quiet = browser.new_page(viewport={"width": 1200, "height": 1600})  # a report without an alert
    quiet.goto(alerting_gateway.url + "/")
    quiet.evaluate("""report => render(report, [])""", {**report, "apl_alert": False, "apl_threshold": 1.0})
    assert quiet.locator("#r-apl-banner").is_hidden() and "APL probability" in quiet.inner_text("#r-apl")
    quiet.evaluate("""report => render(report, [])""", {**report, "apl_alert": None, "apl_probability": None,
                                                        "apl_threshold": None, "apl_top_cells": []})
    assert quiet.locator("#r-apl-banner").is_hidden() and quiet.locator("#r-apl").is_hidden()
    assert quiet.locator("#gallery .group").count() > 0 and quiet.locator("#gallery .group.apl-top").count() == 0
    quiet.close()
