# promptq: `make demo` runs four prompts end to end; `make test` runs ruff, mypy and pytest.
# Both create the virtualenv (.venv) and install what they need on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo docs test test-fast test-newest test-oldest lock lint typecheck pytest faults bench bench-limits bench-tracing bench-backends bench-cluster bench-trust bench-batch bench-peers redis browser api openapi screenshot sim worker clean

# The exact versions in constraints.txt (pip's too), the same the image installs; `make lock` renews them.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $@

demo: $(STAMP)
	$(PY) -m devtools.demo

test: lint typecheck pytest

# The documentation site (docs/, mkdocs.yml) into site/, every warning an error: a broken link or
# anchor, a page missing from the nav. Its settings table is made from promptq_core/settings.py.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
	@echo "open site/index.html"

# The suite again on the newest Python the project claims (pyproject: >= 3.11; 3.13 here, under
# pyenv), in its own virtualenv. Skipped, saying so, where no Python 3.13 is installed.
NEWEST ?= 3.13
NEWEST_PYTHON := $(shell for p in python$(NEWEST) $$(ls -d $$(pyenv root 2>/dev/null)/versions/$(NEWEST)*/bin/python3 2>/dev/null); do \
	$$p -c 'import sys; sys.exit(sys.version_info[:2] != tuple(map(int, "$(NEWEST)".split("."))))' 2>/dev/null && echo $$p && break; done)
test-newest:
	@if [ -z "$(NEWEST_PYTHON)" ]; then echo "no Python $(NEWEST) found: the suite ran on $$($(PYTHON) --version) only"; \
	else $(MAKE) --no-print-directory pytest PYTHON=$(NEWEST_PYTHON) VENV=.venv-$(NEWEST); fi

# The fast suite against the lowest version of each package pyproject allows, in its own virtualenv,
# so that the lower bounds stay true. (The HTTP fuzz and browser tests need the dev tools' newest
# versions and are left out; so is the OpenAPI file check, which FastAPI's version changes.)
OLDEST := openai==3.0.0 aiohttp==3.14.5 httpx2==2.7.0 redis==5.0.1 arq==0.28.0 structlog==24.1.0 prometheus-client==0.20.0 \
	fastapi==0.115.0 starlette==0.37.2 pydantic==2.7.0 uvicorn==0.30.0 \
	opentelemetry-api==1.27.0 opentelemetry-sdk==1.27.0 opentelemetry-exporter-otlp-proto-http==1.27.0
test-oldest: redis
	@test -x .venv-oldest/bin/python || $(PYTHON) -m venv .venv-oldest
	.venv-oldest/bin/python -m pip install --quiet --disable-pip-version-check -e '.[http,otel]' $(OLDEST) \
		pytest pytest-asyncio pytest-timeout pyyaml standardwebhooks kubernetes-validate promql-parser
	.venv-oldest/bin/python -m pytest -q -m "not faults and not process and not browser" \
		--ignore tests/integration/test_http_fuzz.py --ignore tests/integration/test_page.py \
		--ignore tests/integration/test_dashboard.py --ignore tests/unit/test_docs.py --ignore tests/integration/test_examples.py

# Rewrites constraints.txt, on purpose only: every extra resolved afresh, without the old pins, to the
# newest versions pyproject allows, in a throw-away virtualenv, then frozen (the project itself, setuptools
# and wheel left out). Run it with Python 3.11, the oldest the project supports and the image's; read the
# diff and run `make test` before committing it.
LOCK_VENV ?= /tmp/promptq-lock-venv
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev,http,otel]'
	$(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable > $(LOCK_VENV)/frozen.txt
	printf '%s\n' \
		'# The exact version of every package the dev environment installs (promptq[dev], which takes in' \
		'# the http and otel extras), and of pip. `make test`, CI and the Dockerfile install with' \
		'# `-c constraints.txt`; pyproject keeps the ranges (`make test-oldest` tests their lower bounds).' \
		'# Renewed on purpose only, never by an install: `make lock` (resolved afresh on Python 3.11, in a' \
		'# throw-away virtualenv, then frozen); read the diff and run `make test` before committing it.' \
		> $(LOCK_VENV)/constraints.txt
	grep -v -e '^setuptools==' -e '^wheel==' $(LOCK_VENV)/frozen.txt >> $(LOCK_VENV)/constraints.txt
	cp $(LOCK_VENV)/constraints.txt constraints.txt
	rm -rf $(LOCK_VENV)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP) redis browser
	$(PY) -m pytest --durations=15

# Unit tests and the in-process integration tests (real Redis and simulator; no processes of their
# own, no browser, no faults): under a minute.
test-fast: $(STAMP) redis
	$(PY) -m pytest -q -m "not faults and not process and not browser"

# The fault-injection suite alone (it also runs in `make test`), its figures written for docs/faults.md.
faults: $(STAMP) redis
	PROMPTQ_FAULTS_REPORT=docs/faults.md $(PY) -m pytest tests/faults -q

# The speed benchmarks against the plain-asyncio baseline, and the queue's (fairness, fleet size),
# then four named queues on one Redis and on a Redis Cluster (bench-cluster), then the Batch tier
# against the live tier (bench-batch); writes bench/results.md, bench/cluster.md and
# bench/batch_tier.md (about 28 minutes).
bench: $(STAMP) redis
	$(PY) -m bench.run --out bench/results.md
	$(PY) -m bench.cluster --out bench/cluster.md
	$(PY) -m bench.batch_tier --out bench/batch_tier.md

# promptq beside other job queues on one workload (BullMQ from npm, arq, SAQ and Celery from PyPI, at
# pinned versions, each in an environment of its own), repeats interleaved; writes bench/peers.md
# (about 12 minutes). Without Node and npm, BullMQ is left out and the table says so.
bench-peers: $(STAMP) redis
	$(PY) -m bench.peers --out bench/peers.md

# Shared rate limits against the simulator's own limits, shared vs per process; writes bench/limits.md
# (3 runs of 1, 2 and 4 workers, 3 limit windows each: about 35 minutes).
bench-limits: $(STAMP) redis
	$(PY) -m bench.limits --out bench/limits.md

# Several backends: a provider outage (503, then connection refused) under a batch, the spread over
# three backends of different limits, and one of them dying mid-run; writes bench/backends.md
# (about 10 minutes).
bench-backends: $(STAMP) redis
	$(PY) -m bench.backends --out bench/backends.md

# Four named queues on one Redis and on a local Redis Cluster (3 primaries + 3 replicas), the same
# run; writes bench/cluster.md (3 runs each: about 3 minutes).
bench-cluster: $(STAMP) redis
	$(PY) -m bench.cluster --out bench/cluster.md

# The overview at its bounds and 2,000 open event streams, as before issue 23 and now; writes
# bench/trust.md (about a minute).
bench-trust: $(STAMP) redis
	$(PY) -m bench.trust --out bench/trust.md

# The Batch tier against the live tier for the same 10,000 jobs: calls, provider batches, Redis memory
# while waiting, cost; writes bench/batch_tier.md (about 6 minutes).
bench-batch: $(STAMP) redis
	$(PY) -m bench.batch_tier --out bench/batch_tier.md

# The worker's CPU per job with traces off and on (OTLP export to a local receiver); writes
# bench/tracing.md (about 3 minutes; 7 runs).
bench-tracing: $(STAMP) redis
	$(PY) -m bench.tracing --out bench/tracing.md

# Makes sure the tests can have a Redis: a redis-server binary (the tests start their own on a free
# port) or, failing that, one answering at REDIS_URL. Installs redis-server with apt-get as root.
redis: $(STAMP)
	@$(PY) -m devtools.ensure_redis

# Makes sure the page test has a headless Chromium (Debian's package, installed with apt-get as root).
browser: $(STAMP)
	@$(PY) -m devtools.ensure_browser

# The OpenAPI schema of the HTTP API, written to docs/openapi.json (a test compares the two).
openapi: $(STAMP) redis
	PROMPTQ_WRITE_OPENAPI=1 $(PY) -m pytest -q tests/integration/test_http.py -k openapi

# The docs' screenshots: the page (taken by its browser test) and the dashboard after six
# minutes of work (devtools/dashboard_shot.py).
screenshot: $(STAMP) redis browser
	PROMPTQ_SCREENSHOT=docs/page.png $(PY) -m pytest -q tests/integration/test_page.py -k streams
	$(PY) -m devtools.dashboard_shot --out docs/dashboard.png

# Handy for development: the simulator and a worker in the foreground.
sim: $(STAMP)
	$(PY) -m sim --port 8000 --reply demo --latency-ms 200

worker: $(STAMP)
	OPENAI_BASE_URL=$${OPENAI_BASE_URL:-http://127.0.0.1:8000/v1} $(VENV)/bin/arq worker.Settings

api: $(STAMP)
	$(VENV)/bin/uvicorn producer.http:app --port 8080

clean:
	rm -rf $(VENV) site .mypy_cache .ruff_cache .pytest_cache *.egg-info
