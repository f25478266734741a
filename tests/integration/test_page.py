"""The page at ``GET /``, in a real headless Chromium (Debian's, driven by Playwright): type a
prompt, click, watch the answer stream in."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from devtools.stack import Api, Simulator, Worker
from tests.conftest import worker_env

pytestmark = [pytest.mark.browser, pytest.mark.process]

TOKEN = "page-token-0123"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Chromium as root in a container, with no network beyond localhost (see devtools/ensure_browser.py)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WATCH_ANSWER = """
window.answerLengths = [];
new MutationObserver(() => window.answerLengths.push(document.getElementById("answer").textContent.length))
  .observe(document.getElementById("answer"), {childList: true, characterData: true, subtree: true});
"""
PROMPT = "Explain, slowly and in several words, why the sky looks blue on a clear day."


@contextlib.contextmanager
def serving(api_env: dict[str, str], worker_environment: dict[str, str]) -> Iterator[tuple[Browser, Api]]:
    """An API server, a worker and a headless Chromium (a fresh profile), for a test module."""
    if CHROMIUM is None:
        pytest.fail("no chromium on PATH: run `make browser` (Debian's chromium package)")
    with Api(api_env) as api, Worker(worker_environment), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser, api
        finally:
            browser.close()


@pytest.fixture(scope="module")
def site(redis_server_url: str, sim_process: Simulator) -> Iterator[tuple[Browser, Api]]:
    """One API server, worker and browser for the module (each test gets a new page)."""
    with serving(
        {"REDIS_URL": redis_server_url, "PROMPTQ_API_TOKEN": TOKEN}, worker_env(redis_server_url, sim_process)
    ) as served:
        yield served


@pytest.fixture
def page(site: tuple[Browser, Api], redis_url: str, sim: Simulator) -> Iterator[tuple[Page, Api]]:
    browser, api = site
    sim.configure(chunk_delay_ms=100)  # slow enough to see the answer grow, on a busy machine too
    tab = browser.new_page(bypass_csp=True)  # (the test's own waits evaluate strings; the page's CSP forbids that)
    try:
        yield tab, api
    finally:
        tab.close()


def test_the_pages_scripts_run_under_their_content_security_policy(site: tuple[Browser, Api]) -> None:
    browser, api = site
    tab = browser.new_page()
    refused: list[str] = []
    tab.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    try:
        for path in ("/", "/dashboard"):
            response = tab.goto(api.url + path)
            assert response is not None and "script-src 'sha256-" in response.headers["content-security-policy"]
            tab.wait_for_load_state("networkidle")
        tab.goto(api.url + "/")
        tab.fill("#prompt", "under its policy")
        tab.fill("#token", TOKEN)
        tab.click("#submit")  # the page's script runs: it submits and shows the job's id
        tab.locator("#job-id").filter(has_text=re.compile(r"^[0-9a-f]{32}$")).wait_for(timeout=10_000)
    finally:
        tab.close()
    assert refused == []


def test_a_prompt_typed_in_the_page_streams_its_answer(page: tuple[Page, Api]) -> None:
    tab, api = page
    tab.goto(api.url + "/")
    tab.fill("#prompt", PROMPT)
    tab.fill("#token", TOKEN)
    tab.evaluate(WATCH_ANSWER)
    tab.click("#submit")
    tab.wait_for_function("document.getElementById('status').textContent === 'succeeded'", timeout=10_000)
    assert tab.text_content("#answer") == PROMPT
    lengths: list[int] = tab.evaluate("window.answerLengths")
    growing = [n for n in lengths if 0 < n < len(PROMPT)]
    # It appeared piece by piece (the pieces sent before the page's event stream opened come at once).
    assert len(set(growing)) >= 2 and growing == sorted(growing), lengths
    assert len(tab.text_content("#job-id") or "") == 32
    if shot := os.environ.get("PROMPTQ_SCREENSHOT"):
        tab.screenshot(path=shot, full_page=True)


def test_a_wrong_token_shows_the_error(page: tuple[Page, Api]) -> None:
    tab, api = page
    tab.goto(api.url + "/")
    tab.fill("#prompt", "hello")
    tab.fill("#token", "wrong")
    tab.click("#submit")
    tab.wait_for_function("document.getElementById('status').textContent === 'error 401'", timeout=10_000)
    assert "bearer token" in (tab.text_content("#answer") or "")
