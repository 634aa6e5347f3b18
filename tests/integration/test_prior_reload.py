"""The served ``pose_prior`` model and its hot reload, on a real tritonserver.

Triton (the nvidia-pytriton wheel's, explicit model control) serves a temporary copy of the
model repository and loads only ``pose_prior`` (the other models are not needed here). Tiny
priors (random weights of a small network: these tests check serving and publishing, not
sample quality) are published with the trainer's own publisher:

- served samples equal the in-process ones (:func:`shared.prior.rows.run_prior_rows`, the
  same code) for the same seeds, for every task and sampler, whatever the batching;
- publishing a version while Triton runs makes it live without a restart and without a failed
  request;
- a version Triton cannot load is rejected: the previous one keeps serving, the publisher
  raises, the files go to ``pose_prior/.rejected/``; the next publish brings readiness back.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from services.tools.local_stack import free_ports
from services.tools.triton_launcher import (
    TritonNotFound,
    TritonOptions,
    find_tritonserver,
    triton_command,
    wait_ready,
)
from services.trainer.publish import PublishError, publish_prior
from shared.prior.model import PosePrior, PriorConfig
from shared.prior.registry import (
    MODEL_NAME,
    REJECTED_DIR,
    latest_version,
    list_versions,
    load_latest_prior,
)
from shared.prior.rows import PriorTask, run_prior_batch, run_prior_rows
from shared.settings import get_settings
from tests.conftest import missing

pytestmark = pytest.mark.integration

TINY = PriorConfig(hidden=64, blocks=1, embed_dim=16)
STEPS = 6
NOISE = 0.3
TOLERANCE = 1e-4


def tiny_prior(path: Path, seed: int) -> Path:
    """A small prior with random weights (seeded) and the statistics of fixed poses."""
    torch.manual_seed(seed)
    prior = PosePrior(TINY)
    poses = np.random.default_rng(seed).normal(0.0, 0.3, size=(256, 21, 3)).astype(np.float32)
    prior.set_statistics(torch.from_numpy(poses))
    prior.save(path)
    return path


@dataclass
class ServedPrior:
    url: str
    process: subprocess.Popen[bytes]
    repository: Path
    log: Path
    work: Path

    @property
    def model_dir(self) -> Path:
        return self.repository / MODEL_NAME


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedPrior]:
    try:
        find_tritonserver()
    except TritonNotFound as exc:
        missing(str(exc))
    work = tmp_path_factory.mktemp("prior-reload")
    repository = work / "model_repository"
    shutil.copytree(
        get_settings().model_repository,
        repository,
        ignore=shutil.ignore_patterns(".*", "__pycache__"),
    )
    for version in list_versions(repository / MODEL_NAME):  # a shipped version: not ours
        shutil.rmtree(repository / MODEL_NAME / str(version))
    first = publish_prior(
        tiny_prior(work / "a.pt", seed=1), {"source": "test_prior_reload"}, repository
    )
    assert first.version == 1 and first.served_version is None
    http, grpc, metrics = free_ports(3)
    command = triton_command(
        TritonOptions(
            model_repository=repository,
            var_dir=work / "var",
            http_port=http,
            grpc_port=grpc,
            metrics_port=metrics,
            load_models=(MODEL_NAME,),
            extra_env={"OMP_NUM_THREADS": "1"},
        )
    )
    log = work / "triton.log"
    process = command.popen(log)
    try:
        wait_ready(command.grpc_url, [MODEL_NAME], timeout=180, process=process)
        yield ServedPrior(command.grpc_url, process, repository, log, work)
    except Exception:
        print(log.read_text()[-4000:])
        raise
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def ask(
    url: str,
    task: np.ndarray,
    pose: np.ndarray,
    known: np.ndarray,
    seeds: np.ndarray,
    steps: int = STEPS,
    noise: float = NOISE,
    sampler: int | None = None,
) -> tuple[int, np.ndarray]:
    """One request of B rows -> (version that answered, (B, 21, 3) body poses). ``sampler``:
    the optional SAMPLER code (None: not sent)."""
    import tritonclient.grpc as grpcclient

    rows = len(seeds)
    arrays = {
        "TASK": (np.asarray(task, np.int32).reshape(rows, 1), "INT32"),
        "POSE": (np.asarray(pose, np.float32), "FP32"),
        "KNOWN": (np.asarray(known, bool), "BOOL"),
        "SEED": (np.asarray(seeds, np.int64).reshape(rows, 1), "INT64"),
        "STEPS": (np.full((rows, 1), steps, np.int32), "INT32"),
        "NOISE_LEVEL": (np.full((rows, 1), noise, np.float32), "FP32"),
    }
    if sampler is not None:
        arrays["SAMPLER"] = (np.full((rows, 1), sampler, np.int32), "INT32")
    inputs = []
    for name, (array, dtype) in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(np.ascontiguousarray(array))
        inputs.append(tensor)
    with grpcclient.InferenceServerClient(url) as client:
        result = client.infer(MODEL_NAME, inputs, client_timeout=120)
    return int(result.get_response().model_version), np.array(result.as_numpy("BODY_POSE"))


def example_rows(rows: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, 21, 3) poses, (B, 21) masks (the legs known) and (B,) seeds."""
    pose = np.random.default_rng(7).normal(0.0, 0.3, size=(rows, 21, 3)).astype(np.float32)
    known = np.zeros((rows, 21), bool)
    known[:, :11] = True
    return pose, known, np.arange(100, 100 + rows, dtype=np.int64)


def generate_rows(
    url: str, seeds: np.ndarray, sampler: int | None = None
) -> tuple[int, np.ndarray]:
    rows = len(seeds)
    zeros = np.zeros((rows, 21, 3), np.float32)
    return ask(url, np.zeros(rows), zeros, np.zeros((rows, 21), bool), seeds, sampler=sampler)


def test_served_samples_equal_in_process_ones(served: ServedPrior) -> None:
    prior = load_latest_prior(served.model_dir)
    pose, known, seeds = example_rows()
    for task in PriorTask:
        version, body_pose = ask(served.url, np.full(len(seeds), task), pose, known, seeds)
        expected = run_prior_rows(prior, task, pose, known, seeds, STEPS, NOISE)
        assert version == 1
        assert body_pose.shape == (3, 21, 3)
        np.testing.assert_allclose(body_pose, expected, atol=TOLERANCE, err_msg=task.name)
    # Completion keeps the known joints exactly; generation differs per seed.
    _, completed = ask(served.url, np.full(3, PriorTask.COMPLETE), pose, known, seeds)
    np.testing.assert_array_equal(completed[known], pose[known])
    assert not np.allclose(completed[0], completed[1])

    # One request mixing the tasks, and concurrent requests the dynamic batcher may gather:
    # every row as when it is alone.
    tasks = np.array([PriorTask.DENOISE, PriorTask.GENERATE, PriorTask.COMPLETE])
    _, mixed = ask(served.url, tasks, pose, known, seeds)
    expected = run_prior_batch(
        prior, tasks, pose, known, seeds, np.full(3, STEPS), np.full(3, NOISE)
    )
    np.testing.assert_allclose(mixed, expected, atol=TOLERANCE)
    # The optional SAMPLER (generate: 0 ODE, 1 SDE), sent by some requests and not others.
    asks = [(int(seed), sampler) for seed in seeds for sampler in (None, 0, 1)]
    with ThreadPoolExecutor(max_workers=len(asks)) as pool:
        singles = list(
            pool.map(lambda a: generate_rows(served.url, np.array([a[0]]), a[1])[1], asks)
        )
    for (seed, sampler), body_pose in zip(asks, singles, strict=True):
        name = "sde" if sampler == 1 else "ode"
        alone = run_prior_rows(prior, 0, None, None, np.array([seed]), STEPS, sampler=name)
        np.testing.assert_allclose(body_pose, alone, atol=TOLERANCE, err_msg=f"{seed} {name}")
    assert not np.allclose(singles[0], singles[2])  # the SDE draws other samples


def test_bad_requests_get_clear_errors(served: ServedPrior) -> None:
    from tritonclient.utils import InferenceServerException

    pose, known, seeds = example_rows(1)
    with pytest.raises(InferenceServerException, match="unknown prior task code 7"):
        ask(served.url, np.array([7]), pose, known, seeds)
    with pytest.raises(InferenceServerException, match="steps must be between 1 and"):
        ask(served.url, np.array([0]), pose, known, seeds, steps=0)
    with pytest.raises(InferenceServerException, match="noise_level"):
        ask(served.url, np.array([2]), pose, known, seeds, noise=0.0)
    with pytest.raises(InferenceServerException, match="unknown sampler code 4"):
        ask(served.url, np.array([0]), pose, known, seeds, sampler=4)
    assert generate_rows(served.url, seeds)[0] == 1  # and the model still serves


def test_publishing_makes_a_new_version_live_without_restart(served: ServedPrior) -> None:
    seeds = np.arange(4, dtype=np.int64)
    before_version, before = generate_rows(served.url, seeds)
    pid = served.process.pid

    # Requests keep flowing while the new version loads: none may fail.
    answered: list[int] = []
    failures: list[str] = []
    done = threading.Event()

    def keep_asking() -> None:
        while not done.is_set():
            try:
                answered.append(generate_rows(served.url, seeds[:1])[0])
            except Exception as exc:
                failures.append(str(exc))
            time.sleep(0.05)

    background = threading.Thread(target=keep_asking)
    background.start()
    started = time.monotonic()
    try:
        result = publish_prior(
            tiny_prior(served.work / "b.pt", seed=2),
            {"source": "test_prior_reload"},
            served.repository,
            triton_url=served.url,
        )
    finally:
        reload_s = time.monotonic() - started
        done.set()
        background.join(30)
    print(f"publish + hot reload: {reload_s:.1f} s, {len(answered)} requests answered meanwhile")

    assert result.created and result.version == before_version + 1
    assert result.served_version == result.version
    assert result.reloaded == [MODEL_NAME]  # body_fit is not loaded here: not reloaded
    assert not failures, failures[:3]
    assert set(answered) <= {before_version, result.version}
    after_version, after = generate_rows(served.url, seeds)
    assert after_version == result.version
    assert not np.allclose(after, before)
    expected = run_prior_rows(load_latest_prior(served.model_dir), 0, None, None, seeds, STEPS)
    np.testing.assert_allclose(after, expected, atol=TOLERANCE)
    assert served.process.poll() is None and served.process.pid == pid  # no restart

    # Publishing the same prior again is a no-op (a rerun of a finished job).
    again = publish_prior(
        served.work / "b.pt", {"source": "again"}, served.repository, triton_url=served.url
    )
    assert not again.created and again.version == result.version


def test_a_version_triton_cannot_load_is_rejected(served: ServedPrior) -> None:
    import tritonclient.grpc as grpcclient

    seeds = np.arange(3, dtype=np.int64)
    serving, before = generate_rows(served.url, seeds)
    broken = served.work / "broken.pt"
    broken.write_bytes(b"not a torch file" * 64)

    # The in-process validation stops it before Triton sees it...
    with pytest.raises(PublishError, match="fails validation"):
        publish_prior(broken, {}, served.repository, triton_url=served.url)
    assert latest_version(served.model_dir) == serving
    assert not list(served.model_dir.glob(".staging-*"))

    # ...and when it is skipped (tests only), Triton refuses it and the old version stays.
    with pytest.raises(PublishError) as failure:
        publish_prior(
            broken, {}, served.repository, triton_url=served.url, validate=False, timeout_s=120
        )
    error = failure.value
    assert f"{serving} still serves" in str(error)
    assert error.version == serving + 1 and error.serving_version == serving
    assert error.rejected_dir is not None
    assert error.rejected_dir.parent == served.model_dir / REJECTED_DIR
    kept = {p.name for p in error.rejected_dir.iterdir()}
    assert kept >= {"prior.pt", "record.json", "REJECTED.txt"}
    assert "model.py" not in kept  # the link to ../model.py would point nowhere there
    assert not (served.model_dir / str(serving + 1)).exists()
    assert latest_version(served.model_dir) == serving
    version, after = generate_rows(served.url, seeds)
    assert version == serving
    np.testing.assert_allclose(after, before, atol=TOLERANCE)

    # Triton keeps the failed version listed, so the server is not ready (strict readiness)
    # though the model is; the next good publish reuses the number and clears it.
    with grpcclient.InferenceServerClient(served.url) as client:
        assert client.is_model_ready(MODEL_NAME)
        assert not client.is_server_ready()
        good = publish_prior(
            tiny_prior(served.work / "c.pt", seed=3), {}, served.repository, triton_url=served.url
        )
        assert good.version == serving + 1 and good.served_version == good.version
        deadline = time.monotonic() + 30  # the previous version unloads in the background
        while not client.is_server_ready() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert client.is_server_ready()
    assert generate_rows(served.url, seeds)[0] == good.version
