"""Headless Chromium for the browser tests (the viewer page, the run report): Debian's chromium and chromedriver
through Selenium, offline; a test FAILS (never skips) when either is missing."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def system_tool(path: Path) -> str:
    """``path``, else the same program on PATH; the test FAILS (never skips) without it."""
    found = str(path) if path.exists() else shutil.which(path.name)
    if not found:
        pytest.fail(f"{path.name} not found: install it with `make system-packages` (Debian chromium, chromium-driver)")
    return found


@contextmanager
def headless_chromium(extra_args: Sequence[str] = ()) -> Iterator:
    """A headless Chromium driven by the system chromedriver, its console logged; Selenium Manager never asked."""
    chromium, chromedriver = system_tool(CHROMIUM), system_tool(CHROMEDRIVER)
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", *extra_args):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()
