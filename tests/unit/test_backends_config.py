"""The backends list, the fallbacks and the circuit settings: read from the environment (or a file it
names) and refused, naming the variable, the backend and the field, when they are not valid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from worker.backends import Backend, Limit
from worker.config import ConfigError, WorkerConfig, ignored_variables

BASE = {"REDIS_URL": "redis://localhost:6379/0"}


def config(backends: Any, **env: str) -> WorkerConfig:
    return WorkerConfig.from_env({**BASE, "PROMPTQ_BACKENDS": json.dumps(backends), **env})


def test_without_a_list_the_default_backend_is_made_of_the_plain_variables() -> None:
    c = WorkerConfig.from_env(
        {**BASE, "OPENAI_BASE_URL": "http://local:8000/v1", "PROMPTQ_RPM": "60", "PROMPTQ_LIMITS": '{"m": {"tpm": 9}}'}
    )
    [default] = c.all_backends()
    assert (default.name, default.base_url, default.models) == ("default", "http://local:8000/v1", None)
    assert default.serves("any-model") == "any-model"
    assert default.limit_for("m") == Limit(60, 9) and default.limit_for("other") == Limit(60, None)
    assert c.backends == ()


def test_a_listed_backend_takes_its_key_from_a_variable_and_maps_model_names() -> None:
    c = config(
        [
            {"name": "east", "base_url": "https://east.example/v1/", "api_key_env": "EAST_KEY", "models": ["m"]},
            {
                "name": "azure-1",
                "kind": "azure",
                "api_version": "2024-10-21",
                "base_url": "https://x.openai.azure.com",
                "api_key": "k2",
                "models": {"m": "my-deployment"},
                "rpm": 300,
                "tpm": 9000,
                "weight": 2,
                "headers": {"x-team": "search"},
            },
        ],
        EAST_KEY="sk-east",
    )
    east, azure = c.all_backends()
    assert (east.base_url, east.api_key, east.serves("m"), east.serves("other")) == (
        "https://east.example/v1",
        "sk-east",
        "m",
        None,
    )
    assert azure.serves("m") == "my-deployment" and azure.limit_for("m") == Limit(300, 9000)
    assert (azure.kind, azure.api_version, azure.weight, azure.headers) == (
        "azure",
        "2024-10-21",
        2.0,
        {"x-team": "search"},
    )
    assert "sk-east" not in repr(c) and "k2" not in repr(azure)  # keys never reach a log through repr


def test_the_list_may_come_from_a_toml_or_json_file(tmp_path: Path) -> None:
    toml = tmp_path / "backends.toml"
    toml.write_text('[[backends]]\nname = "a"\nbase_url = "http://a/v1"\nmodels = ["m"]\nrpm = 5\n')
    [a] = WorkerConfig.from_env({**BASE, "PROMPTQ_BACKENDS_FILE": str(toml)}).all_backends()
    assert (a.name, a.limit) == ("a", Limit(5, None))
    listing = tmp_path / "backends.json"
    listing.write_text(json.dumps({"backends": [{"name": "b", "base_url": "http://b/v1", "models": ["m"]}]}))
    [b] = WorkerConfig.from_env({**BASE, "PROMPTQ_BACKENDS_FILE": str(listing)}).all_backends()
    assert b.name == "b"
    with pytest.raises(ConfigError, match=r"PROMPTQ_BACKENDS_FILE \(.*\.toml\) must be TOML"):
        toml.write_text("[[backends]\n")
        WorkerConfig.from_env({**BASE, "PROMPTQ_BACKENDS_FILE": str(toml)})
    with pytest.raises(ConfigError, match="PROMPTQ_BACKENDS_FILE: cannot read"):
        WorkerConfig.from_env({**BASE, "PROMPTQ_BACKENDS_FILE": str(tmp_path / "missing.json")})


A = {"name": "a", "base_url": "http://a/v1", "models": ["m"]}


@pytest.mark.parametrize(
    ("backends", "env", "message"),
    [
        ([], {}, "PROMPTQ_BACKENDS must be a non-empty list"),
        ([{**A, "base_url": None}], {}, r"PROMPTQ_BACKENDS\[0\] \('a'\).base_url must be an http"),
        ([{"base_url": "http://a"}], {}, r"PROMPTQ_BACKENDS\[0\].name must be 1 to 64"),
        ([A, {**A, "base_url": "http://b"}], {}, r"PROMPTQ_BACKENDS\[1\] \('a'\).name: another backend has this name"),
        ([{**A, "api_key_env": "NOT_SET"}], {}, r"\('a'\).api_key_env: the variable NOT_SET is not set"),
        ([{**A, "api_key": "x", "api_key_env": "Y"}], {}, "give api_key or api_key_env, not both"),
        ([{**A, "models": {"m": "x", "n": "x"}, "rpm": 0}], {}, r"\('a'\).rpm must be a positive integer"),
        ([{**A, "tpm": -5}], {}, r"\('a'\).tpm must be a positive integer, got -5"),
        ([{**A, "models": ["m", "m"]}], {}, r"\('a'\).models: 'm' is listed twice"),
        ([{**A, "models": []}], {}, r"\('a'\).models must name at least one model"),
        ([{**A, "weight": 0}], {}, r"\('a'\).weight must be a positive number"),
        ([{**A, "kind": "anthropic"}], {}, r"\('a'\).kind must be one of openai, azure"),
        ([{**A, "kind": "azure"}], {}, r"\('a'\).api_version is needed for kind azure"),
        ([{**A, "rpn": 5}], {}, r"\('a'\): unknown fields rpn"),
        ([{**A, "headers": {"x-a": "1\r\nevil: 2"}}], {}, r"\('a'\).headers\['x-a'\] must be a string on one line"),
        ([A], {"PROMPTQ_FALLBACKS": '{"m": ["m"]}'}, r"PROMPTQ_FALLBACKS\['m'\] names the model itself"),
        ([A], {"PROMPTQ_FALLBACKS": '{"": ["m"]}'}, r"PROMPTQ_FALLBACKS\[''\]: a name must be a model name"),
        ([A], {"PROMPTQ_FALLBACKS": '{"m": ["n"]}'}, r"PROMPTQ_FALLBACKS\['m'\]: no backend serves 'n'"),
        (
            [{**A, "models": ["m", "n", "o"]}],
            {"PROMPTQ_FALLBACKS": '{"m": ["n"], "n": ["o"], "o": ["m"]}'},
            "PROMPTQ_FALLBACKS loops: m -> n -> o -> m",
        ),
        ([A], {"PROMPTQ_CIRCUIT_FAILURES": "0"}, "PROMPTQ_CIRCUIT_FAILURES must be at least 1"),
        (
            [A],
            {"PROMPTQ_CIRCUIT_COOL_DOWN_S": "5", "PROMPTQ_CIRCUIT_MAX_COOL_DOWN_S": "2"},
            "PROMPTQ_CIRCUIT_MAX_COOL_DOWN_S",
        ),
        ([A], {"PROMPTQ_DEFAULT_DEADLINE_S": "-1"}, "PROMPTQ_DEFAULT_DEADLINE_S must be a finite number"),
        ([A], {"PROMPTQ_BACKENDS_FILE": "x.json"}, "PROMPTQ_BACKENDS and PROMPTQ_BACKENDS_FILE are both set"),
    ],
)
def test_a_bad_list_stops_the_worker_naming_the_variable_backend_and_field(
    backends: Any, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        config(backends, **env)


def test_a_model_mapped_twice_is_refused_even_where_json_would_keep_the_last() -> None:
    listing = '[{"name": "a", "base_url": "http://a", "models": {"m": "x", "m": "y"}}]'
    with pytest.raises(ConfigError, match=r"PROMPTQ_BACKENDS\[0\] \('a'\)\.models: 'm' is mapped twice"):
        WorkerConfig.from_env({**BASE, "PROMPTQ_BACKENDS": listing})
    listing = '[{"name": "a", "base_url": "http://a", "models": ["m"], "rpm": 5, "rpm": 50}]'
    with pytest.raises(ConfigError, match=r"PROMPTQ_BACKENDS\[0\] \('a'\): 'rpm' is given twice"):
        WorkerConfig.from_env({**BASE, "PROMPTQ_BACKENDS": listing})


def test_a_bad_list_never_shows_a_key_in_its_message() -> None:
    with pytest.raises(ConfigError) as caught:
        config([{**A, "api_key": "sk-SECRET-1234", "rpm": "many"}])
    assert "sk-SECRET-1234" not in str(caught.value)


def test_the_plain_variables_are_said_to_be_unused_beside_a_list() -> None:
    env = {**BASE, "PROMPTQ_BACKENDS": json.dumps([A]), "OPENAI_API_KEY": "sk-x", "PROMPTQ_RPM": "5"}
    assert ignored_variables(env) == ["OPENAI_API_KEY", "PROMPTQ_RPM"]
    assert ignored_variables({"OPENAI_API_KEY": "sk-x"}) == []
    assert WorkerConfig.from_env(env).all_backends()[0].limit == Limit()  # PROMPTQ_RPM is not the list's
    env = {**env, "OPENAI_BASE_URL": "not a url"}  # unused beside a list: it stops nothing
    assert ignored_variables(env) == ["OPENAI_API_KEY", "OPENAI_BASE_URL", "PROMPTQ_RPM"]
    assert [b.name for b in WorkerConfig.from_env(env).all_backends()] == [A["name"]]


def test_a_backend_serves_only_its_models() -> None:
    b = Backend("b", "http://b", "k", {"gpt-4o-mini": "mini-v2"})
    assert b.serves("gpt-4o-mini") == "mini-v2" and b.serves("gpt-4o") is None
