# promptq: `make demo` runs four prompts end to end; `make test` runs ruff, mypy and pytest.
# Both create the virtualenv (.venv) and install what they need on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest faults bench bench-limits redis sim worker clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

demo: $(STAMP)
	$(PY) -m devtools.demo

test: lint typecheck pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP) redis
	$(PY) -m pytest

# The fault-injection suite alone (it also runs in `make test`), its figures written for the README.
faults: $(STAMP) redis
	PROMPTQ_FAULTS_REPORT=docs/faults.md $(PY) -m pytest tests/faults -q

# The speed benchmarks against the plain-asyncio baseline; writes bench/results.md (about 12 minutes).
bench: $(STAMP) redis
	$(PY) -m bench.run --out bench/results.md

# Shared rate limits against the simulator's own limits, shared vs per process; writes bench/limits.md
# (3 runs of 1, 2 and 4 workers, 3 limit windows each: about 35 minutes).
bench-limits: $(STAMP) redis
	$(PY) -m bench.limits --out bench/limits.md

# Makes sure the tests can have a Redis: a redis-server binary (the tests start their own on a free
# port) or, failing that, one answering at REDIS_URL. Installs redis-server with apt-get as root.
redis: $(STAMP)
	@$(PY) -m devtools.ensure_redis

# Handy for development: the simulator and a worker in the foreground.
sim: $(STAMP)
	$(PY) -m sim --port 8000 --reply demo --latency-ms 200

worker: $(STAMP)
	OPENAI_BASE_URL=$${OPENAI_BASE_URL:-http://127.0.0.1:8000/v1} $(VENV)/bin/arq worker.Settings

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
