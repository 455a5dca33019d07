"""`fair serve`'s page in a real browser: Debian's chromium driven by Playwright (Playwright's own browser
download is not reachable here; `make setup` installs the chromium package where it can)."""

from __future__ import annotations

import shutil

import pytest

from simulator.server import OfflineServer
from tests.conftest import import_seed_mistakes
from tests.serve_util import TOKEN, Served, submit, teachers_yaml, upload_mistakes, wait_job

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        CHROMIUM is None, reason="Debian's chromium is not installed: apt-get install chromium"
    ),
]


def test_the_page_logs_in_shows_jobs_and_gates_and_cancels_a_job(tmp_path, data_dir):
    from playwright.sync_api import expect, sync_playwright

    mistakes = import_seed_mistakes(tmp_path, data_dir, count=20)
    with (
        OfflineServer(port=0, data_dir=data_dir, latency_ms=(100, 200)) as sim,
        Served(tmp_path / "state", teachers_yaml(tmp_path, sim.url), sim.url) as served,
        served.client() as http,
        sync_playwright() as p,
    ):
        job = submit(http, upload_mistakes(http, mistakes), window=1)
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        assert page.goto(served.url + "/").status == 401  # the login form
        page.fill("input[name=token]", "not-the-token")
        page.click("button")
        expect(page.locator("input[name=token]")).to_be_visible()  # refused: the form again
        page.fill("input[name=token]", TOKEN)
        page.click("button")
        row = page.locator("#jobs tbody tr", has_text=job["id"])
        expect(row).to_be_visible()
        expect(page.locator("#gates tbody tr")).to_have_count(3)
        row.locator("button", has_text="cancel").click()
        expect(row).to_contain_text("cancelled", timeout=10_000)
        assert wait_job(http, job["id"])["status"] == "cancelled"
        assert page.locator("#error").text_content() == ""
        browser.close()
