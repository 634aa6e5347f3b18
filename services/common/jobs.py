"""One job store for every capability: status, progress, result and outcome metrics in Redis.

Keys (``bodyserve:`` prefix):

- ``job:<id>``: hash with id, capability, owner (the API key id that submitted it; records from
  before keys read as ``open``), status, progress, message, error, created/started/finished
  timestamps, attempts, worker; expires ``result_ttl_s`` after the job ends.
- ``job:<id>:result``: the JSON result, same expiry.
- ``job:<id>:lease``: held by the worker running the job, refreshed by a heartbeat (which takes
  it back after a Redis outage let it lapse); a job whose lease lapsed while its message is
  still unacknowledged belongs to a dead worker (see ``services.workers.recovery``).
- ``job:<id>:runs``: hash, one field per run (the worker's run id) with when it started, when
  it ended and how (``succeeded``, ``retry``, a lost worker leaves no end): the record that
  tells a retry or a redelivery after a crash from a job run twice. Same expiry as the job.
- ``owner:<owner>:active``: set of the owner's jobs that have not ended (its concurrent-job
  quota): added to by ``create``, removed from by ``finish``, the one place where jobs end.
- ``metrics:jobs``: counters ``<capability>|<outcome>`` and duration sums/buckets, read by the
  gateway's /metrics so one scrape shows every worker's outcomes.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

PREFIX = "bodyserve:"
DURATION_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
LEASE_TTL_S = 10
# A dataset job's chunk bookkeeping (services/workers/tasks/datasets.py): the chunks made, and
# the claim of the chunk that sends the finish.
CHUNKS_DONE = "chunks_done"
FINISHING = "finishing"
# Every key a job may have besides its record (``job:<id>``): deleting a job deletes them all.
JOB_KEY_SUFFIXES = ("result", "done", "runs", "lease", CHUNKS_DONE, FINISHING)
# What a deleted job leaves, for as long as an idempotency key may still name it: so that a
# replay of its request knows the job is gone (and submits anew) rather than still coming.
DELETED = "deleted"
HEARTBEAT_S = 3.0
# Backoff of a client that rides out Redis outages: 0.2, 0.4, 0.8, 1.6, then 2 s per retry.
OUTAGE_BACKOFF_BASE_S = 0.1
OUTAGE_BACKOFF_CAP_S = 2.0
# The owner of every job in open mode, and of records written before jobs had owners.
OPEN_OWNER = "open"

# Create a job unless its owner already has ``max_active`` jobs that have not ended (0: no
# limit), in one step, so that concurrent submissions cannot both take the last slot. Members
# whose record has ended or is gone (deleted by hand, a restored backup) are dropped first, so
# a lost ``finish`` cannot hold a slot for ever.
# KEYS: job hash, owner's active set. ARGV: max_active, job id, key prefix, terminal statuses
# (3), then the record's field/value pairs. Returns -1 when created, else the active count.
_CREATE_SCRIPT = """
local max_active = tonumber(ARGV[1])
if max_active > 0 then
  local terminal = {[ARGV[4]] = true, [ARGV[5]] = true, [ARGV[6]] = true}
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    local status = redis.call('HGET', ARGV[3] .. 'job:' .. id, 'status')
    if (not status) or terminal[status] then
      redis.call('SREM', KEYS[2], id)
    end
  end
  local active = redis.call('SCARD', KEYS[2])
  if active >= max_active then
    return active
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
redis.call('SADD', KEYS[2], ARGV[2])
return -1
"""

# Start a run of a job that has not ended, once per run id: a client that resends the script
# after a dropped connection does not count the attempt twice.
# KEYS: job hash, runs hash. ARGV: run id, now, the run's JSON, terminal statuses (3).
# Returns the attempts so far; -1 when the job has ended, -2 when it has no record.
_START_SCRIPT = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return -2
end
if status == ARGV[4] or status == ARGV[5] or status == ARGV[6] then
  return -1
end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[2], 'worker', ARGV[1],
           'message', 'running')
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local ttl = redis.call('TTL', KEYS[1])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[2], ttl)
end
return redis.call('HINCRBY', KEYS[1], 'attempts', 1)
"""

# Keep the lease of ``owner``, or take it back when it lapsed (a Redis outage longer than the
# lease). KEYS: lease. ARGV: owner, ttl. Returns 1 when ``owner`` holds it, 0 when another does.
_REFRESH_LEASE_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
return 1
"""

# Put a job back to queued with a reason, unless it has ended (or has no record).
# KEYS: job hash. ARGV: reason, terminal statuses (3). Returns 1 when updated.
_REQUEUE_SCRIPT = """
local status = redis.call('HGET', KEYS[1], 'status')
if (not status) or status == ARGV[2] or status == ARGV[3] or status == ARGV[4] then
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'message', ARGV[1])
return 1
"""


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


TERMINAL_STATUSES = tuple(s.value for s in JobStatus if s.terminal)


class JobNotFound(KeyError):
    pass


class QuotaExceeded(Exception):
    """The owner already has its most concurrent jobs (``limit``) running or queued."""

    def __init__(self, owner: str, limit: int) -> None:
        super().__init__(f"{owner} already has {limit} jobs that have not ended")
        self.owner = owner
        self.limit = limit


@dataclass
class Job:
    id: str
    capability: str
    status: JobStatus
    progress: float
    message: str
    error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    options: dict[str, Any]
    owner: str = OPEN_OWNER

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> Job:
        def number(key: str) -> float | None:
            return float(data[key]) if data.get(key) else None

        return cls(
            id=data["id"],
            capability=data["capability"],
            status=JobStatus(data["status"]),
            progress=float(data.get("progress", 0.0)),
            message=data.get("message", ""),
            error=data.get("error") or None,
            created_at=float(data["created_at"]),
            started_at=number("started_at"),
            finished_at=number("finished_at"),
            attempts=int(data.get("attempts", 0)),
            options=json.loads(data.get("options", "{}")),
            owner=data.get("owner") or OPEN_OWNER,
        )


@dataclass
class JobRun:
    """One run of a job by a worker: ``outcome`` None while it runs, or when its worker died."""

    run_id: str
    started_at: float
    ended_at: float | None = None
    outcome: str | None = None
    retry: int = 0  # Celery's retry count of the message that started it

    @classmethod
    def from_json(cls, run_id: str, raw: str) -> JobRun:
        data = json.loads(raw)
        return cls(
            run_id=run_id,
            started_at=float(data["started_at"]),
            ended_at=data.get("ended_at"),
            outcome=data.get("outcome"),
            retry=int(data.get("retry", 0)),
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "started_at": self.started_at,
                "ended_at": self.ended_at,
                "outcome": self.outcome,
                "retry": self.retry,
            }
        )


def new_job_id() -> str:
    return str(uuid.uuid4())


def outage_retry(outage_s: float) -> Retry:
    """A redis-py retry policy that keeps retrying a command for about ``outage_s`` seconds
    (exponential backoff up to 2 s): long enough to ride out a Redis restart."""
    ramp = sum(min(OUTAGE_BACKOFF_CAP_S, OUTAGE_BACKOFF_BASE_S * 2**k) for k in range(1, 5))
    retries = 4 + max(0, math.ceil((outage_s - ramp) / OUTAGE_BACKOFF_CAP_S))
    return Retry(ExponentialBackoff(cap=OUTAGE_BACKOFF_CAP_S, base=OUTAGE_BACKOFF_BASE_S), retries)


class JobStore:
    def __init__(self, client: redis.Redis, result_ttl_s: int) -> None:
        self.redis = client
        self.result_ttl_s = result_ttl_s
        self._create_script = client.register_script(_CREATE_SCRIPT)
        self._start_script = client.register_script(_START_SCRIPT)
        self._refresh_lease_script = client.register_script(_REFRESH_LEASE_SCRIPT)
        self._requeue_script = client.register_script(_REQUEUE_SCRIPT)

    @classmethod
    def from_url(cls, url: str, result_ttl_s: int, *, outage_s: float = 0.0) -> JobStore:
        """A store on its own client. ``outage_s`` > 0: each command is retried with backoff
        for about that long when Redis cannot be reached (workers: a job rides out a Redis
        restart); 0: redis-py's few quick retries (the gateway answers 503 at once)."""
        options: dict[str, Any] = {}
        if outage_s > 0:
            options["retry"] = outage_retry(outage_s)
        client = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2, **options
        )
        return cls(client, result_ttl_s)

    @staticmethod
    def key(job_id: str, suffix: str = "") -> str:
        return f"{PREFIX}job:{job_id}{':' + suffix if suffix else ''}"

    @staticmethod
    def active_key(owner: str) -> str:
        return f"{PREFIX}owner:{owner}:active"

    # ------------------------------------------------------------------ life cycle
    def create(
        self,
        capability: str,
        options: dict[str, Any],
        job_id: str | None = None,
        *,
        owner: str = OPEN_OWNER,
        max_active: int = 0,
    ) -> Job:
        """Record a queued job of ``owner``; :class:`QuotaExceeded` when ``owner`` already has
        ``max_active`` jobs that have not ended (0: no limit)."""
        job_id = job_id or new_job_id()
        now = time.time()
        record = {
            "id": job_id,
            "capability": capability,
            "owner": owner,
            "status": JobStatus.queued.value,
            "progress": "0",
            "message": "queued",
            "created_at": repr(now),
            "attempts": "0",
            "options": json.dumps(options),
        }
        fields = [item for pair in record.items() for item in pair]
        active = self._create_script(
            keys=[self.key(job_id), self.active_key(owner)],
            args=[max_active, job_id, PREFIX, *TERMINAL_STATUSES, *fields],
        )
        if int(active) >= 0:
            raise QuotaExceeded(owner, max_active)
        return Job.from_hash(record)

    def get(self, job_id: str) -> Job:
        data = self.redis.hgetall(self.key(job_id))
        if not data:
            raise JobNotFound(job_id)
        return Job.from_hash(data)  # type: ignore[arg-type]

    def start(self, job_id: str, worker: str, *, retry: int = 0) -> Job:
        """Mark the job running by run ``worker`` (a run id: one per worker and delivery),
        count the attempt and record the run, once per run id. A job that has ended is left
        as it is (the caller sees its status); :class:`JobNotFound` without a record."""
        now = time.time()
        run = JobRun(worker, now, retry=retry)
        started = self._start_script(
            keys=[self.key(job_id), self.key(job_id, "runs")],
            args=[worker, repr(now), run.to_json(), *TERMINAL_STATUSES],
        )
        if int(started) == -2:
            raise JobNotFound(job_id)
        return self.get(job_id)

    def end_run(self, job_id: str, worker: str, outcome: str) -> None:
        """Record how run ``worker`` of the job ended (``succeeded``, ``retry``, ...)."""
        key = self.key(job_id, "runs")
        raw = self.redis.hget(key, worker)
        if raw is None:
            return
        run = JobRun.from_json(worker, str(raw))
        run.ended_at, run.outcome = time.time(), outcome
        self.redis.hset(key, worker, run.to_json())

    def runs(self, job_id: str) -> list[JobRun]:
        """Every run of the job, oldest first."""
        raw = self.redis.hgetall(self.key(job_id, "runs"))
        runs = [JobRun.from_json(str(k), str(v)) for k, v in raw.items()]
        return sorted(runs, key=lambda run: run.started_at)

    def progress(self, job_id: str, fraction: float, message: str) -> None:
        self.redis.hset(
            self.key(job_id), mapping={"progress": f"{fraction:.3f}", "message": message}
        )

    def requeue(self, job_id: str, reason: str) -> bool:
        """Put a job back to ``queued`` with ``reason``, unless it has ended meanwhile."""
        return bool(
            self._requeue_script(keys=[self.key(job_id)], args=[reason, *TERMINAL_STATUSES])
        )

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> bool:
        """Record the outcome once; returns False if the job had already ended."""
        key = self.key(job_id)
        now = time.time()
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    current = pipe.hget(key, "status")
                    if current is None or JobStatus(str(current)).terminal:
                        pipe.unwatch()
                        return False
                    record = pipe.hgetall(key)
                    pipe.multi()
                    if result is not None:
                        pipe.set(
                            self.key(job_id, "result"), json.dumps(result), ex=self.result_ttl_s
                        )
                    pipe.hset(
                        key,
                        mapping={
                            "status": status.value,
                            "finished_at": repr(now),
                            "progress": "1"
                            if status is JobStatus.succeeded
                            else record.get("progress", "0"),
                            "message": status.value,
                            "error": error or "",
                        },
                    )
                    pipe.expire(key, self.result_ttl_s)
                    pipe.expire(self.key(job_id, "runs"), self.result_ttl_s)
                    # Wakes up any client waiting on ?wait=SECONDS.
                    pipe.srem(self.active_key(str(record.get("owner") or OPEN_OWNER)), job_id)
                    pipe.lpush(self.key(job_id, "done"), status.value)
                    pipe.expire(self.key(job_id, "done"), 300)
                    started = float(record.get("started_at") or record["created_at"])
                    self._count_outcome(pipe, str(record["capability"]), status, now - started)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if not job.status.terminal:
            self.finish(job_id, JobStatus.cancelled, error="cancelled by the client")
        return self.get(job_id)

    def result(self, job_id: str) -> dict[str, Any] | None:
        raw = self.redis.get(self.key(job_id, "result"))
        return json.loads(raw) if raw else None

    # ------------------------------------------------------------------ leases
    def acquire_lease(self, job_id: str, owner: str) -> bool:
        return bool(self.redis.set(self.key(job_id, "lease"), owner, nx=True, ex=LEASE_TTL_S))

    def refresh_lease(self, job_id: str, owner: str) -> bool:
        """Extend ``owner``'s lease, or take it back if it lapsed (Redis was unreachable for
        longer than the lease); False when another worker holds it."""
        return bool(
            self._refresh_lease_script(keys=[self.key(job_id, "lease")], args=[owner, LEASE_TTL_S])
        )

    def release_lease(self, job_id: str, owner: str) -> None:
        key = self.key(job_id, "lease")
        if self.redis.get(key) == owner:
            self.redis.delete(key)

    def lease_held(self, job_id: str) -> bool:
        return bool(self.redis.exists(self.key(job_id, "lease")))

    # ------------------------------------------------------------------ metrics
    def _count_outcome(
        self, pipe: Any, capability: str, status: JobStatus, duration_s: float
    ) -> None:
        metrics = f"{PREFIX}metrics:jobs"
        label = f"{capability}|{status.value}"
        pipe.hincrby(metrics, f"count|{label}", 1)
        pipe.hincrbyfloat(metrics, f"sum|{label}", duration_s)
        for bound in DURATION_BUCKETS:
            if duration_s <= bound:
                pipe.hincrby(metrics, f"bucket|{label}|{bound}", 1)

    def outcome_metrics(self) -> dict[str, str]:
        return self.redis.hgetall(f"{PREFIX}metrics:jobs")  # type: ignore[return-value]
