"""Headless Chromium (Debian's chromium + chromedriver, driven by selenium) for checking rendered pages."""

from __future__ import annotations

import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def open_page(path: str):
    """Load a local page (a file path, or an http:// URL of a local server); return (driver, severe console
    messages). The caller quits the driver."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.get(path if path.startswith("http://") else f"file://{path}")
    severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    return driver, severe


def broken_images(driver) -> list[str]:
    return driver.execute_script(
        "return [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
    )


def funnel_numbers(driver) -> dict[str, dict[str, int]]:
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#funnel tr[data-stage]')].map(tr => [tr.dataset.stage,"
        " [...tr.querySelectorAll('td[data-key]')].map(td => [td.dataset.key, td.textContent])])"
    )
    return {stage: {k: int(v) for k, v in cells} for stage, cells in rows}
