"""The deployment files agree with the code: probe and scrape paths are real routes, ports line up,
the container runs the console script, and alerts name metrics the app really exports."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import webtest
import yaml

from iot_config_core import open_store
from iot_config_server.app import create_app
from iot_config_server.cli import build_parser
from iot_config_server.settings import ENV_PREFIX, Settings

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"

#: Metrics that come from Prometheus itself or kube-state-metrics, not from the app.
EXTERNAL_METRICS = re.compile(r"^(up|kube_\w+)$")


def documents() -> Iterator[dict[str, Any]]:
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield doc


def the(kind: str) -> dict[str, Any]:
    found = [d for d in documents() if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container() -> dict[str, Any]:
    (result,) = the("Deployment")["spec"]["template"]["spec"]["containers"]
    assert isinstance(result, dict)
    return result


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, bytes]]:
    """GET answers of the real app on a temporary store, for the paths the deployment uses."""
    paths = probe_paths() | scrape_paths()
    store = open_store(str(tmp_path_factory.mktemp("store")), create=True)
    app = webtest.TestApp(create_app(store, Settings()))
    answers = {}
    for path in paths:
        response = app.get(path, expect_errors=True)
        answers[path] = (response.status_int, response.body)
    return answers


def probe_paths() -> set[str]:
    spec = container()
    return {spec[probe]["httpGet"]["path"] for probe in ("livenessProbe", "readinessProbe")}


def scrape_paths() -> set[str]:
    monitor = the("ServiceMonitor")
    paths = {endpoint["path"] for endpoint in monitor["spec"]["endpoints"]}
    plain = yaml.safe_load((DEPLOY / "prometheus" / "scrape-config.yaml").read_text())
    paths |= {job.get("metrics_path", "/metrics") for job in plain["scrape_configs"]}
    return paths


# -- paths ----------------------------------------------------------------------------------------


def test_probes_are_the_health_routes_and_answer_200(served: dict[str, tuple[int, bytes]]) -> None:
    spec = container()
    assert spec["livenessProbe"]["httpGet"]["path"] == "/api/health/live"
    assert spec["readinessProbe"]["httpGet"]["path"] == "/api/health/ready"
    for path in probe_paths():
        assert served[path][0] == 200, path


def test_scrape_paths_serve_prometheus_metrics(served: dict[str, tuple[int, bytes]]) -> None:
    for path in scrape_paths():
        status, body = served[path]
        assert status == 200, path
        assert b"# TYPE iot_config_" in body


def test_alerts_name_metrics_the_app_exports(served: dict[str, tuple[int, bytes]]) -> None:
    rules = [rule for group in the("PrometheusRule")["spec"]["groups"] for rule in group["rules"]]
    assert {r["alert"] for r in rules} >= {"IotConfigStoreErrors", "IotConfigNoReadyReplicas"}
    (path,) = scrape_paths()
    exported = set(re.findall(r"^# TYPE (\w+) ", served[path][1].decode(), re.MULTILINE))
    assert "iot_config_store_errors_total" in exported
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        # Identifiers followed by ( are functions; those followed by { [ or spaces are metrics.
        names = set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*(?=[{\[])", rule["expr"]))
        names |= set(re.findall(r"\b(iot_config_\w+)", rule["expr"]))
        assert names, rule["alert"]
        for name in names:
            if not EXTERNAL_METRICS.match(name):
                assert name in exported, f"{rule['alert']}: {name} is not exported by the app"


# -- ports, labels, volumes -----------------------------------------------------------------------


def test_ports_agree_between_deployment_service_probes_and_monitor() -> None:
    spec = container()
    (port,) = spec["ports"]
    names = {port["name"]: port["containerPort"]}
    for probe in ("livenessProbe", "readinessProbe"):
        target = spec[probe]["httpGet"]["port"]
        assert target in names or target in names.values(), probe
    service = the("Service")
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in names or service_port["targetPort"] in names.values()
    monitor = the("ServiceMonitor")
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] == service_port["name"]
    # The server inside listens where the container port says.
    args = build_parser().parse_args(spec["args"])
    assert args.command == "serve"
    assert args.host == "0.0.0.0"
    assert (args.port or Settings().port) == port["containerPort"]


def test_selectors_match_labels() -> None:
    deployment, service, monitor = the("Deployment"), the("Service"), the("ServiceMonitor")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )


def test_replicas_share_a_cephfs_read_write_many_volume() -> None:
    deployment, claim = the("Deployment"), the("PersistentVolumeClaim")
    assert deployment["spec"]["replicas"] == 2
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "ceph" in claim["spec"]["storageClassName"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    (store_volume,) = [
        name
        for name, v in volumes.items()
        if v.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]
    ]
    env = {e["name"]: e["value"] for e in container()["env"]}
    store_path = env["IOT_CONFIG_STORE"]
    assert store_path == mounts[store_volume] or store_path.startswith(mounts[store_volume] + "/")


def test_container_is_locked_down_with_resources() -> None:
    pod = the("Deployment")["spec"]["template"]["spec"]
    spec = container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    security = spec["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= spec["resources"][kind].keys()
    # A read-only root still needs a writable /tmp for the interpreter and libraries.
    assert "/tmp" in {m["mountPath"] for m in spec["volumeMounts"]}


def test_container_environment_is_valid_settings() -> None:
    env = {e["name"]: e["value"] for e in container()["env"]}
    known = {ENV_PREFIX + field.name.upper() for field in attrs.fields(Settings)}
    known.add(ENV_PREFIX + "STORE")  # store_url is read from IOT_CONFIG_STORE
    assert set(env) <= known, set(env) - known
    settings = Settings.from_env(env)
    assert settings.store_url == env["IOT_CONFIG_STORE"]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    manifests = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests
    (image,) = kustomization["images"]
    assert image["name"] == container()["image"]


# -- Dockerfile -----------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs with continuation lines joined and comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    logical = re.sub(r"\\\n", " ", text)
    result = []
    for line in logical.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), "use the exec (JSON) form so signals reach the server"
    return [str(v) for v in value]


def test_dockerfile_runs_the_console_script_as_non_root_in_a_slim_multi_stage_image() -> None:
    steps = dockerfile_instructions()
    stages = [i for i, (word, _) in enumerate(steps) if word == "FROM"]
    assert len(stages) >= 2, "multi-stage: build tools stay out of the final image"
    final = steps[stages[-1] :]
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    base = final[0][1].split()[0]
    assert "slim" in (args.get(base.strip("${}"), base))
    for word, arguments in final:
        if word == "RUN":
            assert not re.search(r"\b(apt-get|gcc|pip)\b", arguments), arguments

    (entrypoint,) = [exec_form(a) for w, a in final if w == "ENTRYPOINT"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["iot-config"]
    assert scripts["iot-config"] == "iot_config_server.cli:main"

    (cmd,) = [exec_form(a) for w, a in final if w == "CMD"]
    parsed = build_parser().parse_args(cmd)
    assert parsed.command == "serve"
    assert parsed.host == "0.0.0.0"

    (user,) = [a for w, a in final if w == "USER"]
    assert user.split(":")[0] not in {"0", "root"}
    env = dict(
        pair.split("=", 1) for w, a in final if w == "ENV" for pair in shlex.split(a) if "=" in pair
    )
    volumes = [v for w, a in final if w == "VOLUME" for v in exec_form(a)]
    assert env["IOT_CONFIG_STORE"] in volumes
    (expose,) = [a for w, a in final if w == "EXPOSE"]
    assert int(expose) == int(env.get("IOT_CONFIG_PORT", Settings().port))
    healthcheck = " ".join(a for w, a in final if w == "HEALTHCHECK")
    assert f"127.0.0.1:{expose}/api/health/live" in healthcheck
