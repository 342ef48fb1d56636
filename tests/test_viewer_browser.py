"""The viewer page driven end to end in headless Chromium (Debian's chromium and chromedriver, through Selenium,
offline): upload a phantom X-ray, wait for the probability and the region overlay, toggle the region, screenshot.

Without the browser the test fails (``make test`` installs it through ``make system-packages``); it never skips.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from clinic import REPO_ROOT
from tests.browser import headless_chromium
from tests.test_inference import DETECT

ARTIFACTS = REPO_ROOT / "runs" / "test-artifacts"


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    """A real uvicorn serving the app (untrained tiny weights, detector floor 0) on a free loopback port."""
    from clinic.engine import WarmInference
    from clinic.service import ServiceSettings, create_app, running

    work = tmp_path_factory.mktemp("service")
    engine = WarmInference(work / "results", models, device="cpu", overrides={DETECT.lstrip("-"): 0.0})
    app = create_app(ServiceSettings(work_dir=work, max_upload_bytes=5_000_000), engine)
    with running(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through the system chromedriver; Selenium Manager is never asked to download anything."""
    with headless_chromium(["--window-size=1440,960"]) as driver:
        yield driver


@pytest.fixture(scope="module")
def xray(tmp_path_factory) -> Path:
    from scripts.imageio import save_xray
    from tools.phantom import render_patient

    image = render_patient(11, True, n_views=1, size=256)[0].image
    return save_xray(tmp_path_factory.mktemp("xray") / "phantom", image, "png16")


def test_the_page_shows_an_assessment_and_toggles_the_region(server, browser, xray, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def el(id_: str):
        return browser.find_element(By.ID, id_)

    browser.get(server + "/")
    WebDriverWait(browser, 30).until(lambda _: el("model-info").text.startswith("model "))
    el("file").send_keys(str(xray))
    WebDriverWait(browser, 60).until(lambda _: el("region-layer").get_attribute("data-ready") == "true")

    assert re.fullmatch(r"[01]\.\d\d", el("probability").text), el("probability").text
    assert el("finding").text in ("Fracture", "Suspicious", "No fracture")
    assert "threshold 0.40" in el("points").text and el("verdict").text
    assert browser.execute_script("return document.getElementById('xray').naturalWidth") == 256
    assert browser.execute_script("return document.querySelectorAll('#box-layer rect').length") == 1
    for crop in ("crop", "repaired"):
        assert browser.execute_script(f"return document.getElementById('{crop}').naturalWidth") == 64
    painted = "const c = document.getElementById('region-layer'); return [c.width, c.height];"
    assert browser.execute_script(painted) == [256, 256]
    assert el("region-layer").is_displayed()

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "viewer.png"
    browser.save_screenshot(str(shot))
    browser.find_element(By.CSS_SELECTOR, "label:has(#toggle-region)").click()  # the region off...
    assert not el("region-layer").is_displayed()
    browser.save_screenshot(str(ARTIFACTS / "viewer_region_off.png"))
    el("toggle-region").click()  # ...and on again
    assert el("region-layer").is_displayed()
    print(f"\nscreenshots: {shot} and {shot.with_name('viewer_region_off.png')}")

    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith(server + "/") for url in loaded), loaded  # nothing from elsewhere
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors

    junk = tmp_path / "notes.png"
    junk.write_bytes(b"not an image at all, just text\n" * 30)
    el("file").send_keys(str(junk))
    WebDriverWait(browser, 30).until(lambda _: "DICOM, PNG, JPEG or NIfTI" in el("message").text)
    assert el("message").text.startswith("Upload refused:") and not el("figure").is_displayed()


# A record as /predict answers it, with blank pictures drawn in the page (data: URLs, allowed by its policy): the
# rendering function (showResult) shown two operating points, which the tiny test weights do not have.
SHOW_RECORD = """
const [finding, p, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
const canvas = Object.assign(document.createElement("canvas"), { width: 256, height: 256 });
canvas.getContext("2d").fillRect(0, 0, 256, 256);  // black: an empty region mask
const blank = canvas.toDataURL("image/png");
const record = {
  finding, fracture_probability: p, finding_reason: "crafted record", detector_confidence: 0.9,
  thresholds: { suspicious: 0.2, fracture: 0.6 }, image_size: [256, 256], seconds: 0.05, warnings: [],
  nasal_bone_box: finding === "not assessable" ? null : [100, 80, 160, 140],
  links: { xray: blank, region_mask: blank, heatmap: blank },
};
showResult(record).then(() => done(null), (err) => done(String(err)));
"""


@pytest.mark.parametrize(
    ("finding", "p", "label", "verdict", "note"),
    [
        (
            "suspicious",
            0.45,
            "Suspicious",
            "Between the suspicious (0.20) and fracture (0.60) points.",
            "no region above the map's threshold",
        ),
        ("fracture", 0.8, "Fracture", "At or above the fracture point (0.60).", "no region above the map's threshold"),
        ("no fracture", 0.1, "No fracture", "Below the suspicious point (0.20).", "below the suspicious point"),
        ("not assessable", None, "Not assessable", "", ""),
    ],
)
def test_two_operating_points_and_the_empty_region_note_follow_the_finding(
    server, browser, finding, p, label, verdict, note
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def el(id_: str):
        return browser.find_element(By.ID, id_)

    browser.get(server + "/")
    WebDriverWait(browser, 30).until(lambda _: el("model-info").text.startswith("model "))
    assert browser.execute_async_script(SHOW_RECORD, finding, p) is None

    assert el("finding").text == label and el("verdict").text == verdict
    assert el("points").text == "suspicious ≥ 0.20 · fracture ≥ 0.60"
    assert el("mark-suspicious").is_displayed() and el("mark-fracture").is_displayed()
    scale = browser.find_element(By.CSS_SELECTOR, ".scale").rect
    for mark, at in (("mark-suspicious", 0.2), ("mark-fracture", 0.6)):  # each tick at its point on the scale
        assert abs(el(mark).rect["x"] + 1 - (scale["x"] + at * scale["width"])) <= 2, mark
    assert el("probability").text == ("n/a" if p is None else f"{p:.2f}") and el("marker").is_displayed() == (
        p is not None
    )
    assert (note in el("region-note").text) if note else el("region-note").text == ""
    if finding == "suspicious":
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "viewer_two_points.png"))
