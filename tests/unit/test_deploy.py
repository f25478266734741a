"""compose.yaml, the Dockerfile and the operations kit (deploy/: Kubernetes, Prometheus, Grafana) say
what the code does (no Docker engine, cluster or Prometheus here to run them)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import promql_parser as promql
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from producer.http.access import Access
from promptq_core.settings import API, read_by
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


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def _series_labels() -> dict[str, frozenset[str]]:
    """The series a worker serves on /metrics (a counter's with ``_total``, a histogram's with
    ``_bucket``, ``_sum`` and ``_count``), each with its label names (a bucket's ``le`` too), as
    the worker's registry declares them."""
    metrics = Metrics()
    found: dict[str, frozenset[str]] = {}
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            for suffix in SUFFIXES[str(metric._type)]:
                extra = {"le"} if suffix == "_bucket" else set()
                found[metric._name + suffix] = frozenset(metric._labelnames) | extra
    registered = {f.name + suffix for f in metrics.registry.collect() for suffix in SUFFIXES[f.type]}
    assert set(found) == registered, "a metric the registry holds that Metrics does not keep"
    return found


def _exported() -> set[str]:
    return set(_series_labels())


def _scrape() -> dict[str, Any]:
    """The scrape job of deploy/prometheus/scrape.yaml."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "scrape.yaml").read_text())
    (job,) = config["scrape_configs"]
    assert isinstance(job, dict)
    return job


def _target_labels() -> frozenset[str]:
    """The labels Prometheus gives every series it scrapes from a worker: job and instance, and those
    the scrape job's relabelling sets."""
    relabelled = {r["target_label"] for r in _scrape()["relabel_configs"] if "target_label" in r}
    return frozenset({"job", "instance"} | {name for name in relabelled if not name.startswith("__")})


def _known() -> dict[str, frozenset[str]]:
    """Every series a query may name, with the labels it carries once scraped (``up`` is Prometheus')."""
    targets = _target_labels()
    return {"up": targets} | {name: labels | targets for name, labels in _series_labels().items()}


Labels = frozenset[str] | None
"""The label names of what an expression gives; None for a scalar."""


def _labels(node: promql.Expr, known: dict[str, frozenset[str]]) -> Labels:
    """The labels of what ``node`` gives, failing where it names a label its operand does not carry:
    in a matcher, in by(...) or without(...), in on(...) or ignoring(...), or when two vectors are
    matched on label sets that differ (they would never match)."""
    if isinstance(node, promql.NumberLiteral | promql.StringLiteral):
        return None
    if isinstance(node, promql.ParenExpr | promql.UnaryExpr | promql.SubqueryExpr):
        return _labels(node.expr, known)
    if isinstance(node, promql.MatrixSelector):
        return _labels(node.vector_selector, known)
    if isinstance(node, promql.VectorSelector):
        assert node.name in known, f"{node.name}: no such series"
        labels = known[node.name]
        named = {m.name for m in node.matchers.matchers}
        assert named <= labels, f"{node.name} has no label {sorted(named - labels)}"
        return labels
    if isinstance(node, promql.AggregateExpr):
        return _aggregated(node, known)
    if isinstance(node, promql.Call):
        return _called(node, known)
    if isinstance(node, promql.BinaryExpr):
        return _matched(node, known)
    raise AssertionError(f"{type(node).__name__}: an expression this check does not read")


def _aggregated(node: promql.AggregateExpr, known: dict[str, frozenset[str]]) -> Labels:
    inner = _labels(node.expr, known)
    assert inner is not None
    if node.modifier is None:
        return inner if str(node.op) in {"topk", "bottomk", "limitk"} else frozenset()
    named = frozenset(node.modifier.labels)
    assert named <= inner, f"{node.op} by/without {sorted(named - inner)}: its operand has no such label"
    return named if node.modifier.type == promql.AggModifierType.By else inner - named


def _called(node: promql.Call, known: dict[str, frozenset[str]]) -> Labels:
    args = [_labels(arg, known) for arg in node.args]
    name = node.func.name
    if name in {"scalar", "time"}:
        return None
    if name in {"vector", "absent", "absent_over_time"}:
        return frozenset()
    if name == "histogram_quantile":
        buckets = args[1]
        assert buckets is not None and "le" in buckets, "histogram_quantile over series without le"
        return buckets - {"le"}
    return next((labels for labels in args if labels is not None), None)


def _matched(node: promql.BinaryExpr, known: dict[str, frozenset[str]]) -> Labels:
    left, right = _labels(node.lhs, known), _labels(node.rhs, known)
    if left is None or right is None:
        return right if left is None else left
    matching = node.modifier.matching if node.modifier is not None else None
    if matching is None:
        assert left == right, f"{node.op} between {sorted(left)} and {sorted(right)}: no series would match"
    elif matching.type == promql.LabelModifierType.Include:
        on = frozenset(matching.labels)
        assert on <= left and on <= right, f"on {sorted(on)}: not on both sides"
    else:
        ignored = frozenset(matching.labels)
        assert left - ignored == right - ignored, f"ignoring {sorted(ignored)}: the sides differ otherwise"
    if str(node.op) == "or":
        return left | right
    group_right = node.modifier is not None and node.modifier.card == promql.VectorMatchCardinality.OneToMany
    return right if group_right else left


def _metrics_of(expr: str) -> set[str]:
    """The promptq series a PromQL expression names, once it parses (promql-parser: Prometheus'
    grammar; Grafana's interval variables stand for a duration) and names only labels its series
    carry (the worker's, and those the scrape gives)."""
    parsed = promql.parse(re.sub(r"\$__(rate_)?interval", "5m", expr))  # raises ValueError naming the fault
    _labels(parsed, _known())
    return set(re.findall(r"\b(promptq_[a-z_]+)\b", expr))


def test_the_label_check_refuses_a_label_the_series_lacks() -> None:
    for expr in (
        "max by (model) (promptq_queue_depth)",
        'promptq_jobs_total{queue="default"}',
        "sum without (queue) (rate(promptq_jobs_total[5m]))",
        "histogram_quantile(0.5, sum by (model) (rate(promptq_attempt_seconds_bucket[5m])))",
        "max by (queue) (promptq_queue_depth) and on (backend) max by (backend) (promptq_backend_up)",
        "max by (queue) (promptq_queue_depth) > max by (backend) (promptq_backend_up)",
    ):
        with pytest.raises(AssertionError):
            _metrics_of(expr)
    assert _metrics_of('count(up{job="promptq-worker", namespace="q"} == 1)') == set()
    assert _metrics_of("sum by (endpoint, pod) (rate(promptq_jobs_total[5m]))") == {"promptq_jobs_total"}


def _queries() -> dict[str, str]:
    """Every PromQL query of the kit, by where it is: the alerts, the dashboard, KEDA's triggers."""
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text())
    found = {f"alert {r['alert']}": r["expr"] for group in rules["groups"] for r in group["rules"]}
    board = json.loads((ROOT / "deploy" / "grafana" / "promptq.json").read_text())
    found |= {f"panel {p['title']} {t['refId']}": t["expr"] for p in board["panels"] for t in p["targets"]}
    (scaled,) = [d for ds in _k8s().values() for d in ds if d["kind"] == "ScaledObject"]
    found |= {f"trigger {i}": t["metadata"]["query"] for i, t in enumerate(scaled["spec"]["triggers"])}
    return found


def test_every_scrape_job_the_queries_name_is_one_the_kit_defines() -> None:
    """The alerts, the dashboard and KEDA name the workers' scrape job (``up{job=...}``): scrape.yaml
    defines it, and the PodMonitor gives its targets the same name."""
    job = _scrape()
    named = {name for expr in _queries().values() for name in re.findall(r'\bjob\s*=~?\s*"([^"]*)"', expr)}
    assert named == {job["job_name"]}, f"named {sorted(named)}; scrape.yaml defines {job['job_name']}"
    worker = _deployment("promptq-worker")
    pod_labels = worker["spec"]["template"]["metadata"]["labels"]
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    ports = {p["name"] for p in container["ports"]}
    keep = {r["source_labels"][0]: r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"}
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    assert keep["__meta_kubernetes_pod_label_app_kubernetes_io_name"] == pod_labels["app.kubernetes.io/name"]
    assert keep["__meta_kubernetes_pod_container_port_name"] in ports
    monitor = yaml.safe_load((ROOT / "deploy" / "prometheus" / "podmonitor.yaml").read_text())
    assert monitor["kind"] == "PodMonitor"
    assert pod_labels[monitor["spec"]["jobLabel"]] == job["job_name"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in ports
    if any("endpoint" in labels for labels in _series_labels().values()):  # the operator's own `endpoint`
        assert {"action": "labeldrop", "regex": "endpoint"} in endpoint["relabelings"]  # would rename ours
    pods = [d for d in _k8s()["worker.yaml"] if d["kind"] == "Deployment"]
    assert all("prometheus.io/scrape" not in d["spec"]["template"]["metadata"].get("annotations", {}) for d in pods), (
        "a second scrape job (annotations) would count every figure twice"
    )


def test_every_alert_names_metrics_the_worker_exports_and_has_a_runbook() -> None:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    runbooks = (ROOT / "docs" / "alerts.md").read_text()
    headings = {line[3:].strip().lower() for line in runbooks.splitlines() if line.startswith("## ")}
    exported = _exported()
    site_url = yaml.safe_load((ROOT / "mkdocs.yml").read_text()).get("site_url")
    site = site_url.rstrip("/") + "/" if site_url else ""  # (none set: a path relative to the site's root)
    assert len(alerts) >= 5
    for alert in alerts:
        named = _metrics_of(alert["expr"])
        assert named <= exported, f"{alert['alert']} names {sorted(named - exported)}, which no worker exports"
        assert named or "up{" in alert["expr"]
        assert re.fullmatch(r"\d+[smh]", alert["for"])
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}
        assert "runbook" not in alert["annotations"], "runbook_url, the key Alertmanager and Grafana read"
        page, _, anchor = alert["annotations"]["runbook_url"].partition("#")
        assert page == f"{site}alerts.html" and anchor == alert["alert"].lower() and anchor in headings
    assert headings == {alert["alert"].lower() for alert in alerts}  # a runbook for each alert, none left over


def test_the_queue_stuck_alert_is_per_queue_on_both_sides() -> None:
    """PromptqQueueStuck names a queue: every series it reads has a ``queue`` label (the jobs ended
    have none, so they cannot say which queue moves)."""
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text())
    (stuck,) = [r for group in rules["groups"] for r in group["rules"] if r["alert"] == "PromptqQueueStuck"]
    labels = _series_labels()
    named = _metrics_of(stuck["expr"])
    assert "promptq_queue_oldest_age_seconds" in named
    assert all("queue" in labels[name] for name in named)
    assert _labels(promql.parse(stuck["expr"]), _known()) == frozenset({"queue"})


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


def test_the_dashboard_rates_span_grafanas_rate_interval() -> None:
    """A fixed window shorter than a few scrapes shows gaps or nothing; $__rate_interval is at least
    four of the data source's scrape intervals, whatever the panel's width."""
    board = json.loads((ROOT / "deploy" / "grafana" / "promptq.json").read_text())
    windows = [w for p in board["panels"] for t in p["targets"] for w in re.findall(r"\[([^\]]+)\]", t["expr"])]
    assert windows and set(windows) == {"$__rate_interval"}


def _k8s() -> dict[str, list[dict[str, Any]]]:
    """Every document of deploy/k8s, by file name."""
    paths = (ROOT / "deploy" / "k8s").glob("*.yaml")
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in paths}


def _deployment(name: str) -> dict[str, Any]:
    (found,) = [d for ds in _k8s().values() for d in ds if d["kind"] == "Deployment" and d["metadata"]["name"] == name]
    return found


def _scaled() -> dict[str, Any]:
    (scaled,) = [d for ds in _k8s().values() for d in ds if d["kind"] == "ScaledObject"]
    return scaled


def _worker_env() -> dict[str, str]:
    (container,) = _deployment("promptq-worker")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


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
        env = {e["name"]: e for e in container["env"]}
        refs = [e["valueFrom"].get("secretKeyRef") for e in env.values() if "valueFrom" in e]
        assert {ref["key"] for ref in refs if ref} <= secrets
        assert "memory" in container["resources"]["limits"]
        if name == "promptq-worker":
            assert set(env) <= set(ENV_NAMES)
            assert container["command"] == ["arq", "worker.Settings"]
            assert 'CMD ["arq", "worker.Settings"]' in _dockerfile()
            assert int(env["PROMPTQ_METRICS_PORT"]["value"]) == ports["metrics"]
            grace_s = float(env["PROMPTQ_SHUTDOWN_GRACE_S"]["value"])
            assert pod["spec"]["terminationGracePeriodSeconds"] > grace_s + 5  # calls end before SIGKILL
        else:
            pod_facts = {n for n, e in env.items() if "fieldRef" in e.get("valueFrom", {})}  # (the Downward API's)
            assert set(env) - pod_facts <= set(read_by(API))
            assert container["command"][:2] == ["uvicorn", "producer.http:app"]
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert {b["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] for b in budgets} == set(deployments)
    scaled = _scaled()
    assert scaled["spec"]["scaleTargetRef"]["name"] == "promptq-worker"
    depth, age = scaled["spec"]["triggers"]  # on the queue's depth and its age
    for trigger in (depth, age):
        assert trigger["type"] == "prometheus" and trigger.get("metricType", "AverageValue") == "AverageValue"
        named = _metrics_of(trigger["metadata"]["query"])
        assert named and named <= _exported()
    assert "promptq_queue_depth" in depth["metadata"]["query"]
    assert int(depth["metadata"]["threshold"]) == int(_worker_env()["PROMPTQ_MAX_JOBS"])  # a worker's jobs a replica
    assert "promptq_queue_oldest_age_seconds" in age["metadata"]["query"]


def test_a_redis_outage_restarts_no_pod() -> None:
    """Liveness never asks Redis: the API's is a TCP connect (its /healthz answers 503 while Redis is
    away, and serves as readiness); the worker's /healthz reads only its own loop."""
    (api,) = _deployment("promptq-api")["spec"]["template"]["spec"]["containers"]
    api_ports = {p["name"] for p in api["ports"]}
    assert api["livenessProbe"]["tcpSocket"]["port"] in api_ports and "httpGet" not in api["livenessProbe"]
    ready = api["readinessProbe"]["httpGet"]
    assert ready["path"] == "/healthz" and ready["port"] in api_ports
    (worker,) = _deployment("promptq-worker")["spec"]["template"]["spec"]["containers"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert worker[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    import inspect

    assert "redis" not in inspect.getsource(Metrics.healthy).lower()


def test_the_api_serves_the_services_names_in_the_cluster() -> None:
    """PROMPTQ_API_HOSTS, once the kubelet put the pod's namespace in, is one the API accepts, and
    names the Service as callers in the cluster reach it (short, with its namespace, in full)."""
    (container,) = _deployment("promptq-api")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    names = [e["name"] for e in container["env"]]
    assert names.index("POD_NAMESPACE") < names.index("PROMPTQ_API_HOSTS")  # ($(...) reads only those before)
    hosts = env["PROMPTQ_API_HOSTS"]["value"].replace("$(POD_NAMESPACE)", "team-a")
    (service,) = [d for d in _k8s()["api.yaml"] if d["kind"] == "Service"]
    name = service["metadata"]["name"]
    expected = {name, f"{name}.team-a", f"{name}.team-a.svc", f"{name}.team-a.svc.cluster.local"}
    assert set(Access.from_env({"PROMPTQ_API_HOSTS": hosts}).hosts) == expected


def test_the_deployment_keda_scales_sets_no_replica_count() -> None:
    """An apply would reset the count KEDA set: the Deployment it scales leaves replicas out."""
    target = _deployment(_scaled()["spec"]["scaleTargetRef"]["name"])
    assert "replicas" not in target["spec"]


def test_the_age_trigger_asks_for_more_workers_than_answer() -> None:
    """With AverageValue and threshold 1, the HPA asks for the query's value in replicas, and leaves
    the count alone while that is within 10 % of it: the age trigger asks for a share more than the
    workers that answer, at least one more, at every count up to the maximum; and only while their
    slots are nearly all in calls (of PROMPTQ_MAX_JOBS each), so a rate-limited backlog asks for none."""
    scaled = _scaled()
    _, age = scaled["spec"]["triggers"]
    query, slots = age["metadata"]["query"], int(_worker_env()["PROMPTQ_MAX_JOBS"])
    assert age["metadata"]["threshold"] == "1"
    workers = 'count(up{job="promptq-worker"} == 1)'
    found = re.search(rf"ceil\({re.escape(workers)} \* ([\d.]+)\)", query)
    assert found, query
    share = float(found.group(1))
    for n in range(1, scaled["spec"]["maxReplicaCount"] + 1):
        asked = math.ceil(n * share)
        assert asked >= n + 1 and asked / n > 1.1, f"{n} workers: asks for {asked}, which the HPA ignores"
    assert re.search(rf"sum\(promptq_in_flight\) >= [\d.]+ \* {slots} \* {re.escape(workers)}", query)
    assert "or on () vector(0)" in " ".join(query.split())


def test_workers_scale_down_slowly_without_keda_cooldown() -> None:
    """cooldownPeriod applies only to scaling to zero: with a minimum of one worker the HPA's own
    scale-down behaviour sets the pace."""
    spec = _scaled()["spec"]
    assert spec["minReplicaCount"] >= 1 and "cooldownPeriod" not in spec
    scale_down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert scale_down["stabilizationWindowSeconds"] >= 120 and scale_down["policies"]


def _kustomization() -> dict[str, Any]:
    return _k8s()["kustomization.yaml"][0]


def test_the_prometheus_address_is_set_once() -> None:
    """KEDA's triggers leave serverAddress out; the kustomization copies it from prometheus.yaml, a
    ConfigMap kustomize does not apply."""
    (carrier,) = _k8s()["prometheus.yaml"]
    assert carrier["kind"] == "ConfigMap"
    assert carrier["metadata"]["annotations"]["config.kubernetes.io/local-config"] == "true"
    assert carrier["data"]["serverAddress"].startswith("http")
    scaled = _scaled()
    assert all("serverAddress" not in t["metadata"] for t in scaled["spec"]["triggers"])
    (replacement,) = _kustomization()["replacements"]
    source = replacement["source"]
    assert source == {"kind": "ConfigMap", "name": carrier["metadata"]["name"], "fieldPath": "data.serverAddress"}
    (target,) = replacement["targets"]
    assert target["select"] == {"kind": "ScaledObject", "name": scaled["metadata"]["name"]}
    assert target["fieldPaths"] == ["spec.triggers.*.metadata.serverAddress"] and target["options"]["create"]


def test_the_images_are_ones_kustomize_names_and_tags() -> None:
    """Each container's image is a name the kustomization's images: replaces (`kustomize edit set
    image`), with a tag, the project's version, never latest; pulled only when the node lacks it."""
    images = {i["name"]: i for i in _kustomization()["images"]}
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name in ("promptq-worker", "promptq-api"):
        (container,) = _deployment(name)["spec"]["template"]["spec"]["containers"]
        assert container["image"] in images and container["imagePullPolicy"] == "IfNotPresent"
        assert str(images[container["image"]]["newTag"]) == version != "latest"


def test_kustomize_renders_the_kit_as_the_tests_read_it() -> None:
    """Where kubectl is installed: the kit renders (no network needed), the Prometheus address in
    every trigger, the carrier ConfigMap left out, the images tagged."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl here")
    done = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "deploy" / "k8s")], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    address = _k8s()["prometheus.yaml"][0]["data"]["serverAddress"]
    assert not [d for d in docs if d["kind"] == "ConfigMap"]
    (scaled,) = [d for d in docs if d["kind"] == "ScaledObject"]
    assert [t["metadata"]["serverAddress"] for t in scaled["spec"]["triggers"]] == [address, address]
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
    images = {c["image"] for pod in pods for c in pod["containers"]}
    (image,) = _kustomization()["images"]
    assert images == {f"{image['newName']}:{image['newTag']}"}


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
    assert checked >= 7  # two Deployments, a Service, two PodDisruptionBudgets, the Secret, the ConfigMap


def test_the_metrics_pages_name_each_metrics_labels() -> None:
    """docs/metrics.md's table and worker/metrics.py's docstring give each metric (a counter with
    ``_total``, a histogram by its own name) the labels the registry declares."""
    import worker.metrics

    declared = {
        m._name + ("_total" if m._type == "counter" else ""): set(m._labelnames)
        for m in vars(Metrics()).values()
        if isinstance(m, MetricWrapperBase)
    }
    rows = dict(re.findall(r"^\| `(promptq_\w+)` \|([^|]*)\|", (ROOT / "docs" / "metrics.md").read_text(), re.M))
    doc = worker.metrics.__doc__ or ""
    for name, labels in declared.items():
        assert set(re.findall(r"`(\w+)`", rows[name])) == labels, f"docs/metrics.md: {name}"
        found = re.search(rf"``{name}``(?: and ``\w+``)?(?:\s+\[([^\]]*)\])?", doc)
        assert found, f"worker/metrics.py's docstring leaves out {name}"
        assert set(re.findall(r"\w+", found.group(1) or "")) == labels, f"worker/metrics.py's docstring: {name}"
