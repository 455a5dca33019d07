"""`fair serve`'s page in a real browser: Debian's chromium driven by Playwright (Playwright's own browser
download is not reachable here; `make setup` installs the chromium package where it can). A user logs in,
uploads a mistakes file, estimates and submits a job, watches it to the end, filters its records, opens one
mistake's rationales side by side (docs/img/viewer.png is this screenshot) and downloads committee.jsonl; `fair
view` shows the same viewer over the job's folder, read-only."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from simulator.server import OfflineServer
from tests.conftest import ROOT, import_seed_mistakes
from tests.serve_util import TOKEN, Served, submit, teachers_yaml, upload_mistakes, wait_job

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The docs' screenshot is this test's: FAIR_UPDATE_SCREENSHOT=1 writes it there (a run's job id differs, so every
# run would otherwise change the committed image); without it the test still takes it, into its own folder.
SCREENSHOT = ROOT / "docs" / "img" / "viewer.png"
pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        CHROMIUM is None, reason="Debian's chromium is not installed: apt-get install chromium"
    ),
]


def launch(playwright):
    """Debian's chromium (Playwright's own download is not reachable here); no sandbox as root."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])


def log_in(page, url: str) -> None:
    page.goto(url + "/")
    page.fill("input[name=token]", TOKEN)
    page.click("button")


def test_the_page_logs_in_shows_jobs_and_gates_and_cancels_a_job(tmp_path, data_dir):
    from playwright.sync_api import expect, sync_playwright

    mistakes = import_seed_mistakes(tmp_path, data_dir, count=20)
    # Replies of 1-2 s, one mistake at a time: the job needs 40 s at the least, so it is still running when the page
    # cancels it however slow the browser starts (with 0.1-0.2 s a CI run once saw it finish first).
    with (
        OfflineServer(port=0, data_dir=data_dir, latency_ms=(1000, 2000)) as sim,
        Served(tmp_path / "state", teachers_yaml(tmp_path, sim.url), sim.url) as served,
        served.client() as http,
        sync_playwright() as p,
    ):
        job = submit(http, upload_mistakes(http, mistakes), window=1)
        browser = launch(p)
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
        # An action's error stays until the user acts again: the lists' refresh (every two seconds) keeps it.
        for box in page.locator("#teachers input").all():
            box.uncheck()
        page.get_by_role("button", name="Estimate cost and time").click()
        expect(page.locator("#error")).to_have_text("teachers: choose at least one")
        page.evaluate("refresh()")
        expect(page.locator("#error")).to_have_text("teachers: choose at least one")
        # A login that ended (here: its cookie gone) says so in the page's words, not the API's bearer tokens.
        cookies = page.context.cookies()
        page.context.clear_cookies()
        page.evaluate("refresh()")
        expect(page.locator("#error")).to_have_text(
            "logged out (the server restarted or its token changed): reload the page to log in again")
        page.context.add_cookies(cookies)
        # Each row's buttons name their job (a screen reader reads a row's "cancel" out of its table); the
        # keyboard's focus, on a button that the job's end turns off, goes to the row's records button.
        page.get_by_role("button", name=f"cancel {job['id']}").focus()
        page.keyboard.press("Enter")
        expect(row).to_contain_text("cancelled", timeout=10_000)
        expect(page.get_by_role("button", name=f"records of {job['id']}")).to_be_focused()
        assert wait_job(http, job["id"])["status"] == "cancelled"
        assert page.locator("#error").text_content() == ""
        browser.close()


def test_a_job_is_submitted_watched_and_inspected_from_the_page_alone(tmp_path, data_dir):
    from playwright.sync_api import expect, sync_playwright

    mistakes = import_seed_mistakes(tmp_path, data_dir, count=12)
    with (
        OfflineServer(port=0, data_dir=data_dir, latency_ms=(20, 60)) as sim,
        Served(tmp_path / "state", teachers_yaml(tmp_path, sim.url), sim.url) as served,
        served.client() as http,
        sync_playwright() as p,
    ):
        browser = launch(p)
        page = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True).new_page()
        log_in(page, served.url)
        # Upload, then the form: labels name every field (what a screen reader announces, what a test finds).
        page.get_by_label("Upload a mistakes file (JSONL)", exact=True).set_input_files(str(mistakes))
        page.get_by_role("button", name="Upload", exact=True).click()
        expect(page.get_by_label("Mistakes file", exact=True)).to_contain_text("mistakes.jsonl")
        expect(page.locator("#estimate")).to_contain_text("Uploaded mistakes.jsonl as file-")  # a live region
        page.get_by_label("Task", exact=True).select_option("svamp")
        page.get_by_label("harsh", exact=True).uncheck()
        page.get_by_label("Priority (its share of the teachers' limits)").fill("2")
        submit_button = page.get_by_role("button", name="Submit job")
        expect(submit_button).to_be_disabled()  # not before its cost is seen
        page.get_by_label("Cost cap in USD (empty: none)").fill("0")
        page.get_by_role("button", name="Estimate cost and time").click()
        expect(page.locator("#error")).to_have_text("max_cost_usd: Input should be greater than 0")  # the API's line
        page.get_by_label("Cost cap in USD (empty: none)").fill("5")
        page.get_by_role("button", name="Estimate cost and time").click()
        recipe = page.get_by_label("Which rationales qualify (gold, none: no review requests)")
        expect(recipe).to_have_value("gold")  # the server's default filter
        expect(page.locator("#estimate")).to_contain_text("12 mistakes, 48 requests (4 a mistake)")
        recipe.select_option("review")  # a change closes Submit until the next estimate, which prices the recipe
        expect(submit_button).to_be_disabled()
        page.get_by_role("button", name="Estimate cost and time").click()
        expect(page.locator("#estimate")).to_contain_text("12 mistakes, 72 requests (6 a mistake)")
        submit_button.click()
        # Watched over the event stream to the end; the heading takes the focus.
        expect(page.locator("#job-progress")).to_contain_text("completed: 12 of 12 mistakes done", timeout=60_000)
        expect(page.locator("#job-heading")).to_be_focused()
        job_id = page.locator("#job-heading").text_content().removeprefix("Job ")
        job = wait_job(http, job_id)
        assert (job["spec"]["teachers"], job["spec"]["priority"], job["spec"]["max_cost_usd"]) == (
            ["careful", "sloppy"], 2.0, 5.0)
        filter_and_open(page, tmp_path)
        with page.expect_download() as download:  # downloads are links
            page.locator("#downloads a", has_text="committee.jsonl").click()
        download.value.save_as(tmp_path / "downloaded.jsonl")
        folder = tmp_path / "state" / "jobs" / job_id
        assert (tmp_path / "downloaded.jsonl").read_bytes() == (folder / "committee.jsonl").read_bytes()
        assert page.locator("#error").text_content() == ""
        before = sorted(p.name for p in folder.iterdir())
        # In the same browser: cookies ignore ports, so the view's login must leave fair serve's standing.
        check_fair_view(page.context.new_page(), tmp_path, folder)
        assert sorted(p.name for p in folder.iterdir()) == before
        page.evaluate("refresh()")
        assert page.locator("#error").text_content() == ""
        browser.close()


def filter_and_open(page, tmp_path) -> None:
    """The viewer: every record, then the filters (applied on the server), one mistake side by side."""
    from playwright.sync_api import expect

    expect(page.locator("#records-count")).to_contain_text("records 1 to 12 of 12 matching")
    filters = page.locator("#filters")
    filters.get_by_label("Teacher").select_option("sloppy")
    filters.get_by_label("Rationale").select_option("false")
    filters.get_by_role("button", name="Filter").click()
    expect(page.locator("#records-count")).not_to_contain_text("of 12 matching")
    rows = page.locator("#records tbody tr")
    expect(rows.first).to_contain_text("sloppy")
    for text in rows.all_inner_texts():
        assert "rejected" in text
    # One mistake's rationales side by side, focus on its heading.
    rows.first.get_by_role("button").click()
    expect(page.locator("#mistake-heading")).to_be_focused()
    columns = page.locator("#mistake-columns article")
    expect(columns).to_have_count(2)
    expect(columns.nth(0)).to_contain_text("Review by sloppy")
    page.locator("#job").screenshot(path=str(SCREENSHOT if os.environ.get("FAIR_UPDATE_SCREENSHOT") == "1"
                                              else tmp_path / "viewer.png"))


@contextlib.contextmanager
def fair_view(tmp_path: Path, folder: Path):
    """`fair view FOLDER` (the real command) in its own process, its index in a folder of the test's (--index-dir;
    $TMPDIR another); yields its URL. It must exit 0 on SIGTERM and leave both folders empty."""
    port_file, temporary, index_dir = tmp_path / "view.port", tmp_path / "view-tmp", tmp_path / "view-index"
    temporary.mkdir()
    index_dir.mkdir()
    env = {**os.environ, "FAIR_SERVE_TOKEN": TOKEN, "TMPDIR": str(temporary)}
    with (tmp_path / "view.log").open("w") as log:
        view = subprocess.Popen([sys.executable, "-m", "cli.main", "view", str(folder), "--port", "0",
                                 "--port-file", str(port_file), "--index-dir", str(index_dir)], cwd=ROOT, env=env,
                                stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert view.poll() is None and time.monotonic() < deadline, (tmp_path / "view.log").read_text()
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port_file.read_text().strip()}"
    finally:
        view.terminate()
        assert view.wait(10) == 0
    assert "fair view: stopped" in (tmp_path / "view.log").read_text()
    assert not list(temporary.iterdir()) and not list(index_dir.iterdir())  # its index went with it


def check_fair_view(page, tmp_path, folder) -> None:
    """`fair view FOLDER`: the same viewer, nothing to submit."""
    from playwright.sync_api import expect

    with fair_view(tmp_path, folder) as url:
        assert httpx.get(url + "/v1/fair/page").status_code == 401
        log_in(page, url)
        expect(page.locator("#title")).to_have_text(f"fair view: {folder.name}")
        expect(page.locator("#records-count")).to_contain_text("of 12 matching")
        assert list((tmp_path / "view-index").glob("fair-view-*/committee.index.sqlite"))  # where it was told
        expect(page.locator("#submit-section")).to_be_hidden()
        expect(page.locator("#job-cancel")).to_be_hidden()
        expect(page.locator("#downloads a", has_text="committee.jsonl")).to_be_visible()


HOSTILE = '<img src=x onerror="window.pwned=1">'  # teacher replies are untrusted; so is a folder's file names


def hostile_record(i: int) -> dict:
    """A committee record with HOSTILE in every field the viewer shows (and a number where a text was)."""
    def reply(**more) -> dict:
        return {"text": f"{HOSTILE} javascript:alert(1) {i}", "error": HOSTILE, "truncated": True,
                "refused": HOSTILE} | more

    review = {"score": HOSTILE, "reply": HOSTILE, "error": None, "truncated": False, "refused": None}
    mistake = {"id": HOSTILE, "question": f"{HOSTILE} question {i}", "gold": HOSTILE, "prediction": HOSTILE,
               "extracted": HOSTILE}
    return {"id": f"{HOSTILE}{i}", "mistake": mistake, "feedback": {HOSTILE: reply(), "plain": reply(text=7)},
            "rationales": {HOSTILE: reply(reviews={HOSTILE: review}, mean_score=HOSTILE, accepted=HOSTILE)}}


def test_the_viewer_shows_hostile_records_as_text_and_pages_by_keyboard(tmp_path):
    """HOSTILE in every field, in a teacher's name and in a file name runs nothing and is shown as written; the
    pages turn from the keyboard, and the focus never falls off a button that a turn disabled."""
    from playwright.sync_api import expect, sync_playwright

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "committee.jsonl").write_bytes(b"".join(orjson.dumps(hostile_record(i)) + b"\n" for i in range(25)))
    (folder / f"{HOSTILE}_round0.json").write_text("[]")
    with fair_view(tmp_path, folder) as url, sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page()
        errors: list[str] = []
        console: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: console.append(m.text))
        log_in(page, url)
        expect(page.locator("#records-count")).to_have_text("records 1 to 20 of 25 matching (25 in committee.jsonl)")
        expect(page.locator("#records tbody tr").first).to_contain_text(f"{HOSTILE} question 0")
        expect(page.locator("#downloads")).to_contain_text(f"{HOSTILE}_round0.json")
        filters = page.locator("#filters")
        filters.get_by_label("Teacher").select_option(HOSTILE)  # a filter's value goes to the server as data
        filters.get_by_label("Text").fill(HOSTILE + " QUESTION 3")
        filters.get_by_label("Text").press("Enter")
        expect(page.locator("#records-count")).to_have_text("records 1 to 1 of 1 matching (25 in committee.jsonl)")
        page.locator("#records tbody tr").first.get_by_role("button").press("Enter")
        expect(page.locator("#mistake-heading")).to_be_focused()
        columns = page.locator("#mistake-columns article")
        expect(columns).to_have_count(2)
        expect(columns.nth(0)).to_contain_text(f"Review by {HOSTILE}: score {HOSTILE}")
        expect(page.locator("#mistake-question")).to_have_text(f"{HOSTILE} question 3")
        turn_pages_slowly_by_keyboard(page)
        assert page.evaluate("window.pwned") is None and page.locator("img").count() == 0
        assert errors == [] and page.locator("#error").text_content() == ""
        assert not [m for m in console if "Content Security Policy" in m]  # the page's own script and style run
        # The second wall: markup that ever reached the page as HTML runs nothing (its Content-Security-Policy).
        # Its error event, awaited here, reaches the onerror attribute first: it had its turn.
        page.evaluate("""html => new Promise(done => {
            document.body.insertAdjacentHTML("beforeend", html);
            document.querySelector("body > img").addEventListener("error", () => done());
        })""", HOSTILE)
        assert page.evaluate("window.pwned") is None
        browser.close()


def turn_pages_slowly_by_keyboard(page) -> None:
    """All 25 records again, the answer held back (as an index being built would), then the pages by keyboard."""
    from playwright.sync_api import expect

    filters = page.locator("#filters")
    # A slow answer (an index being built) is said to be one; here held back by the test.
    held = []
    page.route("**/v1/fair/jobs/local/records?*", lambda route: held.append(route))
    filters.get_by_label("Text").fill("")
    filters.get_by_label("Text").press("Enter")
    expect(page.locator("#records-count")).to_have_text(
        "reading committee.jsonl: the first look at a large run indexes it, which takes a while")
    expect(page.locator("#records")).to_have_attribute("aria-busy", "true")
    held[0].continue_()
    page.unroute("**/v1/fair/jobs/local/records?*")
    expect(page.locator("#records-count")).to_contain_text("records 1 to 20 of 25")
    # The pages from the keyboard: the last page disables Next, so the focus moves to Previous, and back.
    page.get_by_role("button", name="Next page").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#records-count")).to_contain_text("records 21 to 25 of 25")
    expect(page.get_by_role("button", name="Previous page")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#records-count")).to_contain_text("records 1 to 20 of 25")
    expect(page.get_by_role("button", name="Next page")).to_be_focused()
