"""The one seam between promptq and arq: an arq upgrade fails here, naming what changed."""

from __future__ import annotations

import inspect

import arq
import pytest
from arq.worker import Worker

from worker import arq_seam
from worker.arq_seam import ATTRIBUTES, CTX_CONFIG, MEMBERS, PromptqWorker, parameters
from worker.config import WorkerConfig
from worker.logs import ARQ_JOB_LINES
from worker.settings import on_startup, settings_kwargs


def test_arq_is_the_version_promptq_was_written_against() -> None:
    assert arq.VERSION.startswith(arq_seam.SUPPORTED_ARQ)
    arq_seam.check()


def test_every_member_promptq_touches_has_the_parameters_it_was_written_against() -> None:
    changed = {name: parameters(name) for name, expected in MEMBERS.items() if parameters(name) != expected}
    assert not changed


def test_every_member_of_arq_that_promptq_overrides_is_in_the_list_and_takes_what_arq_passes() -> None:
    overrides = {
        name for name, value in vars(PromptqWorker).items() if inspect.isfunction(value) and hasattr(Worker, name)
    }
    assert overrides == {"main", "_poll_iteration", "finish_job", "finish_failed_job", "handle_sig", "close"}
    for name in overrides:
        assert f"Worker.{name}" in MEMBERS
        ours, arqs = inspect.signature(getattr(PromptqWorker, name)), inspect.signature(getattr(Worker, name))
        assert list(ours.parameters) == list(arqs.parameters)


async def test_a_worker_built_from_promptqs_settings_is_promptqs_and_has_every_attribute_it_reads() -> None:
    # (async: arq's Worker takes the running loop)
    kwargs = settings_kwargs(WorkerConfig(openai_api_key="k"))
    worker = Worker(**{**kwargs, "handle_signals": False})
    assert type(worker) is PromptqWorker
    missing = [name for name in ATTRIBUTES if not hasattr(worker, name)]
    assert not missing
    plain = Worker(functions=kwargs["functions"], handle_signals=False)
    assert type(plain) is Worker  # other arq workers in the process are left alone
    # arq's CLI keeps only the settings its Worker's signature names: the wrapped __init__ shows arq's
    assert "ctx" in inspect.signature(Worker).parameters


def test_arqs_per_job_log_lines_are_the_ones_promptq_filters() -> None:
    source = inspect.getsource(Worker.run_job)
    assert all(repr(line)[1:-1] in source or line in source for line in ARQ_JOB_LINES)


async def test_promptqs_start_up_refuses_to_run_in_a_worker_it_did_not_set_up() -> None:
    config = WorkerConfig(openai_api_key="k")
    with pytest.raises(RuntimeError, match="not set up by promptq"):
        await on_startup({CTX_CONFIG: config, "redis": None})  # what a plain arq Worker would pass
