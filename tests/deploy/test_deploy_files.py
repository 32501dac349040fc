"""deploy/: the compose file validates with docker-compose (offline, no engine needed), the
Kubernetes manifests parse, every ONEVEC_* variable they set is a real Settings field, and both
run the split layout: ingest workers (ONEVEC_ROLE=ingest, scaled with the partitions) and exactly
one learn worker (ONEVEC_ROLE=learn, checkpoints on a volume), both scraped by Prometheus."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import typing
from pathlib import Path

import pytest
import yaml

from onevec.streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
SECRETS = {
    "QDRANT_API_KEY": "compose-test-qdrant-key",
    "ONEVEC_HTTP_INGEST_TOKEN": "compose-test-token",  # 16+ characters: shorter ones are refused
    "GRAFANA_ADMIN_PASSWORD": "compose-test-grafana",
}
SECRET_SETTINGS = {"ONEVEC_QDRANT_API_KEY", "ONEVEC_KAFKA_SASL_PASSWORD", "ONEVEC_HTTP_INGEST_TOKEN"}
ROLES = set(typing.get_args(Settings.model_fields["role"].annotation))  # all, ingest, learn
COMPOSE_WORKERS = {"ingest": "ingest", "learner": "learn"}  # compose service -> its ONEVEC_ROLE
ONE_LEARNER = "One learning worker per collection"  # the docs/operations.md section


def setting_names() -> set[str]:
    return {f"ONEVEC_{name.upper()}" for name in Settings.model_fields}


def compose_config(extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose not installed (deploy/system_packages.sh installs it)")
    # Only what the test sets: an ONEVEC_* variable of the caller (e.g. ONEVEC_INGEST_WORKERS) would
    # change what the file interpolates.
    env = {k: v for k, v in os.environ.items() if k not in SECRETS and not k.startswith("ONEVEC_")}
    env |= extra_env
    return subprocess.run(
        [binary, "-f", str(COMPOSE), "config"], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.fixture(scope="module")
def compose() -> dict:
    result = compose_config(SECRETS | {"ONEVEC_INGEST_WORKERS": "3"})
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def worker_settings(env: dict[str, str]) -> Settings:
    """The Settings a container with this environment would load (its ONEVEC_* variables)."""
    return Settings(
        **{k.removeprefix("ONEVEC_").lower(): v for k, v in env.items() if k.startswith("ONEVEC_")}
    )


def test_compose_validates_with_the_expected_services(compose) -> None:
    services = compose["services"]
    assert set(services) == {"kafka", "qdrant", "prometheus", "grafana", "ingest", "learner", "replay"}
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert services["qdrant"]["image"].startswith("qdrant/qdrant:")
    roles = {name: s["environment"].get("ONEVEC_ROLE") for name, s in services.items() if "environment" in s}
    assert {name: role for name, role in roles.items() if role} == COMPOSE_WORKERS
    assert services["ingest"]["deploy"]["replicas"] == 3  # N ingest workers from ONEVEC_INGEST_WORKERS
    assert services["learner"]["deploy"]["replicas"] == 1  # whatever ONEVEC_INGEST_WORKERS says
    assert services["replay"]["profiles"] == ["replay"]
    assert services["replay"]["command"][0] == "replay"
    # The ingest workers need no Qdrant; the learner waits for it.
    assert set(services["ingest"]["depends_on"]) == {"kafka"}
    assert set(services["learner"]["depends_on"]) == {"kafka", "qdrant"}


def test_compose_worker_settings_are_real_and_secrets_come_from_the_environment(compose) -> None:
    services = compose["services"]
    for name in (*COMPOSE_WORKERS, "replay"):
        env = services[name]["environment"]
        onevec = {k for k in env if k.startswith("ONEVEC_")}
        assert onevec <= setting_names(), f"{name}: unknown settings {sorted(onevec - setting_names())}"
        settings = worker_settings(env)  # parses
        assert not settings.embedded  # a split role refuses the embedded broker
    ingest = worker_settings(services["ingest"]["environment"])
    learner = worker_settings(services["learner"]["environment"])
    assert (ingest.role, ingest.group_id, ingest.runs_learner) == ("ingest", "onevec", False)
    assert (learner.role, learner.group_id, learner.runs_sessions) == ("learn", "onevec-learn", False)
    assert learner.qdrant_api_key.get_secret_value() == SECRETS["QDRANT_API_KEY"]
    for settings in (ingest, learner):
        assert settings.http_ingest_token.get_secret_value() == SECRETS["ONEVEC_HTTP_INGEST_TOKEN"]
    # Each service gets only the secrets it uses.
    assert "ONEVEC_QDRANT_API_KEY" not in services["ingest"]["environment"]
    assert not SECRET_SETTINGS & set(services["replay"]["environment"])
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
    for name in COMPOSE_WORKERS:
        assert "ports" not in compose["services"][name]  # replicas are scraped inside the network


def test_compose_learner_keeps_checkpoints_on_its_own_volume(compose) -> None:
    services = compose["services"]

    def mounts(service: str) -> dict[str, str]:
        return {m.split(":")[1]: m.split(":")[0] for m in services[service].get("volumes", []) if ":" in m}

    data_dir = services["learner"]["environment"]["ONEVEC_DATA_DIR"]
    volume = mounts("learner")[data_dir]
    assert volume in compose["volumes"], "a named volume: it outlives the container"
    others = [name for name in services if name != "learner" and volume in mounts(name).values()]
    assert not others, f"{others} share the learner's checkpoint volume"
    assert services["learner"]["stop_grace_period"] == "60s"  # drain the sink, write a checkpoint


class HealthAnswers(http.server.BaseHTTPRequestHandler):
    """Answers the statuses queued in ``statuses`` and records the paths asked."""

    statuses: typing.ClassVar[list[int]] = []
    paths: typing.ClassVar[list[str]] = []

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
        self.paths.append(self.path)
        self.send_response(self.statuses.pop(0))
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the hook's signature
        pass


def test_compose_workers_are_healthy_only_when_ready(compose) -> None:
    """Each worker service's healthcheck, run as the container would (python, ONEVEC_WEB_PORT from
    its environment), fails while the worker answers /healthz?ready 503 and passes on 200."""
    server = http.server.HTTPServer(("127.0.0.1", 0), HealthAnswers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for name in COMPOSE_WORKERS:
            check = compose["services"][name]["healthcheck"]
            assert check["test"][:2] == ["CMD", "python"]
            env = os.environ | {"ONEVEC_WEB_PORT": str(server.server_address[1])}
            HealthAnswers.statuses[:] = [503, 200]
            HealthAnswers.paths.clear()
            codes = [
                subprocess.run(
                    [sys.executable, *check["test"][2:]], env=env, capture_output=True, timeout=30
                ).returncode
                for _ in range(2)
            ]
            assert codes[0] != 0 and codes[1] == 0, (name, codes)
            assert HealthAnswers.paths == ["/healthz?ready"] * 2
            assert compose["services"][name]["environment"]["ONEVEC_WEB_PORT"]  # what the check reads
    finally:
        server.shutdown()
        server.server_close()


def relabel(rules: list[dict], labels: dict[str, str]) -> dict[str, str]:
    """Prometheus' 'replace' relabelling (the default action): regexes match the whole value."""
    labels = dict(labels)
    for rule in rules:
        assert rule.get("action", "replace") == "replace"
        value = rule.get("separator", ";").join(labels.get(s, "") for s in rule.get("source_labels", []))
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if match:
            labels[rule["target_label"]] = match.expand(re.sub(r"\$(\d)", r"\\\1", rule["replacement"]))
    return labels


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
    missing = [
        p for p in (*grafana.values(), *prometheus.values()) if p.startswith("/") and not Path(p).exists()
    ]
    assert not missing, f"compose mounts files that do not exist: {missing}"


def test_prometheus_scrapes_both_roles_under_one_job(compose) -> None:
    scrape = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    assert scrape["rule_files"] == ["/etc/prometheus/alerts.yml"]
    (job,) = [j for j in scrape["scrape_configs"] if "dns_sd_configs" in j]
    # The alert rules select the workers by this job name.
    assert job["job_name"] == "onevec"
    assert 'job="onevec"' in (ROOT / "monitoring/prometheus/alerts.yml").read_text()
    (discovery,) = job["dns_sd_configs"]
    assert set(discovery["names"]) == set(COMPOSE_WORKERS)  # every replica of both worker services
    assert (discovery["type"], discovery["refresh_interval"]) == ("A", "30s")
    for name in COMPOSE_WORKERS:
        env = compose["services"][name]["environment"]
        assert discovery["port"] == int(env["ONEVEC_WEB_PORT"])
        # Each target is labelled with the role of the service it was found under.
        labels = relabel(job["relabel_configs"], {"__meta_dns_name": name})
        assert labels["role"] == env["ONEVEC_ROLE"]
    assert "role" not in relabel(job["relabel_configs"], {"__meta_dns_name": "grafana"})


def test_prometheus_config_is_valid() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (deploy/system_packages.sh installs prometheus)")
    config = DEPLOY / "prometheus/prometheus.yml"
    # --syntax-only: the rule file path is where compose mounts it, not in this tree.
    result = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_and_k8s_run_exactly_one_learning_worker() -> None:
    """docs/operations.md: one learning worker per Qdrant collection; ingest scales apart."""
    result = compose_config(SECRETS)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert services["ingest"]["deploy"]["replicas"] == 1
    assert services["learner"]["deploy"]["replicas"] == 1
    assert services["ingest"]["deploy"]["replicas"] <= int(
        services["ingest"]["environment"]["ONEVEC_PARTITIONS"]
    )
    learn = workload("learn")
    assert learn["kind"] == "StatefulSet" and learn["spec"]["replicas"] == 1
    assert f"### {ONE_LEARNER}" in (ROOT / "docs/operations.md").read_text()
    assert (
        ONE_LEARNER in COMPOSE.read_text()
        and ONE_LEARNER in (DEPLOY / "k8s/learn-statefulset.yaml").read_text()
    )


def test_operations_guide_describes_every_role() -> None:
    text = (ROOT / "docs/operations.md").read_text()
    assert "## Worker roles" in text
    section = text.split("## Worker roles", 1)[1].split("\n## ", 1)[0]
    described = set(re.findall(r"^\| `(\w+)`[^|]*\|", section, re.MULTILINE))
    assert described == ROLES, f"roles in the table {sorted(described)}, in Settings {sorted(ROLES)}"


def k8s_documents() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def k8s_kinds() -> dict[str, list[dict]]:
    kinds: dict[str, list[dict]] = {}
    for doc in k8s_documents():
        kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


def containers(doc: dict) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"]


def env_value(container: dict, name: str) -> str | None:
    return next((v.get("value") for v in container.get("env", []) if v["name"] == name), None)


def workload(role: str) -> dict:
    """The one Deployment or StatefulSet whose worker runs ONEVEC_ROLE=role."""
    kinds = k8s_kinds()
    (doc,) = [
        d
        for d in kinds.get("Deployment", []) + kinds.get("StatefulSet", [])
        if env_value(containers(d)[0], "ONEVEC_ROLE") == role
    ]
    return doc


def pod_labels(doc: dict) -> dict[str, str]:
    return doc["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against a pod's labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True


def serves(service: dict, doc: dict) -> bool:
    """Whether a Service routes to the pods of a workload (a Service's selector is plain labels)."""
    return selects({"matchLabels": service["spec"]["selector"]}, pod_labels(doc))


def test_k8s_manifests_parse_and_name_real_settings() -> None:
    kinds = k8s_kinds()
    assert {
        "ConfigMap",
        "Deployment",
        "StatefulSet",
        "Service",
        "Job",
        "NetworkPolicy",
        "Kustomization",
    } <= set(kinds)
    (config_map,) = kinds["ConfigMap"]
    config = config_map["data"]
    assert set(config) <= setting_names(), sorted(set(config) - setting_names())
    assert not set(config) & SECRET_SETTINGS, "secrets belong in a Secret, not the ConfigMap"
    assert "ONEVEC_ROLE" not in config, "each workload sets its own role"
    Settings(**{k.removeprefix("ONEVEC_").lower(): v for k, v in config.items()})  # values parse
    for doc in kinds["Deployment"] + kinds["StatefulSet"] + kinds["Job"]:
        for container in containers(doc):
            assert container["envFrom"] == [{"configMapRef": {"name": config_map["metadata"]["name"]}}]
            for variable in container.get("env", []):
                assert variable["name"] in setting_names()
                # Secrets only by reference: no literal value for a secret setting.
                if variable["name"] in SECRET_SETTINGS:
                    assert "value" not in variable and "secretKeyRef" in variable["valueFrom"]
    (kustomization,) = kinds["Kustomization"]
    resources = set(kustomization["resources"])
    assert resources == {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}


def test_k8s_runs_each_role_in_its_own_workload() -> None:
    kinds = k8s_kinds()
    config = kinds["ConfigMap"][0]["data"]
    workers = kinds["Deployment"] + kinds["StatefulSet"]
    roles = sorted(env_value(containers(d)[0], "ONEVEC_ROLE") for d in workers)
    assert roles == ["ingest", "learn"], "one workload per role, no 'all' worker beside them"
    ingest, learn = workload("ingest"), workload("learn")
    # Ingest scales with the clicks partitions; the learner is one pod (one model per collection).
    assert ingest["kind"] == "Deployment"
    assert 1 <= ingest["spec"]["replicas"] <= int(config["ONEVEC_PARTITIONS"])
    assert learn["kind"] == "StatefulSet" and learn["spec"]["replicas"] == 1
    for doc, role in ((ingest, "ingest"), (learn, "learn")):
        env = {v["name"]: v["value"] for v in containers(doc)[0]["env"] if "value" in v}
        settings = Settings(**{k.removeprefix("ONEVEC_").lower(): v for k, v in (config | env).items()})
        assert settings.role == role and not settings.embedded
    # Only the learner talks to Qdrant, so only it gets the Qdrant key.
    secrets = {
        role: {v["name"] for v in containers(workload(role))[0]["env"] if "valueFrom" in v}
        for role in ("ingest", "learn")
    }
    assert "ONEVEC_QDRANT_API_KEY" in secrets["learn"] and "ONEVEC_QDRANT_API_KEY" not in secrets["ingest"]
    # Different labels, so Services and selectors can tell the roles apart.
    assert pod_labels(ingest) != pod_labels(learn)
    assert not selects(ingest["spec"]["selector"], pod_labels(learn))
    assert not selects(learn["spec"]["selector"], pod_labels(ingest))


def test_k8s_learn_worker_keeps_checkpoints_and_ingest_needs_no_volume() -> None:
    data_dir = k8s_kinds()["ConfigMap"][0]["data"]["ONEVEC_DATA_DIR"]
    learn, ingest = workload("learn"), workload("ingest")
    learner = containers(learn)[0]
    assert learn["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert {"name": "data", "mountPath": data_dir} in learner["volumeMounts"]
    assert learn["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60
    # The root file system is read-only: the ingest worker's DATA_DIR is a scratch volume.
    worker = containers(ingest)[0]
    assert worker["securityContext"]["readOnlyRootFilesystem"] is True
    (mount,) = [m for m in worker["volumeMounts"] if m["mountPath"] == data_dir]
    volumes = {v["name"]: v for v in ingest["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mount["name"]]
    assert "volumeClaimTemplates" not in ingest["spec"]


def test_k8s_services_route_each_role_and_are_scraped() -> None:
    kinds = k8s_kinds()
    port = int(kinds["ConfigMap"][0]["data"]["ONEVEC_WEB_PORT"])
    services = kinds["Service"]
    for role, other in (("ingest", "learn"), ("learn", "ingest")):
        doc = workload(role)
        worker = containers(doc)[0]
        assert worker["ports"] == [{"name": "http", "containerPort": port}]
        # Ready once every part the worker runs is (503 until then); alive while it serves HTTP.
        assert worker["readinessProbe"]["httpGet"]["path"] == "/healthz?ready"
        assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
        # Exactly one Service reaches this role's pods, and none of the other role's.
        (service,) = [s for s in services if serves(s, doc)]
        assert not serves(service, workload(other))
        annotations = service["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        assert int(annotations["prometheus.io/port"]) == port
        assert service["spec"]["ports"][0]["port"] == port
        assert service["spec"]["ports"][0]["targetPort"] == worker["ports"][0]["name"]
        if doc["kind"] == "StatefulSet":
            assert doc["spec"]["serviceName"] == service["metadata"]["name"]
            assert service["spec"]["clusterIP"] == "None"  # a StatefulSet's governing Service is headless
    # The probed and scraped paths exist in the worker's HTTP API.
    routes = set(re.findall(r'@app\.page\("([^"]+)"\)', (ROOT / "streams/http_api.py").read_text()))
    assert {"/healthz", "/metrics"} <= routes


def test_k8s_network_policy_limits_who_reaches_the_workers() -> None:
    kinds = k8s_kinds()
    (policy,) = kinds["NetworkPolicy"]
    selector = policy["spec"]["podSelector"]
    for role in ("ingest", "learn"):
        doc = workload(role)
        assert selects(selector, pod_labels(doc)), f"the policy leaves the {role} pods open"
        assert [p["port"] for p in policy["spec"]["ingress"][0]["ports"]] == [
            containers(doc)[0]["ports"][0]["name"]
        ]
    assert not selects(selector, pod_labels(kinds["Job"][0])), "the replay job serves nothing"
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"], "an empty 'from' would admit every pod"
    assert all(peer.get("podSelector", {}).get("matchLabels") for peer in rule["from"])
    assert "networkpolicy.yaml" in kinds["Kustomization"][0]["resources"]


def test_dockerfile_installs_the_project_and_runs_as_non_root() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    pinned_torch = re.search(r'"torch==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pinned_torch and f"torch=={pinned_torch.group(1)}" in text
    assert re.search(r"^RUN pip install \.", text, re.MULTILINE)
    assert re.search(r"^USER onevec$", text, re.MULTILINE)
    assert 'ENTRYPOINT ["onevec"]' in text
