"""Dataset generation: one job, many chunk tasks on the ``datasets`` queue, one finishing task.

- ``bodyserve.dataset_generation`` (the task the gateway queues, id = the job's id) marks the
  job running and sends one ``bodyserve.dataset_chunk`` per chunk, as a Celery group, each
  with a fixed task id (``<job>-c<chunk>``) so that a planner run twice sends nothing new.
- A chunk makes its shard (:meth:`DatasetMaker.make_chunk`: idempotent, stored atomically),
  then adds its number to the job's set of done chunks. Holding a lease on its task id while it
  runs, it is restored by the sweeper when its worker dies, and dropped when another worker is
  running it. The chunk that completes the set sends ``bodyserve.dataset_finish`` once.
- The finish checks every shard, writes the index, card and contact sheet, and ends the job.

Why not a Celery chord: a chord counts its header's results, and with late acks a chunk whose
worker died after storing its shard runs twice, which a counter takes for two chunks. A set of
chunk numbers cannot count one twice, so the finish is sent exactly when every chunk is in.

Progress (``GET /v1/jobs/{id}``): the share of images made, and a message with chunks done,
images per second and the time left. Cancelling the job stops its chunks at their next batch.

The three tasks' names, their queue and the chunk's time limit are the capability table's
(:mod:`services.capabilities`: ``dataset_generation``, :data:`DATASET_CHUNK`,
:data:`DATASET_FINISH`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from functools import lru_cache
from typing import Any

from celery import Task, group
from celery.exceptions import SoftTimeLimitExceeded

from services.capabilities import CAPABILITIES, DATASET_CHUNK, DATASET_FINISH
from services.common.jobs import CHUNKS_DONE, FINISHING, JobNotFound, JobStatus, JobStore
from services.common.stores import artifact_store
from services.common.webhooks import announce_job_end
from services.workers.celery_app import app
from services.workers.lifecycle import (
    TRANSIENT_ERRORS,
    JobCancelled,
    LeaseHeartbeat,
    backend,
    worker_job_store,
)
from shared.datasets.generate import (
    CARD_NAME,
    CONTACT_SHEET_NAME,
    INDEX_NAME,
    DatasetMaker,
)
from shared.datasets.sampling import prior_sampler
from shared.datasets.spec import DatasetSpec
from shared.diffusion.loop import depth_painter
from shared.diffusion.pipelines import load_pipelines
from shared.prior.registry import default_model_dir, latest_version, read_record, version_dir
from shared.settings import get_settings
from shared.storage import ArtifactStore

log = logging.getLogger("bodyserve.datasets")


def chunk_task_id(job_id: str, chunk: int) -> str:
    return f"{job_id}-c{chunk:05d}"


class JobSink:
    """A job's folder of the artifact store, as a dataset sink."""

    def __init__(self, artifacts: ArtifactStore, job_id: str) -> None:
        self.artifacts, self.job_id = artifacts, job_id

    def put(self, name: str, data: bytes) -> None:
        self.artifacts.put(self.job_id, name, data)

    def get(self, name: str) -> bytes:
        return self.artifacts.get(self.job_id, name)

    def exists(self, name: str) -> bool:
        return self.artifacts.exists(self.job_id, name)


@lru_cache(maxsize=4)
def _maker(job_id: str, spec_json: str) -> DatasetMaker:
    """One maker per dataset and worker process: mocap poses and backgrounds are read once."""
    spec = DatasetSpec.model_validate_json(spec_json)
    painter = None
    if spec.generator == "diffusion":
        assert spec.prompt is not None  # the spec says so
        pipelines = load_pipelines(get_settings().diffusion_model_dir)
        painter = depth_painter(pipelines, spec.prompt, spec.resolution)
    return DatasetMaker(
        spec,
        prior=prior_sampler(backend()),
        cache_dir=get_settings().var_dir / "cache",
        painter=painter,
    )


def _spec(store: JobStore, job_id: str) -> DatasetSpec | None:
    """The job's spec, or None when the job has no record or has ended."""
    try:
        job = store.get(job_id)
    except JobNotFound:
        return None
    if job.status.terminal:
        return None
    return DatasetSpec.model_validate(job.options["spec"])


def _worker_name(task: Task) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{task.request.id}"


def _fail(store: JobStore, job_id: str, error: str) -> None:
    if store.finish(job_id, JobStatus.failed, error=error):
        announce_job_end(job_id)


def _retry_options() -> dict[str, Any]:
    return {
        "bind": True,
        "autoretry_for": TRANSIENT_ERRORS,
        # The job tasks' backoff (shared.settings), in Celery's autoretry terms.
        "retry_backoff": get_settings().job_retry_backoff_s,
        "retry_backoff_max": get_settings().job_retry_backoff_max_s,
        "retry_jitter": True,
        "max_retries": get_settings().job_max_retries,
    }


@app.task(name=CAPABILITIES["dataset_generation"].task, **_retry_options())
def dataset_generation(self: Task, job_id: str) -> str:
    store = worker_job_store()
    spec = _spec(store, job_id)
    if spec is None:
        return "ended"
    if store.get(job_id).status is JobStatus.queued:
        store.start(job_id, _worker_name(self))
        store.progress(job_id, 0.0, f"0/{spec.chunks} chunks, 0/{spec.count} images")
    # Fixed task ids: a second run of this task sends the same chunks, which find their
    # lease or their shard and return at once.
    group(
        app.signature(DATASET_CHUNK.name, args=(job_id, chunk), queue=DATASET_CHUNK.queue).set(
            task_id=chunk_task_id(job_id, chunk)
        )
        for chunk in range(spec.chunks)
    ).apply_async()
    return "dispatched"


def _report(store: JobStore, job_id: str, spec: DatasetSpec, done: list[int]) -> None:
    images = sum(len(spec.chunk_range(c)) for c in done)
    job = store.get(job_id)
    elapsed = max(time.time() - (job.started_at or job.created_at), 1e-3)
    rate = images / elapsed
    left = (spec.count - images) / rate if rate > 0 else float("nan")
    store.progress(
        job_id,
        images / spec.count,
        f"{len(done)}/{spec.chunks} chunks, {images}/{spec.count} images, "
        f"{rate:.1f} images/s, about {left:.0f} s left",
    )


@app.task(
    name=DATASET_CHUNK.name,
    **DATASET_CHUNK.time_limits.celery_options(get_settings()),
    **_retry_options(),
)
def dataset_chunk(self: Task, job_id: str, chunk: int) -> str:
    store = worker_job_store()
    spec = _spec(store, job_id)
    if spec is None:
        return "ended"
    done_key = JobStore.key(job_id, CHUNKS_DONE)
    if store.redis.sismember(done_key, str(chunk)):
        return "done before"
    lease, owner = chunk_task_id(job_id, chunk), _worker_name(self)
    if not store.acquire_lease(lease, owner):
        return "running elsewhere"
    sink = JobSink(artifact_store(), job_id)

    def progress(_: int) -> None:
        if store.get(job_id).status.terminal:
            raise JobCancelled(job_id)

    try:
        with LeaseHeartbeat(store, lease, owner):
            report = _maker(job_id, spec.model_dump_json()).make_chunk(sink, chunk, progress)
            with store.redis.pipeline() as pipe:
                pipe.sadd(done_key, chunk)
                pipe.expire(done_key, get_settings().result_ttl_s)
                pipe.smembers(done_key)
                done = sorted(int(c) for c in pipe.execute()[-1])
            log.info("chunk %s of %s: %s in %.1f s", chunk, job_id, report.made, report.seconds)
            _report(store, job_id, spec, done)
            if len(done) == spec.chunks and store.redis.set(
                JobStore.key(job_id, FINISHING), "1", nx=True, ex=get_settings().result_ttl_s
            ):
                app.send_task(
                    DATASET_FINISH.name,
                    args=(job_id,),
                    task_id=f"{job_id}-fin",
                    queue=DATASET_FINISH.queue,
                )
        return "made" if report.made else "found"
    except JobCancelled:
        return "cancelled"
    except SoftTimeLimitExceeded:
        limit = get_settings().dataset_chunk_time_limit_s
        _fail(
            store,
            job_id,
            f"chunk {chunk} took longer than {limit} s (BODYSERVE_DATASET_CHUNK_TIME_LIMIT_S): "
            "ask for a smaller shard_size",
        )
        return "failed"
    except TRANSIENT_ERRORS:
        if self.request.retries >= self.max_retries:
            _fail(store, job_id, f"chunk {chunk}: the model server stayed unavailable")
            return "failed"
        raise
    except Exception as exc:
        log.exception("chunk %s of %s failed", chunk, job_id)
        _fail(store, job_id, f"chunk {chunk} failed: {type(exc).__name__}: {exc}")
        return "failed"
    finally:
        store.release_lease(lease, owner)


@app.task(name=DATASET_FINISH.name, **_retry_options())
def dataset_finish(self: Task, job_id: str) -> str:
    store = worker_job_store()
    spec = _spec(store, job_id)
    if spec is None:
        return "ended"
    lease, owner = f"{job_id}-fin", _worker_name(self)
    if not store.acquire_lease(lease, owner):
        return "running elsewhere"
    try:
        with LeaseHeartbeat(store, lease, owner):
            return _finish(store, job_id, spec)
    finally:
        store.release_lease(lease, owner)


def _finish(store: JobStore, job_id: str, spec: DatasetSpec) -> str:
    maker = _maker(job_id, spec.model_dump_json())
    job = store.get(job_id)
    elapsed = time.time() - (job.started_at or job.created_at)
    stats = {"seconds": round(elapsed, 1), "images_per_second": round(spec.count / elapsed, 2)}
    try:
        card = maker.finish(JobSink(artifact_store(), job_id), _prior_record(spec), stats)
    except RuntimeError as exc:  # a shard went missing after its chunk was counted
        _fail(store, job_id, str(exc))
        return "failed"
    shards = [s["name"] for s in card["shards"]]
    result = {
        "name": spec.name,
        "images": card["images"],
        "shards": shards,
        "card": CARD_NAME,
        "contact_sheet": CONTACT_SHEET_NAME,
        "index": INDEX_NAME,
        "fingerprint": card["fingerprint"],
        "generation": stats,
    }
    if store.finish(job_id, JobStatus.succeeded, result=result):
        announce_job_end(job_id)
    return "succeeded"


def _prior_record(spec: DatasetSpec) -> dict[str, Any] | None:
    if spec.poses.source != "prior":
        return None

    version = latest_version(default_model_dir())
    if version is None:
        return None
    record = read_record(version_dir(default_model_dir(), version))
    return {"version": version, **{k: record[k] for k in ("data", "steps", "seed") if k in record}}
