"""The viewer page driven end to end in headless Chromium (Debian's chromium and chromedriver, through Selenium,
offline): upload a phantom X-ray, wait for the probability and the region overlay, toggle the region, screenshot.

Without the browser the test fails (``make test`` installs it through ``make system-packages``); it never skips.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest

from clinic import REPO_ROOT
from tests.servers import free_port
from tests.test_inference import DETECT

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = REPO_ROOT / "runs" / "test-artifacts"


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    """A real uvicorn serving the app (untrained tiny weights, detector floor 0) on a free loopback port."""
    import uvicorn

    from clinic.engine import WarmInference
    from clinic.service import ServiceSettings, create_app

    work = tmp_path_factory.mktemp("service")
    engine = WarmInference(work / "results", models, device="cpu", overrides={DETECT.lstrip("-"): 0.0})
    app = create_app(ServiceSettings(work_dir=work, max_upload_bytes=5_000_000), engine)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not uv.started:
        assert thread.is_alive() and time.time() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(20)


def system_tool(path: Path) -> str:
    """``path``, else the same program on PATH; the test FAILS (never skips) without it."""
    found = str(path) if path.exists() else shutil.which(path.name)
    if not found:
        pytest.fail(f"{path.name} not found: install it with `make system-packages` (Debian chromium, chromium-driver)")
    return found


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through the system chromedriver; Selenium Manager is never asked to download anything."""
    chromium, chromedriver = system_tool(CHROMIUM), system_tool(CHROMEDRIVER)
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1440,960"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    yield driver
    driver.quit()


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
