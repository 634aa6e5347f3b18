"""``bodyserve train prior``: mocap in, a published pose prior out.

Steps, all in the run folder ``--out``:

1. ingest every BVH / AMASS ``.npz`` under ``--data`` into ``dataset.npz`` (SMPL-X body_pose per
   frame, split by subject), or reuse it when ``dataset.json`` says it was built from the same
   inputs (file contents, fps, validation subjects, ingestion code);
2. train the diffusion prior with a progress bar; checkpoints go to ``checkpoints/``, metrics to
   ``metrics.jsonl``, a plain log to ``train.log``. ``--resume`` (default) continues from the
   newest checkpoint, so rerunning an interrupted command (Ctrl-C, a preempted Job) continues;
3. unless ``--no-publish``, publish ``prior.pt`` with ``record.json`` as the next version of
   ``<repository>/pose_prior`` and, with a Triton URL, make it live (see
   :mod:`services.trainer.publish`).

Entry points: ``bodyserve train prior ...`` and ``python -m services.trainer prior ...``.
Exit codes: 0 done, 1 failed (the message says why), 130 interrupted (rerun to continue).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
)
from rich.table import Table

from shared.settings import REPO_ROOT, get_settings

if TYPE_CHECKING:
    import numpy as np

    from shared.mocap import PoseDataset
    from shared.prior.training import TrainConfig, TrainProgress, TrainResult

DATASET_FILE = "dataset.npz"
DATASET_STAMP = "dataset.json"
LOG_FILE = "train.log"
MOCAP_SUFFIXES = (".bvh", ".npz")
INTERRUPTED_EXIT = 130

train_app = typer.Typer(help="Train bodyserve's models from data.", no_args_is_help=True)
console = Console()
logger = logging.getLogger("bodyserve.trainer")


@train_app.callback()
def _train_group() -> None:
    """Train bodyserve's models from data."""


# --------------------------------------------------------------------------- inputs


def mocap_files(data_dir: Path) -> list[Path]:
    """Every BVH / npz file under ``data_dir`` (recursive, sorted), as ingestion reads them."""
    return sorted(
        p for p in data_dir.rglob("*") if p.is_file() and p.suffix.lower() in MOCAP_SUFFIXES
    )


def _ingestion_code_hash() -> str:
    """Hash of the ingestion code: a dataset built by other code is rebuilt."""
    # torch and the training stack load when training runs, not with every `bodyserve` command.
    import shared.mocap

    digest = hashlib.sha256()
    package = Path(shared.mocap.__file__).parent
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()


def inputs_hash(
    data_dir: Path, files: list[Path], fps: float, valid_subjects: list[str] | None
) -> str:
    """sha256 over the mocap files (relative names and contents), the options and the code."""
    digest = hashlib.sha256()
    settings = {"fps": fps, "valid_subjects": valid_subjects, "code": _ingestion_code_hash()}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for path in files:
        digest.update(path.relative_to(data_dir).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def parse_subjects(text: str | None) -> list[str] | None:
    """``"6,9,16"`` -> ["6", "9", "16"] (numbers without leading zeros, as the dataset names
    subjects); None or empty -> None (the ingestion's default)."""
    if text is None or not text.strip():
        return None
    parts = [part.strip() for part in text.split(",") if part.strip()]
    return sorted({str(int(part)) if part.isdigit() else part for part in parts}, key=_subject_key)


def _subject_key(subject: str) -> tuple[int, str]:
    return (int(subject), "") if subject.isdigit() else (1 << 30, subject)


def _jsonable(value: Any) -> Any:
    """Numpy scalars and arrays, paths and other objects as JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    return str(value)


# --------------------------------------------------------------------------- the run


@dataclass
class PriorRun:
    """Everything ``bodyserve train prior`` was asked to do."""

    data: Path
    out: Path
    steps: int | None = None  # None: TrainConfig's default
    batch_size: int | None = None
    seed: int = 0
    fps: float = 30.0
    valid_subjects: list[str] | None = None  # None: the ingestion's default (6, 9, 16)
    resume: bool = True
    publish: bool = True
    repository: Path | None = None  # None: settings.model_repository
    triton_url: str | None = None
    checkpoint_every: int | None = None
    eval_every: int | None = None
    validate: bool = True  # in-process check before publishing (tests turn it off)


def _setup_log(out: Path) -> logging.Handler:
    handler = logging.FileHandler(out / LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def load_or_build_dataset(run: PriorRun) -> tuple[PoseDataset, dict[str, Any]]:
    """``OUT/dataset.npz``, rebuilt unless ``OUT/dataset.json`` matches the inputs' hash.

    Returns the dataset and its stamp (inputs hash, file count, options).
    """
    # torch and the training stack load when training runs, not with every `bodyserve` command.
    from shared.mocap import PoseDataset, build_dataset

    files = mocap_files(run.data)
    if not files:
        raise typer.BadParameter(
            f"no mocap under {run.data}: expected BVH (.bvh) or AMASS (.npz) files, searched "
            f"recursively",
            param_hint="--data",
        )
    digest = inputs_hash(run.data, files, run.fps, run.valid_subjects)
    dataset_path, stamp_path = run.out / DATASET_FILE, run.out / DATASET_STAMP
    if dataset_path.is_file() and stamp_path.is_file():
        stamp = json.loads(stamp_path.read_text())
        if stamp.get("inputs_hash") == digest:
            logger.info("reusing %s (inputs hash %s)", dataset_path, digest[:12])
            console.print(f"dataset: reusing {dataset_path} (same {len(files)} input files)")
            return PoseDataset.load(dataset_path), stamp
        logger.info("inputs changed (hash %s -> %s): rebuilding", stamp.get("inputs_hash"), digest)

    started = time.perf_counter()
    with Progress(
        TextColumn("ingesting mocap"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("", total=len(files))

        def report(done: int, total: int, name: str) -> None:
            bar.update(task, completed=done, total=total, description=Path(name).name)

        kwargs: dict[str, Any] = {"fps": run.fps, "progress": report}
        if run.valid_subjects is not None:
            kwargs["valid_subjects"] = run.valid_subjects
        dataset = build_dataset(run.data, **kwargs)
    dataset.save(dataset_path)
    stamp = {
        "inputs_hash": digest,
        "files": len(files),
        "fps": run.fps,
        "valid_subjects": run.valid_subjects,
        "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "build_s": round(time.perf_counter() - started, 2),
    }
    stamp_path.write_text(json.dumps(stamp, indent=2) + "\n")
    logger.info("built %s from %d files in %.1f s", dataset_path, len(files), stamp["build_s"])
    return dataset, stamp


def _newest_checkpoint_step(out: Path) -> int | None:
    # torch and the training stack load when training runs, not with every `bodyserve` command.
    from shared.prior.training import CHECKPOINT_DIR

    steps = [int(p.stem.split("_")[-1]) for p in (out / CHECKPOINT_DIR).glob("step_*.pt")]
    return max(steps, default=None)


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return str(dt.timedelta(seconds=round(seconds)))


def train_with_progress(
    train_poses: np.ndarray, valid_poses: np.ndarray, config: TrainConfig, run: PriorRun
) -> TrainResult:
    """Train (N, 21, 3) and valid (M, 21, 3) body poses -> the trained prior, with
    :func:`shared.prior.training.train` under a rich progress bar, evaluations logged."""
    # torch and the training stack load when training runs, not with every `bodyserve` command.
    from shared.prior.training import train

    with Progress(
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("valid {task.fields[valid]}"),
        TextColumn("{task.fields[rate]} steps/s"),
        TextColumn("ETA {task.fields[eta]}"),
        console=console,
    ) as bar:
        task = bar.add_task("train", total=config.steps, loss="-", valid="-", rate="-", eta="?")
        start = _newest_checkpoint_step(run.out) if run.resume else None
        if start:
            bar.update(task, completed=start)

        def report(p: TrainProgress) -> None:
            fields: dict[str, Any] = {
                "loss": f"{p.loss:.4f}",
                "rate": f"{p.steps_per_s:.1f}",
                "eta": _format_eta(p.eta_s),
            }
            if p.valid_loss is not None:
                fields["valid"] = f"{p.valid_loss:.4f}"
                logger.info(
                    "step %d/%d loss %.5f valid %.5f %.1f steps/s eta %s",
                    p.step,
                    p.total,
                    p.loss,
                    p.valid_loss,
                    p.steps_per_s,
                    _format_eta(p.eta_s),
                )
            bar.update(task, completed=p.step, **fields)

        return train(train_poses, valid_poses, config, run.out, resume=run.resume, progress=report)


def machine_info() -> dict[str, Any]:
    """Where the prior was trained (a record's ``machine``)."""
    # torch and the training stack load when training runs, not with every `bodyserve` command.
    import torch

    return {
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10
    ).stdout


def software_info() -> dict[str, Any]:
    """bodyserve's version and, in a git checkout, the commit (None in an image without git)."""

    try:
        package_version: str | None = version("bodyserve")
    except PackageNotFoundError:
        package_version = None
    commit: str | None = None
    dirty: bool | None = None
    try:
        commit = _git("rev-parse", "HEAD").strip()
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"bodyserve": package_version, "git_commit": commit, "git_dirty": dirty}


def build_record(
    run: PriorRun,
    dataset: PoseDataset,
    stamp: dict[str, Any],
    config: TrainConfig,
    result: TrainResult,
    frames: dict[str, int],
    session_s: float,
) -> dict[str, Any]:
    """How the prior was trained: what ``record.json`` of a published version holds."""
    metadata = dataset.metadata
    return _jsonable(
        {
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "data_dir": str(run.data.resolve()),
            "run_dir": str(run.out.resolve()),
            "dataset": {
                "inputs_hash": stamp.get("inputs_hash"),
                "files": stamp.get("files"),
                "fps": run.fps,
                "frames": frames,
                "metadata": metadata,
            },
            "valid_subjects": metadata.get("valid_subjects", run.valid_subjects),
            "steps": result.steps,
            "batch_size": config.batch_size,
            "seed": config.seed,
            "config": config.to_dict(),
            "metrics": result.metrics,
            "train_wall_time_s": round(result.elapsed_s, 2),
            "session_wall_time_s": round(session_s, 2),
            "machine": machine_info(),
            "software": software_info(),
        }
    )


def run_prior_training(run: PriorRun) -> dict[str, Any]:
    """The whole command without the command line: ingest, train, publish.

    Returns a summary (``steps``, ``metrics``, ``prior``, ``published_version``, ...). Raises
    ``typer.BadParameter`` for bad options, :class:`services.trainer.publish.PublishError` when
    publishing fails, ``KeyboardInterrupt`` when interrupted.
    """
    # torch and the training stack load when training runs, not with every `bodyserve` command.
    from shared.prior.training import TrainConfig

    started = time.perf_counter()
    threads = get_settings().torch_threads
    if threads > 0:  # BODYSERVE_TORCH_THREADS: small networks on a busy machine like 1
        import torch

        torch.set_num_threads(threads)
    if not run.data.is_dir():
        raise typer.BadParameter(f"{run.data} is not a folder", param_hint="--data")
    if run.out.resolve().is_relative_to(run.data.resolve()):
        # Its dataset.npz would be read back as mocap on the next run.
        raise typer.BadParameter(
            f"the run folder {run.out} is inside the mocap folder {run.data}: choose one outside",
            param_hint="--out",
        )
    run.out.mkdir(parents=True, exist_ok=True)
    handler = _setup_log(run.out)
    try:
        logger.info("bodyserve train prior: data %s out %s", run.data, run.out)
        dataset, stamp = load_or_build_dataset(run)
        train_set, valid_set = dataset.subset("train"), dataset.subset("valid")
        frames = {"train": len(train_set.body_pose), "valid": len(valid_set.body_pose)}
        logger.info("dataset: %d train frames, %d valid frames", frames["train"], frames["valid"])
        console.print(f"dataset: {frames['train']} train frames, {frames['valid']} valid frames")
        if frames["train"] == 0:
            raise typer.BadParameter(
                f"no training frames in {run.data}: every subject is a validation subject "
                f"({dataset.metadata.get('valid_subjects')}); choose others with "
                f"--valid-subjects",
                param_hint="--valid-subjects",
            )

        overrides: dict[str, Any] = {
            name: value
            for name, value in (
                ("steps", run.steps),
                ("batch_size", run.batch_size),
                ("checkpoint_every", run.checkpoint_every),
                ("eval_every", run.eval_every),
            )
            if value is not None
        }
        try:
            config = TrainConfig(seed=run.seed, **overrides)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        resumed_from = _newest_checkpoint_step(run.out) if run.resume else None
        if resumed_from:
            message = f"resuming from the checkpoint of step {resumed_from}/{config.steps}"
        else:
            message = f"training from scratch: {config.steps} steps, batch {config.batch_size}"
        logger.info(message)
        console.print(message)
        try:
            result = train_with_progress(train_set.body_pose, valid_set.body_pose, config, run)
        except ValueError as exc:
            if "resume" in str(exc):  # a checkpoint of another config or dataset
                raise typer.BadParameter(f"{exc} (--no-resume starts over)") from exc
            raise
        logger.info("trained %d steps: %s", result.steps, json.dumps(_jsonable(result.metrics)))
        summary: dict[str, Any] = {
            "steps": result.steps,
            "resumed_from": resumed_from,
            "metrics": result.metrics,
            "prior": str(result.path),
            "train_wall_time_s": result.elapsed_s,
            "published_version": None,
        }
        if run.publish:
            from services.trainer.publish import publish_prior

            record = build_record(
                run, dataset, stamp, config, result, frames, time.perf_counter() - started
            )
            repository = run.repository or get_settings().model_repository
            published = publish_prior(
                result.path,
                record,
                repository,
                triton_url=run.triton_url,
                validate=run.validate,
                log=_log_and_print,
            )
            summary.update(
                published_version=published.version,
                version_dir=str(published.version_dir),
                created=published.created,
                served_version=published.served_version,
                reloaded=published.reloaded,
            )
        return summary
    except KeyboardInterrupt:
        step = _newest_checkpoint_step(run.out)
        where = f"the checkpoint of step {step}" if step else "the start (no checkpoint yet)"
        logger.warning("interrupted: rerun the same command to continue from %s", where)
        raise
    except Exception as exc:
        logger.error("failed: %s: %s", type(exc).__name__, exc)
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()


def _log_and_print(message: str) -> None:
    logger.info(message)
    console.print(message)


def _print_summary(summary: dict[str, Any]) -> None:
    table = Table(title="pose prior", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("steps", str(summary["steps"]))
    for name, value in summary["metrics"].items():
        shown = f"{value:.5f}" if isinstance(value, float) else str(value)
        table.add_row(name, shown)
    table.add_row("prior", summary["prior"])
    if summary["published_version"] is not None:
        table.add_row("published", f"version {summary['published_version']}")
        table.add_row("version folder", summary["version_dir"])
        if summary.get("served_version") is not None:
            table.add_row("Triton serves", f"version {summary['served_version']}")
            table.add_row("reloaded", ", ".join(summary["reloaded"]))
    console.print(table)


@train_app.command("prior")
def prior(
    data: Annotated[
        Path, typer.Option("--data", help="Mocap folder: BVH or AMASS .npz, searched recursively.")
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="Run folder: dataset.npz, checkpoints/, metrics.jsonl, train.log."
        ),
    ],
    steps: Annotated[
        int | None, typer.Option(help="Training steps (default: TrainConfig's).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Poses per step (default: TrainConfig's).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the whole run.")] = 0,
    fps: Annotated[float, typer.Option(help="Frame rate the mocap is resampled to.")] = 30.0,
    valid_subjects: Annotated[
        str | None,
        typer.Option(help="CMU subjects held out for validation, e.g. 6,9,16."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the run folder's newest checkpoint.")
    ] = True,
    publish: Annotated[
        bool, typer.Option(help="Publish the prior as the next pose_prior version.")
    ] = True,
    repository: Annotated[
        Path | None,
        typer.Option(help="Triton model repository (default: BODYSERVE_MODEL_REPOSITORY)."),
    ] = None,
    triton_url: Annotated[
        str | None,
        typer.Option(help="Triton gRPC host:port to hot-reload (default: BODYSERVE_TRITON_URL)."),
    ] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="Steps between checkpoints (default: TrainConfig's).")
    ] = None,
    eval_every: Annotated[
        int | None, typer.Option(help="Steps between validations (default: TrainConfig's).")
    ] = None,
    skip_validation: Annotated[
        bool, typer.Option("--skip-validation", hidden=True, help="Tests only.")
    ] = False,
) -> None:
    """Train the pose prior on mocap, then publish it (and hot-reload Triton)."""
    # torch and the training stack load when training runs, not with every `bodyserve` command.
    from services.trainer.publish import PublishError

    run = PriorRun(
        data=data,
        out=out,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        fps=fps,
        valid_subjects=parse_subjects(valid_subjects),
        resume=resume,
        publish=publish,
        repository=repository,
        triton_url=triton_url if triton_url is not None else get_settings().triton_url,
        checkpoint_every=checkpoint_every,
        eval_every=eval_every,
        validate=not skip_validation,
    )
    try:
        summary = run_prior_training(run)
    except KeyboardInterrupt:
        step = _newest_checkpoint_step(out)
        where = f"the checkpoint of step {step}" if step else "the start (no checkpoint yet)"
        console.print(f"[yellow]interrupted: rerun the same command to continue from {where}")
        raise typer.Exit(INTERRUPTED_EXIT) from None
    except PublishError as exc:
        console.print(f"[red]publishing failed: {exc}")
        raise typer.Exit(1) from exc
    _print_summary(summary)


if __name__ == "__main__":
    train_app()
