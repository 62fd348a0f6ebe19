"""The dashboard at `/`: served without a key; in headless Chromium, against a real
`sagetrain serve` and a job training on the tiny model, the loss curve grows while the job
runs."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_helpers import LiveServer, Service
from process_helpers import wait_for
from sample_data import rows
from test_e2e_serve import upload

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def test_page_and_assets_need_no_key(service: Service) -> None:
    page = service.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/dashboard/dashboard.js" in page.text and "/dashboard/dashboard.css" in page.text
    script = service.client.get("/dashboard/dashboard.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert service.client.get("/dashboard/dashboard.css").status_code == 200


@pytest.mark.parametrize("name", ["index.py", "..%2Fmain.py", "nothing.js"])
def test_only_the_dashboard_files_are_served(service: Service, name: str) -> None:
    assert service.client.get(f"/dashboard/{name}").status_code == 404


def _missing_browser() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    reason = _missing_browser()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs headless Chromium for the dashboard test: {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # no network on CI machines: nothing may try to reach the internet
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1500,1000",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=DriverService(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _points(driver: Any, chart: str) -> int:
    from selenium.webdriver.common.by import By

    return int(driver.find_element(By.ID, chart).get_attribute("data-points") or 0)


@pytest.mark.slow
def test_dashboard_shows_a_running_jobs_loss_growing(live_server: LiveServer, browser: Any,
                                                     tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with live_server.client() as c:
        train, valid = upload(c, rows(1600, 3), "dash.jsonl"), upload(c, rows(16, 4), "v.jsonl")
        r = c.post("/v1/fine_tuning/jobs", json={
            "model": "tiny-bert", "training_file": train, "validation_file": valid,
            "suffix": "dash", "hyperparameters": {
                "n_epochs": 4, "batch_size": 4, "max_seq_length": 16,
                "eval_every_steps": 50, "checkpoint_every_steps": 100}})
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]
        try:
            def training() -> bool:
                job = c.get(f"/v1/fine_tuning/jobs/{job_id}").json()
                assert job["status"] in ("queued", "running"), (job, live_server.log_text())
                return job["status"] == "running" and job["progress"]["step"] > 0

            wait_for(training, 120, "the job to start training")
            browser.get(live_server.url + "/")
            browser.find_element(By.ID, "key-input").send_keys(live_server.key)
            browser.find_element(By.ID, "key-save").click()
            row = f'#jobs tr[data-job-id="{job_id}"]'
            wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, row), 15, "the job's row")
            browser.find_element(By.CSS_SELECTOR, row).click()
            wait_for(lambda: _points(browser, "chart-loss") > 0, 20, "the first loss points")
            first, started = _points(browser, "chart-loss"), time.monotonic()
            wait_for(lambda: _points(browser, "chart-loss") > first, 20, "the loss curve to grow")
            assert _points(browser, "chart-lr") > 0
            print(f"loss points {first} -> {_points(browser, 'chart-loss')} "
                  f"in {time.monotonic() - started:.1f} s")
            # the key is kept for the next visit
            assert browser.execute_script(
                "return localStorage.getItem('sagetrain.apiKey')") == live_server.key
            assert "running" in browser.find_element(By.CSS_SELECTOR, row).text
            # a checkpoint is listed with its download button, validation is drawn
            wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "button[data-checkpoint-id]"),
                     45, "a checkpoint to be listed")
            assert _points(browser, "chart-valid") > 0
            shot = tmp_path / "dashboard.png"
            assert browser.save_screenshot(str(shot))
            assert shot.stat().st_size > 0
        finally:
            c.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
