"""Prometheus metrics of the gateway, plus job outcomes and queue depths read from Redis.

Job outcomes are counted by the workers into Redis (``JobStore._count_outcome``), so one scrape
of the gateway shows every worker's jobs, whatever the number of worker processes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.capabilities import JOB_QUEUES
from services.common.jobs import DURATION_BUCKETS, JobStore
from services.common.webhooks import metric_families as webhook_metric_families

registry = CollectorRegistry()
REQUESTS = Counter(
    "bodyserve_http_requests_total",
    "HTTP requests by route, method and status code.",
    ["route", "method", "status"],
    registry=registry,
)
LATENCY = Histogram(
    "bodyserve_http_request_duration_seconds",
    "HTTP request latency by route.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=registry,
)
JOBS_SUBMITTED = Counter(
    "bodyserve_jobs_submitted_total",
    "Jobs accepted, by capability.",
    ["capability"],
    registry=registry,
)


# Methods counted under their own name; any other (a client's invention) is "other", so that
# clients cannot grow the label set.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetrics:
    """Pure ASGI middleware: counts and times every HTTP request by route template.

    Pure ASGI rather than ``@app.middleware("http")``: that one runs the app in a separate
    task and streams every response through a memory channel, on every request. The route
    template (``/v1/jobs/{job_id}``, not the id) keeps the label set small; requests that match
    no route count as ``unmatched``. Outermost, so that refusals by the other middlewares (413)
    are counted too.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            # The router leaves the matched route in the (shared) scope.
            path = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in _METHODS else "other"
            LATENCY.labels(path, method).observe(time.perf_counter() - started)
            REQUESTS.labels(path, method, str(status)).inc()


class RedisJobCollector(Collector):
    """Job outcomes, durations and queue depths, read from Redis at scrape time."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterable:
        try:
            raw = self.store.outcome_metrics()
            depths = {q: self.store.redis.llen(q) for q in JOB_QUEUES}
        except redis.RedisError:
            return
        jobs = CounterMetricFamily(
            "bodyserve_jobs",
            "Finished jobs by capability and outcome.",
            labels=["capability", "outcome"],
        )
        durations = HistogramMetricFamily(
            "bodyserve_job_duration_seconds",
            "Job run time by capability and outcome.",
            labels=["capability", "outcome"],
        )
        labels_seen = sorted({tuple(k.split("|")[1:3]) for k in raw if k.startswith("count|")})
        for capability, outcome in labels_seen:
            label = f"{capability}|{outcome}"
            count = float(raw.get(f"count|{label}", 0))
            jobs.add_metric([capability, outcome], count)
            buckets = [
                (str(b), float(raw.get(f"bucket|{label}|{b}", 0))) for b in DURATION_BUCKETS
            ] + [("+Inf", count)]
            durations.add_metric(
                [capability, outcome], buckets, sum_value=float(raw.get(f"sum|{label}", 0))
            )
        yield jobs
        yield durations
        depth = GaugeMetricFamily(
            "bodyserve_queue_depth", "Jobs waiting in each queue.", labels=["queue"]
        )
        for queue, value in depths.items():
            depth.add_metric([queue], float(value))
        yield depth
        try:  # webhook deliveries by outcome, counted by the workers (services.common.webhooks)
            webhooks = webhook_metric_families(self.store.redis)
        except redis.RedisError:
            return
        yield from webhooks
