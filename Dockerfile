# The promptq image: the worker (`arq worker.Settings`, the default command), the producer package
# and its HTTP API (`uvicorn producer.http:app`), the simulator (`python -m sim`) and the demo
# (`python -m devtools.demo --submit-only`).
# The base by tag for now: to be pinned by digest (python:3.11.11-slim-bookworm@sha256:...) with the one
# `docker buildx imagetools inspect python:3.11.11-slim-bookworm` gives when an image is built.
FROM python:3.11.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY promptq_core ./promptq_core
COPY producer ./producer
COPY worker ./worker
COPY sim ./sim
# The exact versions `make test` tests (constraints.txt, renewed by `make lock`).
RUN pip install -c constraints.txt '.[http,otel]' && rm -rf build *.egg-info
COPY devtools ./devtools

USER nobody
CMD ["arq", "worker.Settings"]
