"""``bodyserve train prior`` on real mocap, publishing into a model repository, the registry of
published versions and the row-based prior tasks that the served model runs.

The CLI runs on two real CMU captures (a training subject and a validation subject) copied
from the shared data, with a few dozen steps: once in a subprocess interrupted with Ctrl-C
after its first checkpoint, then again (in-process) to check that it continues instead of
starting over, and publishes. No Triton here (see tests/integration/test_prior_reload.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from services.tools.cli import app
from services.tools.local_stack import free_ports
from services.trainer.publish import PublishError, publish_prior
from shared.prior.model import PosePrior, PriorConfig
from shared.prior.registry import (
    REJECTED_DIR,
    is_published,
    latest_version,
    list_versions,
    load_latest_prior,
    next_version,
    read_record,
    rejected_dirs,
)
from shared.prior.rows import (
    MAX_STEPS,
    SAMPLERS,
    PriorTask,
    group_rows,
    parse_task,
    run_prior_batch,
    run_prior_rows,
)
from shared.settings import REPO_ROOT, get_settings
from tests.conftest import missing

# 02_03 (subject 2, run/jog) trains; 16_01 (subject 16, jump) validates.
MOCAP_FILES = (
    "cmu_daz__Przestr-motion-capture/02/02_03.bvh",
    "cmu_daz__Przestr-motion-capture/16/16_01.bvh",
)
STEPS = 60
TINY = PriorConfig(hidden=64, blocks=1, embed_dim=16)
WIDE = {"COLUMNS": "300"}  # typer's error panel: one line per message


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Small networks run fastest on one thread, and do not fight other processes for cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mocap_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = get_settings().data_dir / "mocap"
    if not all((source / name).is_file() for name in MOCAP_FILES):
        missing(f"the CMU mocap is not at {source} (set BODYSERVE_DATA_DIR)")
    folder = tmp_path_factory.mktemp("mocap")
    for name in MOCAP_FILES:
        shutil.copyfile(source / name, folder / Path(name).name)
    return folder


def tiny_prior(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    PosePrior(TINY).save(path)
    return path


# --------------------------------------------------------------------------- the CLI


@dataclass
class TrainedRun:
    data: Path
    out: Path
    repository: Path
    args: list[str]  # `bodyserve train prior ...` arguments
    interrupted_output: str
    resumed_output: str
    resumed_exit: int


@pytest.fixture(scope="module")
def trained(mocap_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """The command interrupted after its first checkpoint, then run again to the end."""
    work = tmp_path_factory.mktemp("trainer")
    out, repository = work / "run", work / "model_repository"
    args = [
        "--data", str(mocap_dir),
        "--out", str(out),
        "--steps", str(STEPS),
        "--batch-size", "32",
        "--checkpoint-every", "10",
        "--eval-every", "10",
        "--valid-subjects", "16",
        "--repository", str(repository),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("BODYSERVE_TRITON")}
    env.update(BODYSERVE_TORCH_THREADS="1", COLUMNS="200")
    process = subprocess.Popen(
        [sys.executable, "-m", "services.trainer", "prior", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    first_checkpoint = out / "checkpoints" / "step_0000010.pt"
    deadline = time.monotonic() + 180
    while not first_checkpoint.exists() and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint after 180 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)  # Ctrl-C, as a preempted job would stop
    interrupted_output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, interrupted_output
    assert not (out / "prior.pt").exists()  # it stopped before the end

    result = CliRunner().invoke(app, ["train", "prior", *args])
    return TrainedRun(
        mocap_dir, out, repository, args, interrupted_output, result.output, result.exit_code
    )


def test_an_interrupted_run_continues_from_its_checkpoint(trained: TrainedRun) -> None:
    assert "interrupted" in trained.interrupted_output, trained.interrupted_output
    assert trained.resumed_exit == 0, trained.resumed_output
    # The plain log (the console output wraps at the terminal's width).
    log = (trained.out / "train.log").read_text()
    assert "interrupted: rerun the same command to continue from the checkpoint of step" in log
    assert log.count("built ") == 1 and "reusing" in log, log  # ingestion not repeated
    resumed = re.findall(r"resuming from the checkpoint of step (\d+)/(\d+)", log)
    assert len(resumed) == 1, log
    resumed_from = int(resumed[0][0])
    assert 10 <= resumed_from < STEPS and int(resumed[0][1]) == STEPS
    assert "resuming from the checkpoint" in trained.resumed_output

    # metrics.jsonl: one line per evaluation, in order, none twice, up to the last step.
    lines = (trained.out / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    assert steps == list(range(10, STEPS + 1, 10)), log
    assert all(np.isfinite(json.loads(line)["valid_loss"]) for line in lines)
    checkpoints = sorted(p.name for p in (trained.out / "checkpoints").glob("step_*.pt"))
    assert checkpoints[-1] == f"step_{STEPS:07d}.pt"
    assert (trained.out / "dataset.npz").is_file() and (trained.out / "prior.pt").is_file()


def test_the_run_publishes_a_version_with_its_record(trained: TrainedRun) -> None:
    model_dir = trained.repository / "pose_prior"
    assert list_versions(model_dir) == [1] and latest_version(model_dir) == 1
    # A fresh repository gets the model folder from this checkout.
    assert (model_dir / "config.pbtxt").is_file() and (
        trained.repository / "bootstrap.py"
    ).is_file()
    version = model_dir / "1"
    assert {"model.py", "prior.pt", "record.json"} <= {p.name for p in version.iterdir()}
    # The code is the model's one implementation: a link, not a copy (docs/model_versions.md).
    assert (version / "model.py").readlink() == Path("..", "model.py")
    assert (version / "model.py").resolve() == (model_dir / "model.py").resolve()
    assert (version / "prior.pt").read_bytes() == (trained.out / "prior.pt").read_bytes()

    record = read_record(version)
    assert record["version"] == 1 and record["model_name"] == "pose_prior"
    assert record["data_dir"] == str(trained.data.resolve())
    assert record["valid_subjects"] == ["16"]
    frames = record["dataset"]["frames"]
    assert frames["train"] > 0 and frames["valid"] > 0
    assert record["dataset"]["metadata"]["frames_per_split"] == frames
    assert len(record["dataset"]["inputs_hash"]) == 64
    assert (record["steps"], record["batch_size"], record["seed"]) == (STEPS, 32, 0)
    assert record["config"]["steps"] == STEPS and record["config"]["model"]["hidden"] > 0
    assert record["metrics"]["step"] == STEPS and record["metrics"]["valid_loss"] > 0
    assert record["train_wall_time_s"] > 0
    assert record["machine"]["cpu_count"] == os.cpu_count()
    assert record["machine"]["torch"] == torch.__version__
    assert record["software"]["git_commit"]  # this is a git checkout
    assert record["created_at"].endswith("+00:00")

    prior = load_latest_prior(model_dir)
    poses = run_prior_rows(prior, PriorTask.GENERATE, None, None, np.arange(3), steps=5)
    assert poses.shape == (3, 21, 3) and np.isfinite(poses).all()


def test_rerunning_a_finished_run_publishes_nothing_new(trained: TrainedRun) -> None:
    result = CliRunner().invoke(app, ["train", "prior", *trained.args])
    assert result.exit_code == 0, result.output
    assert "already holds this prior" in (trained.out / "train.log").read_text()
    assert list_versions(trained.repository / "pose_prior") == [1]


def test_publishing_fails_clearly_when_triton_does_not_answer(trained: TrainedRun) -> None:
    (port,) = free_ports(1)
    args = [*trained.args, "--triton-url", f"127.0.0.1:{port}"]
    result = CliRunner().invoke(app, ["train", "prior", *args])
    assert result.exit_code == 1, result.output
    assert "publishing failed" in result.output
    last = (trained.out / "train.log").read_text().splitlines()[-1]
    assert "ERROR failed: PublishError: version 1 is published" in last
    assert f"Triton at 127.0.0.1:{port} did not answer" in last


def test_bad_options_say_what_to_fix(trained: TrainedRun, tmp_path: Path) -> None:
    runner = CliRunner()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(
        app, ["train", "prior", "--data", str(empty), "--out", str(tmp_path / "o")], env=WIDE
    )
    assert result.exit_code == 2 and "no mocap under" in result.output
    inside = ["--data", str(trained.data), "--out", str(trained.data / "run")]
    result = runner.invoke(app, ["train", "prior", *inside], env=WIDE)
    assert result.exit_code == 2 and "inside the mocap folder" in result.output
    # Resuming with other hyper-parameters: refused, with the way out.
    other = [a if a != str(STEPS) else str(STEPS + 10) for a in trained.args]
    result = runner.invoke(app, ["train", "prior", *other, "--no-publish"], env=WIDE)
    assert result.exit_code == 2 and "--no-resume" in result.output


# --------------------------------------------------------------------------- publishing


def test_publish_validates_stages_and_numbers_versions(tmp_path: Path) -> None:
    repository = tmp_path / "model_repository"
    model_dir = repository / "pose_prior"
    first = publish_prior(tiny_prior(tmp_path / "a.pt", 1), {"note": "a"}, repository)
    assert (first.version, first.created, first.served_version) == (1, True, None)
    assert read_record(first.version_dir)["note"] == "a"

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"\x00" * 100)
    with pytest.raises(PublishError, match="fails validation, nothing published"):
        publish_prior(broken, {}, repository)
    assert list_versions(model_dir) == [1]
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".staging")]
    with pytest.raises(PublishError, match="no prior to publish"):
        publish_prior(tmp_path / "missing.pt", {}, repository)

    second = publish_prior(tiny_prior(tmp_path / "b.pt", 2), {}, repository)
    assert second.version == 2 and latest_version(model_dir) == 2
    loaded = load_latest_prior(model_dir)
    expected = PosePrior.load(tmp_path / "b.pt")
    for name, tensor in expected.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)


def test_registry_reads_only_complete_versions(tmp_path: Path) -> None:
    model_dir = tmp_path / "pose_prior"
    assert list_versions(model_dir) == [] and latest_version(model_dir) is None
    assert next_version(model_dir) == 1
    with pytest.raises(FileNotFoundError, match="bodyserve train prior"):
        load_latest_prior(model_dir)

    def version(name: str, prior: bool = True, record: str | None = '{"created_at": "x"}') -> Path:
        folder = model_dir / name
        folder.mkdir(parents=True)
        if prior:
            tiny_prior(folder / "prior.pt", seed=len(name))
        if record is not None:
            (folder / "record.json").write_text(record)
        return folder

    version("1")
    version("2", record=None)  # no record: not published
    version("6", prior=False)  # no prior.pt: not published either
    version("3", record="{not json")
    version("4", record="[1, 2]")
    version("05")  # Triton ignores a leading zero
    version("abc")
    version(".staging-7-123")
    assert list_versions(model_dir) == [1, 2, 3, 4, 6]
    assert latest_version(model_dir) == 1
    assert next_version(model_dir) == 7  # an incomplete folder is never overwritten
    published = [is_published(model_dir / str(n)) for n in (1, 2, 3, 4, 6)]
    assert published == [True, False, False, False, False]
    with pytest.raises(ValueError, match="not valid JSON"):
        read_record(model_dir / "3")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        read_record(model_dir / "4")
    with pytest.raises(FileNotFoundError, match="not a published version"):
        read_record(model_dir / "2")
    assert isinstance(load_latest_prior(model_dir), PosePrior)

    # A rejected version's number is used again (Triton's readiness comes back with it).
    for n in (2, 3, 4, 6):
        shutil.rmtree(model_dir / str(n))
    (model_dir / REJECTED_DIR / "2-20250101T000000Z").mkdir(parents=True)
    assert next_version(model_dir) == 2
    assert [p.name for p in rejected_dirs(model_dir)] == ["2-20250101T000000Z"]


# --------------------------------------------------------------------------- tasks


def test_rows_of_mixed_tasks_equal_one_call_per_group() -> None:
    torch.manual_seed(0)
    prior = PosePrior(TINY).eval()
    rows = 7
    rng = np.random.default_rng(0)
    pose = rng.normal(0.0, 0.3, size=(rows, 21, 3)).astype(np.float32)
    known = np.zeros((rows, 21), bool)
    known[:, ::2] = True
    seeds = np.arange(10, 10 + rows)
    tasks = np.array([0, 1, 2, 0, 2, 2, 0])
    steps = np.array([4, 4, 4, 4, 4, 3, 4])
    noise = np.array([0.9, 0.5, 0.3, 0.1, 0.3, 0.3, 0.9], np.float32)
    samplers = np.array([0, 1, 1, 0, 0, 0, 1])

    groups = group_rows(tasks, steps, noise, samplers)
    # Noise only separates denoise rows, the sampler only generate rows; steps everything.
    assert {tuple(v) for v in groups.values()} == {(0, 3), (1,), (2, 4), (5,), (6,)}
    assert {g.sampler for g in groups} == {"ode", "sde"}
    out = run_prior_batch(prior, tasks, pose, known, seeds, steps, noise, samplers)
    for group, members in groups.items():
        alone = run_prior_rows(
            prior,
            group.task,
            pose[members],
            known[members],
            seeds[members],
            group.steps,
            group.noise_level,
            group.sampler,
        )
        np.testing.assert_allclose(out[members], alone, atol=1e-6)
    ode, sde = (run_prior_rows(prior, 0, None, None, seeds[:1], 4, sampler=s) for s in SAMPLERS)
    assert not np.allclose(ode, sde)  # the sampler is honoured
    np.testing.assert_array_equal(out[1][known[1]], pose[1][known[1]])  # completion keeps them


def test_bad_rows_are_refused_with_the_reason() -> None:
    prior = PosePrior(TINY).eval()
    with pytest.raises(ValueError, match="unknown prior task code 5: use 0 = generate"):
        parse_task(5)
    with pytest.raises(ValueError, match=f"steps must be between 1 and {MAX_STEPS}"):
        run_prior_rows(prior, PriorTask.GENERATE, None, None, np.arange(2), MAX_STEPS + 1)
    with pytest.raises(ValueError, match="complete task needs a body pose"):
        run_prior_rows(prior, PriorTask.COMPLETE, None, None, np.arange(2), 3)
    with pytest.raises(ValueError, match="unknown sampler code 2: use 0 = ode, 1 = sde"):
        group_rows(np.zeros(1), np.ones(1), np.zeros(1), np.array([2]))
    with pytest.raises(ValueError, match="one task, steps, noise level and sampler per row"):
        group_rows(np.zeros(3), np.ones(2), np.zeros(3))
