"""The capability table (services/capabilities.py) against what reads it: the workers' Celery app
(tasks, queues, routes, time limits), the gateway (routes, no worker code), the broker client
and the model repository."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from services.capabilities import (
    ALL_QUEUES,
    CAPABILITIES,
    HELPER_TASKS,
    JOB_QUEUES,
    JOB_TIME_LIMITS,
    LEASED_TASKS,
    TASK_MODULES,
    TASK_ROUTES,
    TRITON_MODELS,
    WEBHOOK_TASK,
    WEBHOOKS_QUEUE,
)
from shared.settings import REPO_ROOT, Settings, get_settings


@pytest.fixture(scope="module")
def worker_app() -> Celery:
    """The workers' app with every task module imported, as a worker starts it."""
    from services.workers.celery_app import app

    app.loader.import_default_modules()
    return app


def _queue_of(app: Celery, task: str) -> str:
    return str(app.amqp.router.route({}, task)["queue"].name)


def test_every_task_of_the_table_is_registered_and_routed(worker_app: Celery) -> None:
    expected = {c.task: c.queue for c in CAPABILITIES.values()}
    expected |= {h.name: h.queue for h in HELPER_TASKS}
    expected[WEBHOOK_TASK] = WEBHOOKS_QUEUE
    assert dict(TASK_ROUTES) == {name: {"queue": queue} for name, queue in expected.items()}
    ours = {name for name in worker_app.tasks if name.startswith("bodyserve.")}
    assert ours == set(expected), "tasks of the workers vs the table"
    for name, queue in expected.items():
        assert _queue_of(worker_app, name) == queue, name
    assert {q.name for q in worker_app.conf.task_queues} == set(ALL_QUEUES)
    # The task modules, then the worker process's start and stop hooks.
    assert list(worker_app.conf.include) == [*TASK_MODULES, "services.workers.process"]


def test_job_tasks_and_leases(worker_app: Celery) -> None:
    from services.workers.lifecycle import JOB_TASK_NAMES

    tasks = {c.task for c in CAPABILITIES.values()}
    # run_job's tasks: every capability's but the dataset planner, which runs no job body.
    assert tasks - JOB_TASK_NAMES == {CAPABILITIES["dataset_generation"].task}
    assert {h.name for h in HELPER_TASKS} | tasks == LEASED_TASKS
    assert WEBHOOK_TASK not in LEASED_TASKS  # a delivery holds no lease: it is not restored


def test_time_limits_come_from_the_table(worker_app: Celery) -> None:
    settings = get_settings()
    default = JOB_TIME_LIMITS.seconds(settings)
    assert (worker_app.conf.task_soft_time_limit, worker_app.conf.task_time_limit) == default
    tasks = [(c.task, c.time_limits) for c in CAPABILITIES.values()]
    tasks += [(h.name, h.time_limits) for h in HELPER_TASKS]
    for name, limits in tasks:
        task = worker_app.tasks[name]
        # A task without limits of its own gets the app's (Celery's from_config).
        assert (task.soft_time_limit, task.time_limit) == limits.seconds(settings), name
    image = CAPABILITIES["image_generation"].time_limits.seconds(settings)
    assert image == (settings.image_job_time_limit_s, settings.image_job_time_limit_s + 60)


def test_the_table_names_settings_and_models_that_exist() -> None:
    for capability in CAPABILITIES.values():
        limits = [capability.time_limits, *(h.time_limits for h in capability.helper_tasks)]
        for time_limits in limits:
            names = [time_limits.soft_setting, time_limits.hard_setting]
            assert all(n is None or n in Settings.model_fields for n in names), capability.name
        unknown = [n for n in capability.request_limits if n not in Settings.model_fields]
        assert unknown == [], capability.name
        assert capability.triton_models, f"{capability.name}: which Triton models?"
        assert capability.queue in JOB_QUEUES
    for model in TRITON_MODELS:
        assert (REPO_ROOT / "model_repository" / model / "config.pbtxt").is_file(), model
    assert WEBHOOKS_QUEUE not in JOB_QUEUES


def test_every_route_of_the_table_submits_its_jobs() -> None:
    from services.gateway.app import app

    paths = app.openapi()["paths"]
    posts = {
        path
        for path, operations in paths.items()
        if path.startswith("/v1") and "post" in operations
    }
    routes = [path for c in CAPABILITIES.values() for path in c.routes]
    assert len(routes) == len(set(routes)), "a route of two capabilities"
    assert set(routes) == posts, "the gateway's POST routes vs the table"
    assert "get" in paths["/v1/capabilities"]


def _modules_after_import(module: str) -> list[str]:
    """The ``services.*`` modules a fresh interpreter holds after importing ``module``."""
    code = (
        f"import json, sys, {module}; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('services'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout.splitlines()[-1]))


def test_the_gateway_imports_no_worker_code() -> None:
    loaded = _modules_after_import("services.gateway.app")
    assert [m for m in loaded if m.startswith("services.workers")] == []


def test_the_table_is_a_leaf() -> None:
    assert _modules_after_import("services.capabilities") == ["services", "services.capabilities"]


@pytest.fixture()
def broker_on(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """The broker client on the tests' Redis (a database of its own), and that Redis."""
    from services.common import broker

    url = redis_url.rsplit("/", 1)[0] + "/12"
    monkeypatch.setenv("BODYSERVE_REDIS_URL", url)
    get_settings.cache_clear()
    broker.client.cache_clear()
    client = redis.Redis.from_url(url)
    try:
        yield client
    finally:
        client.flushdb()
        client.close()
        broker.client.cache_clear()
        get_settings.cache_clear()


def test_the_broker_client_sends_each_task_to_its_queue(broker_on: redis.Redis) -> None:
    from services.common import broker

    for name, route in TASK_ROUTES.items():
        broker.send_task(name, ["job-1"], f"id-{name}")
        (raw,) = broker_on.lrange(route["queue"], 0, 0)  # LPUSH: the newest first
        message = json.loads(raw)
        assert message["headers"]["task"] == name
        assert message["headers"]["id"] == f"id-{name}"
        assert message["content-type"] == "application/json"
        assert json.loads(_body(message))[0] == ["job-1"]
    counts = {q: broker_on.llen(q) for q in ALL_QUEUES}
    expected = {q: sum(r["queue"] == q for r in TASK_ROUTES.values()) for q in ALL_QUEUES}
    assert counts == expected


def _body(message: dict[str, object]) -> str:
    """A kombu message's body (base64 in Redis) as JSON text."""
    import base64

    return base64.b64decode(str(message["body"])).decode()
