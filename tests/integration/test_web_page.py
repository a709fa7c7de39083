"""The lab web page in a real headless Chromium (Debian's, driven by playwright)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.vocabulary import CELL_LABELS, LEUKOCYTE_TYPES, NON_LEUKOCYTE_TYPES
from tests.helpers.images import DATA_DIR, fullsize_images
from tests.helpers.keys import CLASSIFY_KEY, LAB_KEY, PERSONAL_KEY, PERSONAL_REVIEWER
from tests.helpers.processes import start_gateway

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    """Where the screenshots go: TEST_ARTIFACTS_DIR where given (CI keeps them), else a pytest temporary
    directory (never the repository)."""
    given = os.environ.get("TEST_ARTIFACTS_DIR")
    directory = Path(given) if given else tmp_path_factory.mktemp("artifacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, cell_service, subtype_service):
    # a small burst: a stored report's 16 thumbnails at once would meet 429s, the page loads them a few at a time
    process = start_gateway(tmp_path_factory.mktemp("gateway-page"), cell_service.url, subtype_service.url,
                            RATE_LIMIT_BURST="8")
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


def differential_rows(page) -> dict[str, str]:
    """The differential table as shown: label -> the figure's text."""
    return dict(zip(page.locator("#r-differential tbody td:first-child").all_inner_texts(),
                    page.locator("#r-differential tbody td:nth-child(2)").all_inner_texts()))


def test_upload_images_and_see_the_result(browser, gateway, artifacts):
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
    page.screenshot(path=str(artifacts / "web_page.png"), full_page=True)
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
    assert page.locator("#progress-box").is_hidden(), "no progress left showing after an error"
    page.close()


def test_a_personal_key_fills_in_its_reviewer_and_a_shared_key_leaves_the_name_to_type(browser, gateway):
    import httpx

    page = upload(browser, gateway.url, "WEB-PERSONAL", PERSONAL_KEY, [path for _, path in fullsize_images()[:4]])
    page.wait_for_function(f"document.querySelector('#reviewer').value === {PERSONAL_REVIEWER!r}", timeout=10_000)
    assert page.evaluate("document.querySelector('#reviewer').readOnly")
    assert "ajones" in page.inner_text("#reviewer-note")
    page.click("#sign-off")
    page.wait_for_function("document.querySelector('#r-status').textContent.startsWith('final')", timeout=60_000)
    assert f"{PERSONAL_REVIEWER} at" in page.inner_text("#r-status") and "(personal key ajones)" in page.inner_text("#r-status")
    stored = httpx.get(f"{gateway.url}/patients/WEB-PERSONAL/classification",
                       headers={"X-API-Key": PERSONAL_KEY}, timeout=10).json()
    assert stored["reviewed_by"] == PERSONAL_REVIEWER and stored["reviewer_key_id"] == "ajones"

    page.fill("#api-key", LAB_KEY)  # another key in the same tab: the name of the one before goes with it
    page.locator("#api-key").dispatch_event("change")
    page.wait_for_function("!document.querySelector('#reviewer').readOnly && "
                           "document.querySelector('#reviewer').value === ''", timeout=10_000)
    page.wait_for_function("document.querySelector('#reviewer-note').textContent.includes('shared')",
                           timeout=10_000)
    page.close()


def test_the_per_100_table_follows_a_correction_and_no_leukocyte_left_is_said(browser, gateway):
    page = upload(browser, gateway.url, "WEB-PER100", LAB_KEY, [path for _, path in fullsize_images()[2:6]])
    shas = page.locator("#gallery .group:not(.apl-top) .cell").evaluate_all("cells => cells.map(c => c.dataset.sha256)")
    assert len(shas) == 4

    def relabel(sha: str, label: str) -> None:
        page.locator(f'#gallery .group:not(.apl-top) .cell[data-sha256="{sha}"]').click()
        page.select_option("#relabel", label)

    def counts() -> dict[str, int]:
        return dict(zip(page.locator("#chart-counts text:nth-child(3n+1)").all_text_contents(),
                        map(int, page.locator("#chart-counts text:nth-child(3n)").all_text_contents())))

    relabel(shas[0], "platelet")  # a leukocyte (or not) becomes a platelet: the leukocyte total may change too
    now = counts()
    leukocytes = sum(now[t] for t in LEUKOCYTE_TYPES)
    per100 = dict(zip(page.locator("#r-per100 tbody td:first-child").all_inner_texts(),
                      page.locator("#r-per100 tbody td:nth-child(2)").all_inner_texts()))
    shown = float(per100["platelet"].split(" ")[0]) if leukocytes else None
    assert shown == (pytest.approx(100 * now["platelet"] / leukocytes, abs=0.051) if leukocytes else None)

    for sha in shas[1:]:
        relabel(sha, "platelet")
    assert all(text.startswith("n/a") for text in differential_rows(page).values()), \
        "no leukocyte left: no differential, never a row of zeros"
    assert "no leukocyte is left" in page.inner_text("#r-corrections")
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


def test_review_a_cell_and_sign_off(browser, gateway, artifacts):
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
    leukocytes_after = sum(counts_after[t] for t in LEUKOCYTE_TYPES)
    figure, saved = differential_rows(page)[new].split(" (saved ")
    assert float(figure) == pytest.approx(100 * counts_after[new] / leukocytes_after, abs=0.051), \
        "the differential follows the unsaved correction, the saved figure beside it"
    assert float(saved.rstrip(")")) == pytest.approx(100 * counts_before[new] / sum(counts_before[t] for t in LEUKOCYTE_TYPES),
                                                     abs=0.051)
    assert f"(model: {old})" in cell.inner_text()
    page.fill("#reviewer", "Dr. Page")
    page.fill("#review-comment", "blast confirmed on the smear")
    page.click("#sign-off")
    page.wait_for_function("document.querySelector('#r-status').textContent.startsWith('final')", timeout=60_000)
    assert "Dr. Page" in page.inner_text("#r-status") and "(name given with a shared key)" in page.inner_text("#r-status")
    assert page.inner_text("#r-review-comment") == "Reviewer's comment: blast confirmed on the smear"
    assert f"(model: {old})" in page.locator(f'#gallery .cell[data-sha256="{sha}"]').first.inner_text()
    page.screenshot(path=str(artifacts / "web_page_review.png"), full_page=True)
    stored = httpx.get(f"{gateway.url}/patients/WEB-REVIEW/classification",
                       headers={"X-API-Key": LAB_KEY}, timeout=10).json()
    assert stored["status"] == "final" and stored["reviewed_by"] == "Dr. Page"
    assert stored["cell_counts"][new] == counts_before[new] + 1
    shown = differential_rows(page)
    assert not any("saved" in text for text in shown.values()), "once saved, nothing is marked"
    assert {t: float(text) for t, text in shown.items()} == pytest.approx(stored["leukocyte_differential"], abs=0.051), \
        "once saved, the page's differential is the gateway's"
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
    assert "blast confirmed on the smear" in later.inner_text("#r-review-comment"), "the stored comment is shown"
    assert later.input_value("#review-comment") == "", "the comment box is for a new comment"
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


SHOWN_IMAGES_MISMATCH = """async () => {
  // the cells whose image is not the file with the cell's sha256 (the bytes behind each img, hashed here)
  const wrong = [];
  for (const box of document.querySelectorAll('#gallery .cell')) {
    const img = box.querySelector('img');
    if (!img.src) { wrong.push('no image ' + box.dataset.sha256); continue; }
    const bytes = await (await fetch(img.src)).arrayBuffer();
    const hex = [...new Uint8Array(await crypto.subtle.digest('SHA-256', bytes))]
      .map((b) => b.toString(16).padStart(2, '0')).join('');
    if (hex !== box.dataset.sha256) wrong.push(box.dataset.sha256);
  }
  return wrong;
}"""
ALL_IMAGES_SHOWN = ("[...document.querySelectorAll('#gallery .cell img')].every(i => i.src && i.complete && "
                    "i.naturalWidth > 0)")


def hold(page, pattern: str) -> list:
    """Requests matching ``pattern`` wait (unsent) in the returned list until the test lets them go."""
    held = []
    page.route(pattern, lambda route: held.append(route))
    return held


NOTE_XHR_ENDS = """(() => {
  // the address of each XMLHttpRequest that ended (answered, failed or abandoned), noted in a task after the
  // page's own handlers of that end have run
  window.xhrEnded = [];
  const open = XMLHttpRequest.prototype.open;
  XMLHttpRequest.prototype.open = function (method, url, ...rest) {
    this.addEventListener("loadend", () => setTimeout(() => window.xhrEnded.push(String(url)), 0));
    return open.call(this, method, url, ...rest);
  };
})();"""


def wait_held(page, held: list) -> None:
    for _ in range(400):
        if held:
            return
        page.wait_for_timeout(25)
    raise AssertionError("the request was never sent")


def keyed(method: str, url: str, **kwargs):
    """An API call that waits out this gateway's small burst (429 + Retry-After) like the page does."""
    import time

    import httpx

    for _ in range(10):
        response = httpx.request(method, url, timeout=30, **kwargs)
        if response.status_code != 429:
            return response
        time.sleep(float(response.headers.get("Retry-After", "1")))
    return response


def test_a_late_answer_never_replaces_a_newer_one_and_each_cell_shows_its_own_file(browser, gateway, tmp_path):
    from tests.helpers.uploads import classified

    images = [path for _, path in fullsize_images()]
    # patient B: two different images under the same name (two slides' folders) and six others
    for i, source in enumerate(images[5:7]):
        (tmp_path / f"slide{i}").mkdir()
        (tmp_path / f"slide{i}" / "cell.jpg").write_bytes(source.read_bytes())
    b_files = [tmp_path / "slide0" / "cell.jpg", tmp_path / "slide1" / "cell.jpg", *images[9:15]]

    page = browser.new_page(viewport={"width": 1200, "height": 1600})
    page.add_init_script(NOTE_XHR_ENDS)
    ended = {}  # request URL -> how the browser saw it end
    page.on("requestfinished", lambda r: ended.setdefault(r.url, "finished"))
    page.on("requestfailed", lambda r: ended.setdefault(r.url, f"failed: {r.failure}"))
    held_a = hold(page, "**/patients/WEB-LATE-A/classify*")
    held_b = hold(page, "**/patients/WEB-LATE-B/classify*")
    page.goto(gateway.url + "/")
    page.fill("#api-key", LAB_KEY)
    page.fill("#patient-id", "WEB-LATE-A")
    page.set_input_files("#images", [str(p) for p in images[16:40]])
    page.click("#submit")
    wait_held(page, held_a)  # A's classification is on its way, its answer late
    page.fill("#patient-id", "WEB-LATE-B")
    page.set_input_files("#images", [str(p) for p in b_files])
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    page.click("#submit")
    assert asked and "patient WEB-LATE-A are still being classified" in asked[0]
    wait_held(page, held_b)
    page.set_input_files("#images", [str(p) for p in images[40:44]])  # another choice while B is classified
    held_b[0].continue_()
    page.wait_for_function("document.querySelector('#r-patient').textContent === 'WEB-LATE-B'", timeout=120_000)
    # A's answer, late: a complete report (B's, as patient A's) that the page must not show now, delivered at
    # once (a real classification of A could still be running when the assertions below are made)
    b_report = held_b[0].request.response().json()
    assert b_report["patient_id"] == "WEB-LATE-B"
    held_a[0].fulfill(json={**b_report, "patient_id": "WEB-LATE-A"})
    a_url = held_a[0].request.url
    for _ in range(1200):  # the browser is done with A's request: answered, or abandoned by the page earlier
        if a_url in ended:
            break
        page.wait_for_timeout(25)
    assert a_url in ended, "A's request never ended"
    page.wait_for_function(f"window.xhrEnded.includes({a_url.removeprefix(gateway.url)!r})", timeout=30_000)
    assert page.inner_text("#r-patient") == "WEB-LATE-B" and "8 images" in page.inner_text("#r-summary")
    assert page.locator("#progress-box").is_hidden()
    alts = page.locator("#gallery .group:not(.apl-top) .cell img").evaluate_all("imgs => imgs.map(i => i.alt)")
    assert len(alts) == 8 and alts.count("cell.jpg") == 2
    assert page.evaluate(SHOWN_IMAGES_MISMATCH) == [], "every cell shows the file it was classified from"

    # another patient's report: B's unsent comment does not follow it
    page.fill("#review-comment", "for WEB-LATE-B only")
    lab = {"Authorization": f"Bearer {LAB_KEY}"}
    report = classified(gateway.url, "WEB-LATE-C", [(p.name, p.read_bytes()) for p in images[44:52]], headers=lab)
    page.fill("#patient-id", "WEB-LATE-C")
    page.click("#open-latest")
    page.wait_for_function("document.querySelector('#r-patient').textContent === 'WEB-LATE-C'", timeout=30_000)
    assert page.input_value("#review-comment") == "", "a comment never carries into another patient's sign-off"
    page.wait_for_function(ALL_IMAGES_SHOWN, timeout=30_000)

    # the keyboard: Enter (or Space) on a cell opens the label picker, a new label returns to the cell
    cells = page.locator("#gallery .group:not(.apl-top) .cell")
    cell = cells.first
    assert cell.get_attribute("role") == "button"
    cell.focus()
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "relabel" and cell.get_attribute("aria-pressed") == "true"
    sha, old = cell.get_attribute("data-sha256"), page.input_value("#relabel")
    new = "blast" if old != "blast" else "lymphocyte"
    page.select_option("#relabel", new)
    assert page.evaluate("document.activeElement.dataset.sha256") == sha, "focus back on the cell"
    cells.nth(1).focus()
    page.keyboard.press(" ")
    assert page.evaluate("document.activeElement.id") == "relabel"
    assert cells.nth(1).get_attribute("aria-pressed") == "true" and cell.get_attribute("aria-pressed") == "false"

    # someone else signs off first: 409, and the correction is carried onto the newest version
    other = keyed("POST", f"{gateway.url}/reports/{report['report_id']}/review", headers=lab,
                  json={"reviewer": "Dr. Other", "comment": "seen first", "sign_off": True})
    assert other.status_code == 201, other.text
    page.fill("#reviewer", "Dr. Page")
    page.fill("#review-comment", "my comment")
    held_review = hold(page, "**/review?include=cells")
    page.click("#sign-off")
    wait_held(page, held_review)
    assert page.locator("#sign-off").is_disabled() and page.locator("#save-draft").is_disabled(), "no second POST"
    held_review[0].continue_()
    page.unroute("**/review?include=cells")
    page.wait_for_selector("#stale:not([hidden])", timeout=30_000)
    assert "Someone else reviewed this report of patient WEB-LATE-C first" in page.inner_text("#stale-text")
    assert "1 correction(s) not saved yet" in page.inner_text("#r-corrections")
    page.fill("#patient-id", "WEB-001")  # the box names another patient now: the newest version is still C's
    page.click("#load-newest")
    page.wait_for_function("document.querySelector('#r-status').textContent.startsWith('final · version 2')",
                           timeout=30_000)
    assert page.inner_text("#r-patient") == "WEB-LATE-C" and "Dr. Other" in page.inner_text("#r-status")
    assert "seen first" in page.inner_text("#r-review-comment")
    assert "1 of your corrections re-applied" in page.inner_text("#notice")
    assert "1 correction(s) not saved yet" in page.inner_text("#r-corrections")
    assert f"{new} (model: {old})" in page.locator(f'#gallery .cell[data-sha256="{sha}"]').first.inner_text()
    assert page.input_value("#review-comment") == "my comment", "the same report: the comment stays"
    page.wait_for_function(ALL_IMAGES_SHOWN, timeout=30_000)
    page.click("#sign-off")
    page.wait_for_function("document.querySelector('#r-status').textContent.startsWith('amended · version 3')",
                           timeout=30_000)
    stored = keyed("GET", f"{gateway.url}/patients/WEB-LATE-C/classification?include=cells", headers=lab).json()
    (corrected,) = [c for c in stored["cells"] if c["sha256"] == sha]
    assert corrected["label"] == new and corrected["model_label"] == old and stored["review_comment"] == "my comment"

    # too large an image is refused here, before anything is sent
    huge = tmp_path / "huge.jpg"
    with huge.open("wb") as f:
        f.truncate(51 * 2**20)  # sparse: no disk used
    sent = []
    page.on("request", lambda r: sent.append(r.url) if "/classify" in r.url else None)
    page.set_input_files("#images", [str(huge)])
    assert "at most 50 MiB" in page.inner_text("#selection")
    page.click("#submit")
    assert "huge.jpg is 51.0 MiB" in page.inner_text("#error") and "Nothing was sent" in page.inner_text("#error")
    assert sent == []
    page.close()


@pytest.fixture(scope="module")
def alerting_gateway(tmp_path_factory, apl_cell_service, apl_alert_subtype_service):
    """A gateway whose subtype service's APL threshold is 0: the APL alert fires for every patient."""
    process = start_gateway(tmp_path_factory.mktemp("gateway-apl-page"), apl_cell_service.url,
                            apl_alert_subtype_service.url)
    yield process
    process.stop()


def test_apl_alert_banner_and_the_top_cells_first(browser, alerting_gateway, artifacts):
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
    assert f"APL probability {100 * report['apl_probability']:.2f}%" in page.inner_text("#r-apl")
    first_group = page.locator("#gallery .group").first
    assert "apl-top" in first_group.get_attribute("class"), "the top APL cells come first in the gallery"
    shown = first_group.locator(".cell").evaluate_all("boxes => boxes.map(b => b.dataset.sha256)")
    assert shown == [c["sha256"] for c in report["apl_top_cells"]] and len(shown) == 10
    assert "APL logit" in first_group.locator(".cell").first.inner_text()
    page.screenshot(path=str(artifacts / "web_page_apl_alert.png"), full_page=True)

    first_group.locator(".cell").first.click()  # a top cell can be relabelled like any other
    assert page.locator("#cell-editor").is_visible()
    assert page.inner_text("#cell-name") == report["apl_top_cells"][0]["filename"]
    page.close()

    quiet = browser.new_page(viewport={"width": 1200, "height": 1600})  # a report without an alert
    quiet.goto(alerting_gateway.url + "/")
    quiet.evaluate("""report => render(report, [])""", {**report, "apl_alert": False, "apl_threshold": 1.0})
    assert quiet.locator("#r-apl-banner").is_hidden() and "APL probability" in quiet.inner_text("#r-apl")
    assert quiet.inner_text("#r-apl").endswith("below the alert threshold"), "however close the rounded figures"
    quiet.evaluate("""report => render(report, [])""", {**report, "apl_alert": None, "apl_probability": None,
                                                        "apl_threshold": None, "apl_top_cells": []})
    assert quiet.locator("#r-apl-banner").is_hidden() and quiet.locator("#r-apl").is_hidden()
    assert quiet.locator("#gallery .group").count() > 0 and quiet.locator("#gallery .group.apl-top").count() == 0
    # no API key in this tab: the thumbnails are refused and the cells say so instead of staying blank
    quiet.wait_for_selector("#gallery .cell.no-image .no-image-note")
    assert "image unavailable" in quiet.locator("#gallery .cell.no-image img").first.get_attribute("alt")
    # a quality with a distance but no threshold (an older model card) is shown, not a half-drawn screen
    quality = {**report["quality"], "appearance_distance": 1.5, "appearance_threshold": None}
    quiet.evaluate("""report => render(report, [])""", {**report, "patient_id": "WEB-NULLS", "quality": quality})
    assert quiet.inner_text("#r-patient") == "WEB-NULLS" and quiet.locator("#error").is_hidden()
    assert "appearance distance 1.5" in quiet.inner_text("#r-quality")
    quiet.close()
