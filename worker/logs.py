"""Logging set-up: structlog for promptq, the same pipeline for stdlib loggers (arq, redis, openai).

One list of shared processors; only the renderer differs: JSON lines when stderr is not a TTY (or
``PROMPTQ_LOG_FORMAT=json``), console otherwise. promptq's own lines (one a finished job at least)
are filtered by level and written to stderr by structlog itself (:class:`Stderr`), not handed to the
stdlib's handler and formatter, which cost several times as much a line. Prompt text and API keys
are never logged: arq's per-job lines (whose start line prints the job's arguments) are dropped
below DEBUG and redacted at DEBUG, and the openai and httpx loggers are held at WARNING, since their
DEBUG lines carry request bodies and headers.
"""

from __future__ import annotations

import logging
import logging.config
import sys
from typing import Any, ClassVar

import structlog
import structlog.tracebacks

__all__ = ["configure_logging", "get_logger"]

ARQ_JOB_START = "%6.2fs → %s(%s)%s"
"""arq 0.28's job-start line; its third argument is the job's arguments (the prompt)."""
ARQ_JOB_LINES = frozenset({ARQ_JOB_START, "%6.2fs ← %s ● %s", "%6.2fs ↻ %s retrying job in %0.2fs"})
"""arq's routine per-job lines; promptq's own ``job.*`` lines say the same without the arguments."""
QUIET_LOGGERS = ("openai", "httpx", "httpcore", "httpx2", "httpcore2")


class ArqJobLines(logging.Filter):
    """Drop arq's routine per-job lines unless at DEBUG; never let the job's arguments through."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str) or record.msg not in ARQ_JOB_LINES:
            return True
        if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
            return False
        if record.msg == ARQ_JOB_START and isinstance(record.args, tuple) and len(record.args) == 4:
            t, ref, _args, extra = record.args
            record.args = (t, ref, "…", extra)
        return True


class _ThenPromptq(logging.config.DictConfigurator):
    """``logging.config.dictConfigClass`` for the worker process: whoever calls ``dictConfig`` (arq's
    CLI does, after importing the settings), promptq's configuration is applied again after it."""

    settings: tuple[str, str] = ("auto", "info")

    def configure(self) -> None:
        super().configure()
        _apply(*self.settings)


class Stderr:
    """Where structlog writes promptq's lines: ``sys.stderr`` as it is at each line (a test's capture)."""

    def __init__(self, name: str = "") -> None:
        self.name = name

    def msg(self, message: str) -> None:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()

    debug = info = warning = error = critical = exception = msg


class _Latest:
    """The level and the last processors of the latest :func:`configure_logging`, which every
    promptq logger applies (a logger keeps the processors it was first used with)."""

    level_no = logging.INFO
    final: ClassVar[list[Any]] = []


_LEVELS = {name.lower(): number for name, number in logging.getLevelNamesMapping().items()}


def _at_level(logger: Any, method_name: str, event_dict: Any) -> Any:
    if _LEVELS.get(method_name, logging.INFO) < _Latest.level_no:
        raise structlog.DropEvent
    return event_dict


def _rendered(logger: Any, method_name: str, event_dict: Any) -> Any:
    for processor in _Latest.final:
        event_dict = processor(logger, method_name, event_dict)
    return event_dict


def _shared_processors(own: bool = False) -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level if own else structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,  # (a Stderr has the name too)
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def configure_logging(log_format: str = "auto", level: str = "info") -> None:
    """Configure structlog and the stdlib root logger, now and after any later ``dictConfig``."""
    _ThenPromptq.settings = (log_format, level)
    logging.config.dictConfigClass = _ThenPromptq
    _apply(log_format, level)


def _apply(log_format: str, level: str) -> None:
    json_lines = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    renderer: Any
    # Tracebacks without their frames' locals: a local may hold a prompt, a key or an answer.
    if json_lines:
        renderer = structlog.processors.JSONRenderer()
        tracebacks = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        final: list[Any] = [tracebacks, renderer]
    else:
        final = [structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)]
    level_no = logging.getLevelNamesMapping()[level.upper()]

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*_shared_processors(), structlog.stdlib.ExtraAdder()],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
        )
    )
    handler.addFilter(ArqJobLines())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level_no)
    arq = logging.getLogger("arq")
    arq.handlers = []
    arq.propagate = True
    arq.setLevel(level_no)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level_no, logging.WARNING))

    _Latest.level_no, _Latest.final = level_no, final
    structlog.configure(
        processors=[_at_level, *_shared_processors(own=True), _rendered],
        logger_factory=Stderr,
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),  # (_at_level filters)
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    """promptq's logger ``name`` (the ``logger`` field of its lines)."""
    return structlog.get_logger(name)
