"""report.html as a person sees it: opened in headless Chromium (Debian's chromium + chromedriver,
installed by `make install`), the page loads without console errors, every image decodes, and the
error table shows a failed input's message with the HTML in its file name shown as text."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from facefab.jobs.cli import main

REPO = Path(__file__).resolve().parents[2]
HOSTILE = "<img src=x onerror=alert(1)>.mp4"  # a file name an attacker or a careless export could produce


def _chromium(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser and driver, "headless Chromium is missing: run `make install` (installs Debian's chromium)"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.fixture(scope="module")
def report(tmp_path_factory, ray_local):
    folder = tmp_path_factory.mktemp("inputs")
    shutil.copy(REPO / "samples" / "halfbody_sun_3s.mp4", folder / "sun.mp4")
    (folder / HOSTILE).write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(3000))
    root = tmp_path_factory.mktemp("report") / "root"
    assert main(["preprocess", str(folder), "--out", str(root), "--no-progress",
                 "--max-failed-fraction", "0.5"]) == 0
    html_path = root / "report.html"
    assert main(["report", str(root), "--html", str(html_path)]) == 0
    return html_path


def test_report_loads_in_chromium_with_every_image_decoded_and_errors_escaped(report, tmp_path):
    from selenium.webdriver.common.by import By

    driver = _chromium(tmp_path)
    try:
        driver.get(report.as_uri())
        assert driver.title == "facefab report"
        console = driver.get_log("browser")
        assert not [e for e in console if e["level"] in ("SEVERE", "WARNING")], console
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
        assert len(images) >= 3  # score histograms and one contact sheet
        assert all(complete and w > 0 and h > 0 for _, complete, w, h in images), images
        assert not any(alt == "" and w == 0 for alt, _, w, _ in images)
        rows = driver.find_elements(By.XPATH, "//h2[starts-with(., 'Errors')]/following-sibling::table[1]//tr")
        failed = [r.text for r in rows if r.text.startswith("failed")]
        assert len(failed) == 1, [r.text for r in rows]
        assert HOSTILE in failed[0]  # the name shows as text, not as an element
        assert "probe" in failed[0] and "cannot open video" in failed[0]
        assert not driver.find_elements(By.CSS_SELECTOR, "img[src='x']")  # nothing injected
    finally:
        driver.quit()
