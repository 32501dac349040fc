"""deploy/: the compose file validates with docker-compose (offline, no engine needed), the
Kubernetes manifests parse, and every ONEVEC_* variable they set is a real Settings field."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
SECRETS = {
    "QDRANT_API_KEY": "compose-test-qdrant-key",
    "ONEVEC_HTTP_INGEST_TOKEN": "compose-test-token",  # 16+ characters: shorter ones are refused
    "GRAFANA_ADMIN_PASSWORD": "compose-test-grafana",
}
SECRET_SETTINGS = {"ONEVEC_QDRANT_API_KEY", "ONEVEC_KAFKA_SASL_PASSWORD", "ONEVEC_HTTP_INGEST_TOKEN"}


def setting_names() -> set[str]:
    return {f"ONEVEC_{name.upper()}" for name in Settings.model_fields}


def compose_config(extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose not installed (deploy/system_packages.sh installs it)")
    env = {k: v for k, v in os.environ.items() if k not in SECRETS} | extra_env
    return subprocess.run(
        [binary, "-f", str(COMPOSE), "config"], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.fixture(scope="module")
def compose() -> dict:
    result = compose_config(SECRETS | {"ONEVEC_WORKERS": "3"})
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_validates_with_the_expected_services(compose) -> None:
    services = compose["services"]
    assert set(services) == {"kafka", "qdrant", "prometheus", "grafana", "worker", "replay"}
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert services["qdrant"]["image"].startswith("qdrant/qdrant:")
    assert services["worker"]["deploy"]["replicas"] == 3  # N workers from ONEVEC_WORKERS
    assert services["replay"]["profiles"] == ["replay"]
    assert services["replay"]["command"][0] == "replay"


def test_compose_worker_settings_are_real_and_secrets_come_from_the_environment(compose) -> None:
    env = compose["services"]["worker"]["environment"]
    onevec = {k for k in env if k.startswith("ONEVEC_")}
    assert onevec <= setting_names(), f"unknown settings: {sorted(onevec - setting_names())}"
    assert env["ONEVEC_QDRANT_API_KEY"] == SECRETS["QDRANT_API_KEY"]
    assert env["ONEVEC_HTTP_INGEST_TOKEN"] == SECRETS["ONEVEC_HTTP_INGEST_TOKEN"]
    Settings(**{k.removeprefix("ONEVEC_").lower(): v for k, v in env.items() if k in onevec})  # parses
    text = COMPOSE.read_text()
    assert not any(secret in text for secret in SECRETS.values())
    # A missing secret is an error, not an empty password.
    result = compose_config({})
    assert result.returncode != 0 and "QDRANT_API_KEY" in result.stderr


def test_compose_publishes_ports_on_loopback_only(compose) -> None:
    published = [
        (name, port) for name, service in compose["services"].items() for port in service.get("ports", [])
    ]
    assert published
    for name, port in published:
        host = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
        assert host == "127.0.0.1", f"{name} publishes {port} beyond loopback"
    assert "ports" not in compose["services"]["worker"]  # replicas are scraped inside the network


def test_compose_mounts_the_monitoring_files(compose) -> None:
    def sources(service: str) -> dict[str, str]:
        mounts = compose["services"][service]["volumes"]
        return {m.split(":")[1]: m.split(":")[0] for m in mounts if isinstance(m, str)}

    grafana, prometheus = sources("grafana"), sources("prometheus")
    assert grafana["/etc/grafana/provisioning"] == str(ROOT / "monitoring/grafana/provisioning")
    assert grafana["/var/lib/grafana/dashboards/onevec"] == str(ROOT / "monitoring/grafana/dashboards")
    # Grafana loads dashboards from where the provisioning file says they are mounted.
    providers = yaml.safe_load((ROOT / "monitoring/grafana/provisioning/dashboards/onevec.yml").read_text())
    assert {p["options"]["path"] for p in providers["providers"]} == {"/var/lib/grafana/dashboards/onevec"}
    datasources = yaml.safe_load(
        (ROOT / "monitoring/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"  # the compose service
    assert prometheus["/etc/prometheus/alerts.yml"] == str(ROOT / "monitoring/prometheus/alerts.yml")
    scrape = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    assert scrape["rule_files"] == ["/etc/prometheus/alerts.yml"]
    worker_port = compose["services"]["worker"]["environment"]["ONEVEC_WEB_PORT"]
    assert scrape["scrape_configs"][0]["dns_sd_configs"][0] == {
        "names": ["worker"],
        "type": "A",
        "port": int(worker_port),
        "refresh_interval": "30s",
    }
    missing = [
        p for p in (*grafana.values(), *prometheus.values()) if p.startswith("/") and not Path(p).exists()
    ]
    assert not missing, f"compose mounts files that do not exist: {missing}"


def test_compose_and_statefulset_default_to_one_learning_worker() -> None:
    """docs/operations.md: one learning worker per Qdrant collection today; more only on purpose."""
    result = compose_config(SECRETS)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["services"]["worker"]["deploy"]["replicas"] == 1
    workers = {d["kind"]: d for d in k8s_documents()}["StatefulSet"]
    assert workers["spec"]["replicas"] == 1
    section = "One learning worker per collection"
    assert f"### {section}" in (ROOT / "docs/operations.md").read_text()
    assert section in COMPOSE.read_text() and section in (DEPLOY / "k8s/statefulset.yaml").read_text()


def k8s_documents() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def containers(doc: dict) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"]


def test_k8s_manifests_parse_and_name_real_settings() -> None:
    docs = k8s_documents()
    kinds = {d["kind"]: d for d in docs}
    assert {"ConfigMap", "StatefulSet", "Service", "Job", "Kustomization"} <= set(kinds)
    config = kinds["ConfigMap"]["data"]
    assert set(config) <= setting_names(), sorted(set(config) - setting_names())
    assert not set(config) & SECRET_SETTINGS, "secrets belong in a Secret, not the ConfigMap"
    Settings(**{k.removeprefix("ONEVEC_").lower(): v for k, v in config.items()})  # values parse
    for doc in (kinds["StatefulSet"], kinds["Job"]):
        for container in containers(doc):
            assert container["envFrom"] == [
                {"configMapRef": {"name": kinds["ConfigMap"]["metadata"]["name"]}}
            ]
            for variable in container.get("env", []):
                assert variable["name"] in setting_names()
                # Secrets only by reference: no literal value for a secret setting.
                if variable["name"] in SECRET_SETTINGS:
                    assert "value" not in variable and "secretKeyRef" in variable["valueFrom"]
    resources = set(kinds["Kustomization"]["resources"])
    assert resources == {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}


def test_k8s_workers_keep_checkpoints_and_expose_metrics() -> None:
    kinds = {d["kind"]: d for d in k8s_documents()}
    workers, service = kinds["StatefulSet"], kinds["Service"]
    worker = containers(workers)[0]
    port = int(kinds["ConfigMap"]["data"]["ONEVEC_WEB_PORT"])
    assert worker["ports"] == [{"name": "http", "containerPort": port}]
    assert workers["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    data_dir = kinds["ConfigMap"]["data"]["ONEVEC_DATA_DIR"]
    assert {"name": "data", "mountPath": data_dir} in worker["volumeMounts"]
    assert worker["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert workers["spec"]["selector"]["matchLabels"].items() <= service["spec"]["selector"].items()
    assert service["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert service["spec"]["ports"][0]["port"] == port
    # The probed and scraped paths exist in the worker's HTTP API.
    routes = set(re.findall(r'@app\.page\("([^"]+)"\)', (ROOT / "streams/http_api.py").read_text()))
    assert {"/healthz", "/metrics"} <= routes


def test_k8s_network_policy_limits_who_reaches_the_workers() -> None:
    kinds = {d["kind"]: d for d in k8s_documents()}
    policy, workers = kinds["NetworkPolicy"], kinds["StatefulSet"]
    pod_labels = workers["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"], "an empty 'from' would admit every pod"
    assert all(peer.get("podSelector", {}).get("matchLabels") for peer in rule["from"])
    assert [port["port"] for port in rule["ports"]] == [containers(workers)[0]["ports"][0]["name"]]
    assert "networkpolicy.yaml" in kinds["Kustomization"]["resources"]


def test_dockerfile_installs_the_project_and_runs_as_non_root() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    pinned_torch = re.search(r'"torch==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pinned_torch and f"torch=={pinned_torch.group(1)}" in text
    assert re.search(r"^RUN pip install \.", text, re.MULTILINE)
    assert re.search(r"^USER onevec$", text, re.MULTILINE)
    assert 'ENTRYPOINT ["onevec"]' in text
