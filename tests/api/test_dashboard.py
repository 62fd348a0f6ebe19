"""The dashboard at `/`: served without a key; in headless Chromium at 1400x1000, against a
real `sagetrain serve` training the tiny model, a user uploads files and creates a job
through the forms, watches it train live and finish, downloads a checkpoint, opens a
sweep's page and pauses, resumes and cancels a job with its buttons; the browser's console
stays free of errors. Screenshots of each stage go to the test's tmp_path."""

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
from test_api_chat import CHAT
from test_e2e_serve import upload

from api.routes import dashboard

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCRIPTS = ("dashboard.js", "api.js", "charts.js", "forms.js", "views.js")


@pytest.fixture
def vendored() -> None:
    """The chart library `make setup` copies into the package (not in git)."""
    if not (dashboard.STATIC_DIR / "vendor" / "chart.umd.js").is_file():
        reason = "api/static/vendor/chart.umd.js is not built: run `make setup` (make vendor)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.mark.usefixtures("vendored")
def test_page_and_assets_need_no_key(service: Service) -> None:
    page = service.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name in (*SCRIPTS, "dashboard.css", "favicon.svg", "chart.umd.js"):
        assert f"/dashboard/{name}" in page.text or name in SCRIPTS[1:], name
        got = service.client.get(f"/dashboard/{name}")
        assert got.status_code == 200, (name, got.text[:200])
    assert "javascript" in service.client.get("/dashboard/charts.js").headers["content-type"]
    assert service.client.get("/dashboard/favicon.svg").headers["content-type"].startswith(
        "image/svg+xml")


@pytest.mark.usefixtures("vendored")
def test_the_vendored_chart_library_is_the_pinned_one(service: Service) -> None:
    """`make setup` copies web/node_modules' Chart.js, at the version package.json pins."""
    import json

    pinned = json.loads((Path(__file__).parents[2] / "web" / "package.json").read_text())
    version = pinned["dependencies"]["chart.js"]
    body = service.client.get("/dashboard/chart.umd.js").text
    assert f"Chart.js v{version}" in body[:300]


def test_a_missing_chart_library_says_how_to_build_it(service: Service, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    bare = tmp_path / "static"
    shutil.copytree(dashboard.STATIC_DIR, bare, ignore=shutil.ignore_patterns("vendor"))
    monkeypatch.setattr(dashboard, "STATIC_DIR", bare)
    r = service.client.get("/dashboard/chart.umd.js")
    assert r.status_code == 404 and "make setup" in r.json()["error"]["message"]
    # and the page has the words to show when it finds no chart library
    assert "make setup" in service.client.get("/").text


@pytest.mark.parametrize("name", ["index.py", "..%2Fmain.py", "nothing.js", "vendor",
                                  "index.html", "..%2F..%2Fdeps.py"])
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
def browser(tmp_path: Path, vendored: None) -> Iterator[Any]:
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
                 "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {
        "download.default_directory": str(tmp_path / "downloads"),
        "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=DriverService(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The dashboard in the browser: shortcuts for finding, waiting and screenshots."""

    def __init__(self, driver: Any, shots: Path, server: LiveServer):
        from selenium.webdriver.common.by import By

        self.driver, self.shots, self.server, self.by = driver, shots, server, By
        shots.mkdir(exist_ok=True)

    def find(self, css: str) -> Any:
        return self.driver.find_element(self.by.CSS_SELECTOR, css)

    def wait(self, css: str, seconds: float, what: str) -> Any:
        wait_for(lambda: self.driver.find_elements(self.by.CSS_SELECTOR, css), seconds, what)
        return self.find(css)

    def text(self, element_id: str) -> str:
        return str(self.driver.find_element(self.by.ID, element_id).text)

    def points(self, canvas_id: str) -> int:
        """Points in the Chart.js chart drawn on the canvas (0 if none is)."""
        return int(self.driver.execute_script(
            "const c = Chart.getChart(document.getElementById(arguments[0]));"
            "return c ? c.data.datasets.reduce((n, d) => n + d.data.length, 0) : 0;",
            canvas_id))

    def shot(self, name: str) -> None:
        path = self.shots / f"{name}.png"
        assert self.driver.save_screenshot(str(path)) and path.stat().st_size > 0

    def select(self, element_id: str, value: str) -> None:
        from selenium.webdriver.support.ui import Select

        wait_for(lambda: self.driver.find_elements(
            self.by.CSS_SELECTOR, f'#{element_id} option[value="{value}"]'), 10,
            f"{value} among the choices of {element_id}")
        Select(self.driver.find_element(self.by.ID, element_id)).select_by_value(value)

    def fill(self, values: dict[str, str]) -> None:
        for element_id, value in values.items():
            field = self.driver.find_element(self.by.ID, element_id)
            field.clear()
            field.send_keys(value)

    def upload(self, path: Path) -> str:
        self.find("#upload-file").send_keys(str(path))
        self.find("#upload-submit").click()
        self.wait('#upload-result p.good[data-file-id]', 20, f"{path.name} to be validated")
        assert path.name in self.text("upload-result")
        return str(self.find("#upload-result p.good").get_attribute("data-file-id"))

    def open_job(self, job_id: str) -> None:
        self.driver.execute_script("location.hash = arguments[0]", f"#job/{job_id}")
        wait_for(lambda: self.text("job-title") in (f"Job {job_id}", f"Sweep {job_id}"), 10,
                 f"{job_id}'s page")

    def status(self) -> str:
        return self.text("job-status")

    def console_errors(self) -> list[dict]:
        return [e for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]


@pytest.mark.slow
def test_dashboard_drives_a_job_from_upload_to_download(live_server: LiveServer, browser: Any,
                                                        tmp_path: Path) -> None:
    started = time.monotonic()
    page = Page(browser, tmp_path / "screenshots", live_server)
    (tmp_path / "train.jsonl").write_bytes(rows(320, 3))
    (tmp_path / "valid.jsonl").write_bytes(rows(32, 4))
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "no label"}\n{"oops\n')
    browser.get(live_server.url + "/")
    page.find("#key-input").send_keys(live_server.key)
    page.find("#key-save").click()
    # the key is kept for the next visit, and never put into a URL
    assert browser.execute_script(
        "return localStorage.getItem('sagetrain.apiKey')") == live_server.key

    # upload: a bad file is refused with the line at fault, good ones show their statistics
    page.find("#upload-file").send_keys(str(tmp_path / "bad.jsonl"))
    page.find("#upload-submit").click()
    page.wait("#upload-result p.bad", 20, "the bad file's rejection")
    assert "line" in page.text("upload-result").lower(), page.text("upload-result")
    # the browser logs the 400 answer; nothing else
    assert [e for e in page.console_errors() if "/v1/files" not in e["message"]] == []
    train = page.upload(tmp_path / "train.jsonl")
    valid = page.upload(tmp_path / "valid.jsonl")
    assert "text-classification" in page.text("upload-result")
    page.shot("01-uploaded")

    # a tiny job through the form
    page.select("job-model", "tiny-bert")
    page.select("job-training-file", train)
    page.select("job-validation-file", valid)
    page.fill({"hp-epochs": "2", "hp-batch-size": "8", "hp-max-seq-length": "16",
               "hp-learning-rate": "0.001", "hp-eval-every": "10",
               "hp-checkpoint-every": "40", "job-suffix": "dash"})
    page.find("#job-submit").click()
    wait_for(lambda: "#job/" in browser.current_url, 15, "the new job's page")
    job_id = browser.current_url.rsplit("#job/", 1)[1]
    with live_server.client() as c:
        job = c.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        assert job["hyperparameters"]["n_epochs"] == 2 and job["suffix"] == "dash"
        assert job["validation_file"] == valid
        # a sweep of two learning rates, to train after this job
        sweep = c.post("/v1/fine_tuning/jobs", json={
            "model": "tiny-bert", "training_file": upload(c, rows(64, 5), "s.jsonl"),
            "validation_file": valid, "suffix": "sweep",
            "sweep": {"learning_rate": [1e-3, 3e-3]},
            "hyperparameters": {"n_epochs": 1, "batch_size": 8, "max_seq_length": 16,
                                "eval_every_steps": 4}}).json()
        # a chat job, whose evaluations write sample answers
        chat_file = upload(c, CHAT * 4, "chat.jsonl")
        chat = c.post("/v1/fine_tuning/jobs", json={
            "model": "tiny-llama", "training_file": chat_file,
            "validation_file": upload(c, CHAT, "chat-valid.jsonl"),
            "hyperparameters": {"n_epochs": 1, "batch_size": 4}}).json()
        assert chat["task"] == "chat", chat

    # live: the curves grow from the stream while the job runs
    wait_for(lambda: page.points("chart-training") > 0, 90, "the first loss points")
    if page.status() == "running":
        assert page.text("live-state") == "live"
        page.shot("02-running")
    wait_for(lambda: page.status() == "succeeded", 120, "the job to succeed")
    wait_for(lambda: "step 80 of 80" in page.text("job-facts"), 10, "the final progress")
    assert page.points("chart-lr") > 0
    with live_server.client() as c:
        logged = c.get(f"/v1/fine_tuning/jobs/{job_id}/metrics").json()["data"]
    drawn = sum(1 for r in logged for k in r if k == "train_loss" or (
        k.startswith("valid_") and isinstance(r[k], float)))
    wait_for(lambda: page.points("chart-training") == drawn, 10, f"all {drawn} points drawn")
    facts, hyper = page.text("job-facts"), page.text("job-hyperparameters")
    assert "train.jsonl" in facts and "valid.jsonl" in facts and "320 rows" in facts
    assert "learning_rate" in hyper and "0.001" in hyper and "sage_scope" in hyper
    page.wait("#sensitivity-pane:not([hidden])", 15, "the sensitivity report")
    wait_for(lambda: page.points("chart-sens-hist") > 0, 10, "the sensitivity histogram")
    page.shot("03-succeeded")
    browser.execute_script("document.getElementById('sensitivity-pane').scrollIntoView()")
    page.shot("03-sensitivity")

    # download a checkpoint with the key in the request's header
    page.wait("button[data-checkpoint-id]", 10, "a checkpoint").click()
    wait_for(lambda: page.find("#download-result").get_attribute("data-bytes"), 30,
             "the checkpoint's download")
    assert int(page.find("#download-result").get_attribute("data-bytes")) > 10_000
    downloads = tmp_path / "downloads"
    wait_for(lambda: list(downloads.glob("*.tar.gz")), 15, "the archive saved")

    # pause, resume and cancel a job with its buttons (queued behind the sweep's runs)
    with live_server.client() as c:
        other = c.post("/v1/fine_tuning/jobs", json={
            "model": "tiny-bert", "training_file": train, "hyperparameters": {
                "n_epochs": 1, "batch_size": 8, "max_seq_length": 16}}).json()["id"]
    page.open_job(other)
    for button, status in (("pause", "paused"), ("resume", "queued"), ("cancel", "cancelled")):
        wait_for(lambda b=button: page.find(f"#action-{b}").is_enabled(), 10, f"{button} enabled")
        page.find(f"#action-{button}").click()
        wait_for(lambda s=status: page.status() == s, 15, f"the job {status}")
    assert not page.find("#action-cancel").is_enabled()
    page.shot("04-cancelled")

    # the sweep's page: every run's curve overlaid, then the verdict
    page.open_job(sweep["id"])
    assert page.find("#charts-pane").get_attribute("hidden") is not None
    wait_for(lambda: page.status() == "succeeded", 150, "the sweep to finish")
    wait_for(lambda: "Best run" in page.text("sweep-verdict"), 10, "the sweep's verdict")
    facts = page.text("job-facts")
    assert "2 of 2 runs finished" in facts and "step 0 of ?" not in facts
    wait_for(lambda: page.points("chart-sweep-metric") >= 2, 10, "each run's metric")
    assert len(browser.execute_script(
        "return Chart.getChart(document.getElementById('chart-sweep-loss')).data.datasets")) == 2
    page.shot("05-sweep")
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= document.documentElement.clientWidth")

    # a chat job's page shows the model's sample answers
    page.open_job(chat["id"])
    wait_for(lambda: page.status() == "succeeded", 60, "the chat job to succeed")
    page.wait("#samples-pane:not([hidden])", 10, "the sample outputs")
    assert len(browser.find_elements(page.by.CSS_SELECTOR, "#samples tbody tr")) == 3
    assert "weather?" in page.text("samples")
    page.shot("06-chat")

    # the jobs list: sweep children under their parent, no horizontal scrollbar
    page.find("#back").click()
    page.wait(f'#jobs tr[data-job-id="{sweep["id"]}"]', 10, "the sweep's row")
    order = browser.execute_script(
        "return [...document.querySelectorAll('#jobs tbody tr')].map(r => r.dataset.jobId)")
    at = order.index(sweep["id"])
    assert set(order[at + 1:at + 3]) == {r["job_id"] for r in sweep["sweep"]["runs"]}
    model_cell = page.find(f'#jobs tr[data-job-id="{job_id}"] td.model')
    assert str(model_cell.get_attribute("title")).startswith("ft:tiny-bert:dash:")
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        " && document.getElementById('jobs-pane').scrollWidth"
        " <= document.getElementById('jobs-pane').clientWidth")
    # no status, seed or progress is cut short
    assert browser.execute_script(
        "return [...document.querySelectorAll('#jobs td.status, #jobs td.seed, #jobs td.progress')]"
        ".filter(td => td.scrollWidth > td.clientWidth).map(td => td.textContent)") == []
    page.shot("07-jobs")
    browser.set_window_size(800, 1000)
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    page.shot("08-jobs-narrow")
    page.open_job(job_id)
    wait_for(lambda: page.points("chart-training") > 0, 10, "the job's curves, narrower")
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    page.shot("09-job-narrow")
    page.find("#back").click()

    # the form offers a task's own hyperparameters only for that task
    lora = page.find('#job-form [data-task-field="lora"]')
    assert not lora.is_displayed()
    page.select("job-task", "chat")
    assert lora.is_displayed()

    assert page.console_errors() == []
    print(f"dashboard flow took {time.monotonic() - started:.1f} s")


def test_the_page_forbids_framing_and_foreign_scripts(service: Service) -> None:
    """Issue 17 item 12: the page that holds a user's key had no Content-Security-Policy
    and could be framed. (The browser test checks that the page still works under it: a
    refused script or style is a console error there.)"""
    page = service.client.get("/")
    policy = dict(part.strip().split(" ", 1) for part in
                  page.headers["content-security-policy"].split(";"))
    assert policy["script-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
    assert policy["default-src"] == "'self'" and policy["object-src"] == "'none'"
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    asset = service.client.get("/dashboard/dashboard.js")
    assert asset.headers["x-content-type-options"] == "nosniff"
