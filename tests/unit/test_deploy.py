"""compose.yaml and the Dockerfile say what the code does (no Docker engine here to run them)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml

from worker.config import ENV_NAMES
from worker.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_compose_has_the_services() -> None:
    services = _compose()["services"]
    assert {"redis", "worker", "demo"} <= services.keys()
    assert services["demo"]["profiles"] == ["demo"]


def test_the_collector_is_optional_and_the_default_stack_sends_no_traces() -> None:
    services = _compose()["services"]
    collector = services["collector"]
    assert collector["profiles"] == ["otel"]
    config = collector["volumes"][0].split(":")[0]
    assert (ROOT / config).exists() and "4318" in (ROOT / config).read_text()
    for name in ("worker", "api"):
        assert services[name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "${OTEL_EXPORTER_OTLP_ENDPOINT:-}"
    assert "otel]" in _dockerfile()  # the image can send them when asked


def test_redis_is_pinned_persistent_and_health_checked() -> None:
    redis = _compose()["services"]["redis"]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+(-[a-z]+)?", redis["image"]), "a pinned version, not latest"
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] in {"everysec", "always"}
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_the_worker_service_runs_arq_with_known_settings_and_scales() -> None:
    services = _compose()["services"]
    worker = services["worker"]
    assert worker["build"] == "." and (ROOT / "Dockerfile").exists()
    assert worker["command"] == ["arq", "worker.Settings"]
    unknown = set(worker["environment"]) - set(ENV_NAMES)
    assert not unknown, f"compose sets variables the worker does not read: {unknown}"
    assert worker["environment"]["REDIS_URL"].startswith("redis://redis:")
    assert "container_name" not in worker and "ports" not in worker, "--scale worker=N needs neither"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    for name, service in services.items():
        env = service.get("environment", {})
        assert not any("sk-" in str(v) for v in env.values()), f"{name}: no key in compose.yaml"


def test_the_simulator_and_demo_commands_exist() -> None:
    services = _compose()["services"]
    for name in ("sim", "demo"):
        command = services[name]["command"]
        assert command[:2] == ["python", "-m"]
        done = subprocess.run(
            [sys.executable, "-m", command[2], "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        for flag in (arg for arg in command[3:] if arg.startswith("--")):
            assert flag in done.stdout, f"{name}: {flag} is not an option of {command[2]}"


def test_the_worker_is_health_checked_on_its_metrics_port() -> None:
    worker = _compose()["services"]["worker"]
    port = str(worker["environment"]["PROMPTQ_METRICS_PORT"])
    assert f"{port}/healthz" in " ".join(worker["healthcheck"]["test"])


def test_the_api_service_runs_the_http_app() -> None:
    api = _compose()["services"]["api"]
    assert api["command"][:2] == ["uvicorn", "producer.http:app"]
    assert "PROMPTQ_API_TOKEN" in api["environment"] and "/healthz" in " ".join(api["healthcheck"]["test"])
    assert "[http,otel]" in _dockerfile(), "the image installs the API's extra (and the traces')"


def test_the_dockerfile_installs_every_package_and_runs_the_worker() -> None:
    dockerfile = _dockerfile()
    assert re.search(r"^FROM python:3\.1[1-9][\d.]*-slim", dockerfile, re.M), "a pinned Python >= 3.11"
    assert 'CMD ["arq", "worker.Settings"]' in dockerfile
    assert re.search(r"^USER (?!root)", dockerfile, re.M)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.removesuffix("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = set(re.findall(r"^COPY (\w+) ", dockerfile, re.M))
    assert {p for p in packages if "." not in p} <= copied
    assert "devtools" in copied, "the compose demo runs devtools.demo"


def _exported() -> set[str]:
    """The names of the series a worker serves on /metrics (a counter's with ``_total``, a
    histogram's with ``_bucket``, ``_sum`` and ``_count``)."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names


def _metrics_of(expr: str) -> set[str]:
    """The promptq series a PromQL expression names, once it parses (promql-parser: Prometheus'
    grammar; Grafana's interval variables stand for a duration)."""
    import promql_parser

    promql_parser.parse(re.sub(r"\$__(rate_)?interval", "5m", expr))  # raises ValueError naming the fault
    return set(re.findall(r"\b(promptq_[a-z_]+)\b", expr))


def test_every_alert_names_metrics_the_worker_exports_and_has_a_runbook() -> None:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    runbooks = (ROOT / "docs" / "alerts.md").read_text()
    headings = {line[3:].strip().lower() for line in runbooks.splitlines() if line.startswith("## ")}
    exported = _exported()
    assert len(alerts) >= 5
    for alert in alerts:
        named = _metrics_of(alert["expr"])
        assert named <= exported, f"{alert['alert']} names {sorted(named - exported)}, which no worker exports"
        assert named or "up{" in alert["expr"]
        assert re.fullmatch(r"\d+[smh]", alert["for"])
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}
        page, _, anchor = alert["annotations"]["runbook"].partition("#")
        assert page == "docs/alerts.md" and anchor == alert["alert"].lower() and anchor in headings
    assert headings == {alert["alert"].lower() for alert in alerts}  # a runbook for each alert, none left over


def test_the_grafana_dashboard_queries_only_metrics_the_worker_exports() -> None:
    board = json.loads((ROOT / "deploy" / "grafana" / "promptq.json").read_text())
    panels = board["panels"]
    assert [p["id"] for p in panels] == list(range(1, len(panels) + 1))
    assert board["templating"]["list"][0]["type"] == "datasource"
    exported, shown = _exported(), set()
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"]
        for target in panel["targets"]:
            named = _metrics_of(target["expr"])
            assert named and named <= exported, f"{panel['title']}: {sorted(named - exported)}"
            shown |= {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in named}
    assert {"promptq_jobs", "promptq_queue_depth", "promptq_backend_up", "promptq_backend_budget_in_use"} <= shown


def _k8s() -> dict[str, list[dict[str, Any]]]:
    """Every document of deploy/k8s, by file name."""
    paths = (ROOT / "deploy" / "k8s").glob("*.yaml")
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in paths}


def test_the_kubernetes_kit_applies_every_manifest_and_says_what_the_code_does() -> None:
    files = _k8s()
    kustomization = files.pop("kustomization.yaml")[0]
    secret = files.pop("secret.example.yaml")[0]  # (made by the operator, not applied)
    assert sorted(kustomization["resources"]) == sorted(files)
    docs = [d for ds in files.values() for d in ds]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {"promptq-worker", "promptq-api"}
    secrets = set(secret["stringData"])
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]
        assert pod["metadata"]["labels"] == deployment["spec"]["selector"]["matchLabels"]
        (container,) = pod["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["path"] == "/healthz" and container[probe]["httpGet"]["port"] in ports
        env = {e["name"]: e for e in container["env"]}
        assert {e["valueFrom"]["secretKeyRef"]["key"] for e in env.values() if "valueFrom" in e} <= secrets
        assert "memory" in container["resources"]["limits"]
        if name == "promptq-worker":
            assert set(env) <= set(ENV_NAMES)
            assert container["command"] == ["arq", "worker.Settings"]
            assert 'CMD ["arq", "worker.Settings"]' in _dockerfile()
            slots = int(env["PROMPTQ_MAX_JOBS"]["value"])
            assert int(env["PROMPTQ_METRICS_PORT"]["value"]) == ports["metrics"]
            grace_s = float(env["PROMPTQ_SHUTDOWN_GRACE_S"]["value"])
            assert pod["spec"]["terminationGracePeriodSeconds"] > grace_s + 5  # calls end before SIGKILL
        else:
            assert set(env) <= {"REDIS_URL", "PROMPTQ_API_TOKEN", "PROMPTQ_API_HOSTS", "PROMPTQ_API_OPEN"}
            assert container["command"][:2] == ["uvicorn", "producer.http:app"]
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert {b["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] for b in budgets} == set(deployments)
    (scaled,) = [d for d in docs if d["kind"] == "ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "promptq-worker"
    depth, age = scaled["spec"]["triggers"]  # on the queue's depth and its age
    for trigger in (depth, age):
        assert trigger["type"] == "prometheus"
        named = _metrics_of(trigger["metadata"]["query"])
        assert named and named <= _exported()
    assert "promptq_queue_depth" in depth["metadata"]["query"]
    assert int(depth["metadata"]["threshold"]) == slots  # a worker's worth of jobs a replica
    assert "promptq_queue_oldest_age_seconds" in age["metadata"]["query"]


def test_the_kubernetes_manifests_are_valid_against_the_kubernetes_schemas() -> None:
    """Every manifest but KEDA's (a custom resource, checked above) against the API's own schemas,
    strictly (an unknown field is an error), offline: kubernetes-validate ships them."""
    import kubernetes_validate

    checked = 0
    for name, docs in _k8s().items():
        for doc in docs:
            if name == "kustomization.yaml" or doc["kind"] == "ScaledObject":
                continue
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
            checked += 1
    assert checked >= 6  # two Deployments, a Service, two PodDisruptionBudgets, the Secret
