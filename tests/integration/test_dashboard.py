"""The dashboard at ``GET /dashboard``, in a real headless Chromium (driven by Playwright), against a
real API server, worker process, Redis and the simulator: the counters move while a batch runs, a
failed job is retried from its button, a queued one cancelled from its button, a provider batch
shown from its creation to its end."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page

from devtools.stack import Api, Simulator
from producer import ProducerConfig, SyncProducer
from promptq_core.contract import dumps
from tests.conftest import worker_env
from tests.integration.test_page import serving

pytestmark = [pytest.mark.browser, pytest.mark.process]

TOKEN = "dashboard-token-0123"
SLOTS = 4


@pytest.fixture(scope="module")
def site(redis_server_url: str, sim_process: Simulator) -> Iterator[tuple[Browser, Api]]:
    env = worker_env(
        redis_server_url,
        sim_process,
        PROMPTQ_MAX_JOBS=str(SLOTS),
        PROMPTQ_MAX_TRIES="1",
        PROMPTQ_BATCH_API="1",  # (the batch tier's panel; live jobs are not concerned)
        PROMPTQ_BATCH_WINDOW_S="0.5",
        PROMPTQ_BATCH_POLL_S="0.2",
    )
    with serving({"REDIS_URL": redis_server_url, "PROMPTQ_API_TOKEN": TOKEN}, env) as served:
        yield served


@pytest.fixture
def dashboard(site: tuple[Browser, Api], redis_url: str, sim: Simulator) -> Iterator[tuple[Page, SyncProducer]]:
    browser, api = site
    tab = browser.new_page(viewport={"width": 1280, "height": 800}, bypass_csp=True)  # (the test's waits eval)
    tab.add_init_script(f"sessionStorage.setItem('promptq.token', {TOKEN!r})")
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.goto(api.url + "/dashboard")
    try:
        with SyncProducer(config=ProducerConfig(redis_url=redis_url)) as producer:
            yield tab, producer
    finally:
        tab.close()
    assert errors == []  # no script error on the page


def number(tab: Page, selector: str) -> int:
    return int((tab.text_content(selector) or "").replace(",", "").strip() or 0)


def submit_batch(producer: SyncProducer, name: str, n: int) -> list[str]:
    ids = [f"{name}:{i}" for i in range(n)]
    producer.open_batch(name, n)
    producer.submit_many([{"prompt": f"row {i}", "job_id": j} for i, j in enumerate(ids)])
    producer.save_manifest(name, dumps({"name": name, "items": [[str(i), j] for i, j in enumerate(ids)]}))
    return ids


def test_the_counters_move_while_a_batch_runs(dashboard: tuple[Page, SyncProducer], sim: Simulator) -> None:
    tab, producer = dashboard
    # the worker's entry is back with its next beat (each test starts on an emptied Redis)
    tab.wait_for_function("document.getElementById('workers-alive').textContent === '1'", timeout=10_000)
    assert number(tab, "#slots-total") >= SLOTS and number(tab, "#count-ready") == 0
    sim.configure(latency_ms=400)
    submit_batch(producer, "enrich-products", 80)  # 8 s on 4 slots
    row = 'tr.batch[data-batch="enrich-products"]'
    tab.wait_for_selector(row, timeout=10_000)
    tab.wait_for_function("Number(document.getElementById('count-running').textContent) > 0", timeout=10_000)
    first = number(tab, f"{row} .done")
    assert number(tab, f"{row} .total") == 80 and first < 80
    done_js = f"Number(document.querySelector('{row} .done').textContent.replace(/,/g, ''))"
    tab.wait_for_function(f"{done_js} > {first} && {done_js} < 80", timeout=15_000)  # moving, mid-way
    tab.wait_for_function(f"{done_js} === 80", timeout=30_000)
    tab.wait_for_function("Number(document.getElementById('count-running').textContent) === 0", timeout=10_000)
    ended = sum(int(b.get_attribute("data-jobs") or 0) for b in tab.query_selector_all("#chart rect.bar"))
    assert ended >= 80  # the chart counts them
    backend = 'tr.backend[data-backend="default"][data-up="true"]'  # the worker's one backend, and its calls
    tab.wait_for_function(
        f"Number(document.querySelector('{backend} .calls')?.textContent.replace(/,/g, '')) >= 80", timeout=15_000
    )
    assert tab.text_content(f"{backend} .budget") == "no limit"  # called in the last minute, and unlimited


def test_a_failed_job_is_retried_from_its_button(dashboard: tuple[Page, SyncProducer], sim: Simulator) -> None:
    tab, producer = dashboard
    sim.configure(error_rate=1.0, error_statuses=[400])
    job_id = producer.submit("fails until retried", job_id="dash-failed")
    assert producer.wait(job_id, timeout=10).status == "failed"
    sim.configure(error_rate=0.0)

    tab.wait_for_selector(f'tr.failure[data-job="{job_id}"]', timeout=10_000)  # listed among the failures
    tab.goto(tab.url.split("#")[0] + f"#/job/{job_id}")
    tab.wait_for_function("document.getElementById('job-status').textContent === 'failed'", timeout=10_000)
    assert not tab.is_disabled("#retry-button") and tab.is_disabled("#cancel-button")
    tab.click("#retry-button")
    tab.click("#confirm-no")  # a change of mind: nothing happens
    assert producer.get(job_id).status == "failed"  # type: ignore[union-attr]
    tab.click("#retry-button")
    tab.click("#confirm-yes")
    tab.wait_for_function("document.getElementById('job-status').textContent === 'succeeded'", timeout=15_000)
    assert producer.get(job_id).attempts == 1  # type: ignore[union-attr]  # a new run, its own tries


def test_a_queued_job_is_cancelled_from_its_button(dashboard: tuple[Page, SyncProducer], sim: Simulator) -> None:
    tab, producer = dashboard
    sim.configure(latency_ms=8000)
    blockers = [producer.submit(f"holds a slot {i}") for i in range(SLOTS)]  # every ordinary slot taken
    deadline = time.monotonic() + 10
    while any(getattr(producer.get(b), "status", None) != "running" for b in blockers):  # (handed or claimed)
        assert time.monotonic() < deadline, "the blockers did not all start"
        time.sleep(0.02)
    time.sleep(0.3)  # (a job handed to the worker reads running at once: the worker has heard it since)
    job_id = producer.submit("never runs", priority=9, job_id="dash-queued")
    tab.goto(tab.url.split("#")[0] + f"#/job/{job_id}")
    tab.wait_for_function("document.getElementById('job-status').textContent === 'queued'", timeout=10_000)
    assert tab.is_disabled("#retry-button")
    tab.click("#cancel-button")
    tab.click("#confirm-yes")
    tab.wait_for_function("document.getElementById('job-status').textContent === 'cancelled'", timeout=10_000)
    # the page's refresh can show the status before the DELETE's answer fills in the message
    answered = "!document.getElementById('job-message').textContent.startsWith('Cancelling')"
    tab.wait_for_function(answered, timeout=10_000)
    assert "cancelled" in (tab.text_content("#job-message") or "")
    assert producer.get(job_id).attempts == 0  # type: ignore[union-attr]  # it never called the API
    for blocker in blockers:
        producer.cancel(blocker)


def test_a_provider_batch_is_shown_until_its_answers_are_read(
    dashboard: tuple[Page, SyncProducer], sim: Simulator
) -> None:
    tab, producer = dashboard
    sim.configure(batch_delay_ms=3000)
    producer.submit_many([{"prompt": f"later {i}", "tier": "batch"} for i in range(5)])
    tab.wait_for_selector('tr.provider-batch[data-step="created"]', timeout=15_000)
    assert tab.is_visible("#batch-tier")
    assert (tab.text_content("tr.provider-batch .status") or "").strip() == "in_progress"
    tab.wait_for_selector('tr.provider-batch[data-step="ended"]', timeout=20_000)
    assert number(tab, "tr.provider-batch .answered") == 5
