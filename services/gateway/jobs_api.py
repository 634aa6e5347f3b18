"""Job bookkeeping shared by every capability's route: submit, wait, describe."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import cache
from typing import Any

import redis
from fastapi import Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from redis.commands.core import AsyncScript
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import URLPath

from services.capabilities import CAPABILITIES
from services.common import broker
from services.common.job_info import JobInfo
from services.common.jobs import (
    DELETED,
    OPEN_OWNER,
    Job,
    JobNotFound,
    JobStatus,
    JobStore,
    QuotaExceeded,
    new_job_id,
)
from services.common.keys import Principal, RateLimited, submission_limiter
from services.common.stores import artifact_store, job_store
from services.gateway.auth import current_principal
from services.gateway.deps import async_redis
from services.gateway.errors import ApiError, error_responses
from services.gateway.idempotency import (
    REPLAYED_HEADER,
    Binding,
    IdempotencyKeys,
    fingerprint,
    idempotency_key,
    mismatch,
)
from services.gateway.metrics import JOBS_SUBMITTED
from shared.settings import get_settings
from shared.storage import ArtifactStore

_idempotency_keys: IdempotencyKeys | None = None
_record_script: AsyncScript | None = None
# How long a repeat of an idempotent request waits for the job its first try is creating.
IDEMPOTENT_WAIT_S = 10.0
# Retry-After of the concurrent-job quota: when one of the jobs ends cannot be known, and a
# few seconds is about what a job takes.
QUOTA_RETRY_AFTER_S = 5


def idempotency_keys() -> IdempotencyKeys:
    global _idempotency_keys
    if _idempotency_keys is None:
        _idempotency_keys = IdempotencyKeys(async_redis(), get_settings().idempotency_ttl_s)
    return _idempotency_keys


def job_responses(
    result: type[BaseModel] | None, errors: Mapping[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` of a route that submits a job: 202 with the job, 200 with the
    ``result`` when it ends within ``?wait=SECONDS``, and the route's own ``errors`` (the
    errors every submission may answer are documented where the routers are included)."""
    responses: dict[int | str, dict[str, Any]] = {
        202: {"model": JobInfo, "description": "Accepted; poll the Location header."}
    }
    if result is not None:
        responses[200] = {"model": result, "description": "Finished within ?wait=SECONDS."}
    return responses | error_responses(errors or {})


def submit_job(
    capability: str,
    options: dict[str, Any],
    *,
    uploads: dict[str, bytes],
    store: JobStore,
    artifacts: ArtifactStore,
    owner: str = OPEN_OWNER,
    max_active: int = 0,
    job_id: str | None = None,
) -> Job:
    """Record the job, store its inputs, then enqueue it; the job exists before its message.

    ``capability``: a name of the capability table, whose task (routed to its queue) is sent by
    name. :class:`QuotaExceeded` when ``owner`` already has ``max_active`` jobs that have not
    ended.
    """
    task = CAPABILITIES[capability].task  # before anything is recorded: a typo is a bug
    job = store.create(capability, options, job_id, owner=owner, max_active=max_active)
    for name, data in uploads.items():
        artifacts.put(job.id, name, data)
    try:
        broker.send_task(task, [job.id], job.id)
    except Exception as exc:  # broker down: the job must not look accepted
        store.finish(job.id, JobStatus.failed, error="could not be queued: broker unavailable")
        raise ApiError(
            503, "the job queue is unavailable right now; retry shortly", {"Retry-After": "5"}
        ) from exc
    JOBS_SUBMITTED.labels(capability=capability).inc()
    return job


async def wait_for_job(job_id: str, timeout_s: float) -> dict[str, Any] | None:
    """The finished job's result body, or None if it did not finish within ``timeout_s``."""
    client = async_redis()
    key = JobStore.key(job_id)
    status = await client.hget(key, "status")
    deadline = time.monotonic() + timeout_s
    while status is None or not JobStatus(str(status)).terminal:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            # Short slices: redis-py's async client gives up reading after its socket
            # timeout (5 s by default), even on a blocking command with a longer timeout.
            await client.blpop([JobStore.key(job_id, "done")], timeout=min(remaining, 2.0))
        except redis.RedisError:
            return None
        status = await client.hget(key, "status")
    if status is None or not JobStatus(str(status)).terminal:
        return None
    if status == JobStatus.succeeded.value:
        raw = await client.get(JobStore.key(job_id, "result"))
        return {"job_id": job_id, "status": status, "result": json.loads(raw) if raw else None}
    error = await client.hget(key, "error")
    return {"job_id": job_id, "status": status, "error": error or None}


def job_url(request: Request, route_name: str, job_id: str) -> str:
    """``request.url_for(route_name, job_id=job_id)``, without searching every route for the
    name on each call (about 60 us, twice per status read)."""
    path = _route_path(request.app, route_name).replace(_JOB_ID_PLACEHOLDER, job_id)
    return str(URLPath(path).make_absolute_url(request.base_url))


_JOB_ID_PLACEHOLDER = "JOB-ID-PLACEHOLDER"


@cache
def _route_path(app: Starlette, route_name: str) -> str:
    """The path of a route with a ``job_id`` parameter, the id left as a placeholder."""
    return app.url_path_for(route_name, job_id=_JOB_ID_PLACEHOLDER)


def job_info(request: Request, job: Job) -> JobInfo:
    links = {"self": job_url(request, "get_job", job.id)}
    if job.status is JobStatus.succeeded:
        links["result"] = job_url(request, "get_job_result", job.id)
    # Every field of the job record but its options (the request, not its state) and its owner
    # (only ever shown to that owner). Not asdict: it deep-copies the options, per status read.
    record = {f.name: getattr(job, f.name) for f in fields(job) if f.name not in _NOT_SHOWN}
    return JobInfo(**record, links=links)


_NOT_SHOWN = ("options", "owner")
# A job's record without its options: those are the request (a lift can be megabytes of
# keypoints), never shown by a status read, which would read, send and parse them every poll.
# Fields are taken as they are (not a list), so that fields added to the record come along.
_RECORD_WITHOUT_OPTIONS = """
local record = {}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if field ~= 'options' then
    record[#record + 1] = field
    record[#record + 1] = redis.call('HGET', KEYS[1], field)
  end
end
return record
"""


async def read_job_record(job_id: str) -> dict[str, str]:
    """The job's record (its Redis hash) without its options; empty when there is none."""
    global _record_script
    client = async_redis()
    if _record_script is None or _record_script.registered_client is not client:
        _record_script = client.register_script(_RECORD_WITHOUT_OPTIONS)
    flat = await _record_script(keys=[JobStore.key(job_id)])
    return dict(zip(flat[::2], flat[1::2], strict=True))


async def accept_job(
    request: Request,
    response: Response,
    capability: str,
    options: dict[str, Any],
    *,
    uploads: dict[str, bytes],
    wait_s: float,
) -> JSONResponse | JobInfo:
    """Submit a job and answer as every capability's route does: 200 with the result when the
    job ends within ``wait_s`` (capped by ``max_wait_s``), else 202 with the job and its
    Location. 429 with Retry-After when the caller is over its submission rate or has its
    most concurrent jobs. With an ``Idempotency-Key`` a repeat of the request answers with the
    job of its first try (and ``Idempotent-Replayed: true``) instead of creating one."""
    principal = current_principal(request)
    key = idempotency_key(request)
    submission = _Submission(principal, capability, options, uploads)
    if key is None:
        await run_in_threadpool(_check_rate, principal)
        job, replayed = await submission.submit(new_job_id()), False
    else:
        job, replayed = await _submit_once(submission, key)
    headers = {"Location": job_url(request, "get_job", job.id)}
    if replayed:
        headers[REPLAYED_HEADER] = "true"
    if wait_s > 0:
        finished = await wait_for_job(job.id, min(wait_s, get_settings().max_wait_s))
        if finished is not None:
            return JSONResponse(finished, status_code=200, headers=headers)
    response.headers.update(headers)
    return job_info(request, await run_in_threadpool(job_store().get, job.id))


@dataclass
class _Submission:
    principal: Principal
    capability: str
    options: dict[str, Any]
    uploads: dict[str, bytes]

    def fingerprint(self) -> str:
        return fingerprint(self.capability, self.options, self.uploads)

    async def submit(self, job_id: str) -> Job:
        try:
            return await run_in_threadpool(
                submit_job,
                self.capability,
                self.options,
                uploads=self.uploads,
                store=job_store(),
                artifacts=artifact_store(),
                owner=self.principal.id,
                max_active=self.principal.max_concurrent,
                job_id=job_id,
            )
        except QuotaExceeded as exc:
            raise ApiError(
                429,
                f"this API key already has {exc.limit} jobs queued or running (its "
                "concurrent-job limit): wait for one to end (or cancel one with DELETE "
                "/v1/jobs/ID), then retry",
                {"Retry-After": str(QUOTA_RETRY_AFTER_S)},
            ) from exc


async def _submit_once(submission: _Submission, key: str) -> tuple[Job, bool]:
    """The job bound to ``key`` (and True), or a new one bound to it (and False)."""
    keys = idempotency_keys()
    principal = submission.principal
    request_print = submission.fingerprint()
    deadline = time.monotonic() + IDEMPOTENT_WAIT_S
    rate_checked = False
    while True:
        existing = await keys.get(principal.id, key)
        if existing is None:
            if not rate_checked:  # a replay is not a submission: only count new ones
                await run_in_threadpool(_check_rate, principal)
                rate_checked = True
            mine = Binding(new_job_id(), request_print)
            existing = await keys.claim(principal.id, key, mine)
            if existing is None:
                try:
                    job = await submission.submit(mine.job_id)
                except BaseException:
                    # Not bound to a job that was refused or could not be queued: a retry
                    # with the same key must be able to submit it again.
                    await keys.release(principal.id, key, mine)
                    raise
                return job, False
        if existing.fingerprint != request_print:
            raise mismatch()
        try:
            return await run_in_threadpool(job_store().get, existing.job_id), True
        except JobNotFound:
            # Its first try is creating it right now, or failed and will release the key; or
            # the job was deleted (DELETE), which forgets its key too: submit anew.
            if await async_redis().exists(JobStore.key(existing.job_id, DELETED)):
                await keys.release(principal.id, key, existing)
                continue
        if time.monotonic() > deadline:
            raise ApiError(
                409,
                "a request with this Idempotency-Key is still being processed; retry shortly",
                {"Retry-After": "1"},
            )
        await asyncio.sleep(0.05)


def _check_rate(principal: Principal) -> None:
    try:
        submission_limiter().hit(principal)
    except RateLimited as exc:
        raise ApiError(
            429,
            f"this API key may submit {exc.limit} jobs per minute (its rate limit); retry in "
            f"{exc.retry_after_s} s",
            {"Retry-After": str(exc.retry_after_s)},
        ) from exc
