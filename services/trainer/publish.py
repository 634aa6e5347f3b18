"""Publishing a trained pose prior as the next version of the ``pose_prior`` Triton model.

Protocol (:func:`publish_prior`), under a lock file so two publishers never race:

1. make sure the repository has the model folder (``config.pbtxt``, ``model.py``,
   ``bootstrap.py``), copied from this checkout's ``model_repository/`` when missing (a fresh
   volume);
2. if the newest published version holds the same ``prior.pt`` (sha256), publish nothing: a
   rerun of a finished job is a no-op apart from the Triton reload;
3. write ``prior.pt``, ``record.json`` and the link ``model.py -> ../model.py`` (Triton's
   python backend runs ``<N>/model.py``; the code is the model's one implementation,
   ``pose_prior/model.py``, never a copy: docs/model_versions.md) into a hidden staging folder
   ``pose_prior/.staging-<N>-<pid>`` (Triton skips hidden folders), validate it in-process
   (load, run the three tasks, check finite), then rename it to ``pose_prior/<N>`` (atomic);
4. with a Triton URL: ask Triton (explicit model control) to load ``pose_prior`` again and
   check that version N is READY, then reload the loaded models that read the prior when they
   load (:data:`PRIOR_DEPENDENT_MODELS`).

What Triton 2.51 does when it cannot load version N (measured with the wheel's tritonserver,
explicit model control, python backend): ``load_model`` raises, the previous version stays
READY and keeps answering, and version N stays listed as UNAVAILABLE, which makes a
``--strict-readiness`` server report *not ready* (the model itself is ready) until a version
N loads or the server restarts; unloading and loading the model again does not clear it. The
broken folder would still be picked by the next load or restart and by
:func:`shared.prior.registry.load_latest_prior`, so it is moved to
``pose_prior/.rejected/<N>-<UTC time>/`` (its files kept, plus ``REJECTED.txt``, less the
``model.py`` link, which would point nowhere there; inside the model folder because Triton
takes any folder at the repository root for a model), Triton is asked
to load the model again only if the previous version is not READY (a load request after a
failed one reloads the serving version for nothing) and :class:`PublishError` says what
happened. The next publish reuses the number N, which brings the server's readiness back.

Models that read the prior when they load (``body_fit``) are reloaded by touching their version
folders first: Triton 2.51 reloads a model on ``load_model`` only when a version folder's
modification time changed (touching ``config.pbtxt`` or the model folder is not enough).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from shared.prior.model import PRIOR_FILENAME, PosePrior
from shared.prior.registry import (
    MODEL_FILENAME,
    MODEL_NAME,
    RECORD_FILENAME,
    REJECTED_DIR,
    is_published,
    latest_version,
    list_versions,
    next_version,
    read_record,
)
from shared.prior.rows import PriorTask, run_prior_rows
from shared.settings import REPO_ROOT
from shared.storage import file_sha256

PRIOR_DEPENDENT_MODELS: tuple[str, ...] = ("body_fit", "motion_denoise")
"""Triton models that read the newest prior when they load: reloaded after a publish (when
loaded), so that they use the new version too."""

BOOTSTRAP_FILENAME = "bootstrap.py"
CONFIG_FILENAME = "config.pbtxt"
LOCK_FILENAME = ".publish.lock"
REJECTED_NOTE = "REJECTED.txt"
SOURCE_REPOSITORY = REPO_ROOT / "model_repository"
"""This checkout's model repository: where a fresh repository's model folder comes from."""


class PublishError(RuntimeError):
    """Publishing failed; the message says what happened and what still serves."""

    def __init__(
        self,
        message: str,
        *,
        version: int | None = None,
        rejected_dir: Path | None = None,
        serving_version: int | None = None,
    ) -> None:
        super().__init__(message)
        self.version = version
        self.rejected_dir = rejected_dir
        self.serving_version = serving_version


@dataclass
class PublishResult:
    """What :func:`publish_prior` did."""

    version: int  # the version that holds this prior (new, or the existing identical one)
    version_dir: Path
    created: bool  # False: the newest version already held this prior
    triton_url: str | None = None
    served_version: int | None = None  # the version Triton reports READY (None: no Triton)
    reloaded: list[str] = field(default_factory=list)  # Triton models loaded again, in order


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --------------------------------------------------------------------------- the repository


def ensure_model_folder(repository: Path, model_name: str = MODEL_NAME) -> Path:
    """``<repository>/<model_name>`` with its config, its ``model.py`` (the code every version
    links to) and the repository's ``bootstrap.py``, each copied from this checkout when
    missing. Returns the model folder."""
    repository = Path(repository)
    model_dir = repository / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    wanted = {
        model_dir / CONFIG_FILENAME: SOURCE_REPOSITORY / MODEL_NAME / CONFIG_FILENAME,
        model_dir / MODEL_FILENAME: SOURCE_REPOSITORY / MODEL_NAME / MODEL_FILENAME,
        repository / BOOTSTRAP_FILENAME: SOURCE_REPOSITORY / BOOTSTRAP_FILENAME,
    }
    for target, source in wanted.items():
        if not target.exists():
            if not source.is_file():
                raise PublishError(f"{target} is missing and there is no {source} to copy")
            shutil.copy2(source, target)
    return model_dir


@contextlib.contextmanager
def _publish_lock(model_dir: Path) -> Iterator[None]:
    """One publisher per model folder at a time (an advisory lock on a hidden file)."""
    with open(model_dir / LOCK_FILENAME, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def validate_version_dir(version_dir: Path, rows: int = 2, steps: int = 4) -> None:
    """Loads the folder's prior and runs every task on a few rows; raises ``ValueError`` when a
    result is not finite or not (rows, 21, 3), and whatever loading raises."""

    prior = PosePrior.load(version_dir / PRIOR_FILENAME)
    seeds = np.arange(rows, dtype=np.int64)
    pose = np.zeros((rows, 21, 3), np.float32)
    known = np.zeros((rows, 21), bool)
    known[:, :10] = True
    for task in PriorTask:
        out = run_prior_rows(prior, task, pose, known, seeds, steps, noise_level=0.2)
        if out.shape != (rows, 21, 3) or not np.isfinite(out).all():
            raise ValueError(
                f"{task.name.lower()} gave a non-finite or misshapen result {out.shape}"
            )


def _reject(model_dir: Path, version_dir: Path, version: int, reason: str) -> Path:
    """Moves a version folder to ``<model_dir>/.rejected/<N>-<time>/`` with a note."""
    stamp = _utc_now().strftime("%Y%m%dT%H%M%S%fZ")
    target = model_dir / REJECTED_DIR / f"{version}-{stamp}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(version_dir), str(target))
    code = target / MODEL_FILENAME
    if code.is_symlink():  # the link to ../model.py: the code is the model's, not the version's
        code.unlink()
    (target / REJECTED_NOTE).write_text(f"rejected at {stamp}\n{reason}\n")
    return target


# --------------------------------------------------------------------------- Triton


def _strip_scheme(url: str) -> str:
    for scheme in ("grpc://", "http://", "https://"):
        if url.startswith(scheme):
            return url[len(scheme) :]
    return url


def _loaded_models(client: Any, timeout_s: float) -> set[str]:
    index = client.get_model_repository_index(as_json=True, client_timeout=timeout_s)
    return {m["name"] for m in index.get("models", []) if m.get("state") == "READY"}


def _ready_versions(client: Any, model_name: str, timeout_s: float) -> list[int]:
    index = client.get_model_repository_index(as_json=True, client_timeout=timeout_s)
    return sorted(
        int(m["version"])
        for m in index.get("models", [])
        if m.get("name") == model_name and m.get("state") == "READY" and m.get("version")
    )


def reload_in_triton(
    repository: Path,
    version: int,
    triton_url: str,
    *,
    model_name: str = MODEL_NAME,
    timeout_s: float = 300.0,
    log: Callable[[str], None] = lambda message: None,
) -> tuple[int, list[str]]:
    """Asks Triton to load ``model_name`` again and checks that ``version`` is READY, then
    reloads the loaded :data:`PRIOR_DEPENDENT_MODELS`. Returns (served version, reloaded).

    When Triton cannot load ``version``, the folder is moved to ``.rejected/``, Triton is asked
    to load the model again (the previous version) and :class:`PublishError` is raised.
    """

    model_dir = Path(repository) / model_name
    url = _strip_scheme(triton_url)
    client = grpcclient.InferenceServerClient(url)
    try:
        try:
            loaded_before = _loaded_models(client, timeout_s=10.0)
        except InferenceServerException as exc:
            raise PublishError(
                f"version {version} is published in {model_dir}, but Triton at {url} did not "
                f"answer ({exc.message()}): it serves the version when it starts, or rerun "
                f"this command to reload it",
                version=version,
            ) from exc

        if client.is_model_ready(model_name, str(version), client_timeout=10.0):
            log(f"Triton at {url} already serves {model_name} version {version}")
            return version, []
        log(f"asking Triton at {url} to load {model_name} version {version}")
        failure: str | None = None
        try:
            client.load_model(model_name, client_timeout=timeout_s)
            if not client.is_model_ready(model_name, str(version), client_timeout=10.0):
                failure = f"Triton loaded {model_name} but version {version} is not ready"
        except InferenceServerException as exc:
            failure = exc.message() or str(exc)
            if "not allowed" in failure:  # Triton polls, or has model control off
                raise PublishError(
                    f"version {version} is published in {model_dir}, but Triton at {url} does "
                    f"not take load requests ({failure}): run it with "
                    f"--model-control-mode=explicit, or let it poll the repository",
                    version=version,
                ) from exc
        if failure is not None:
            raise _roll_back(client, model_dir, version, failure, timeout_s, log)

        reloaded = [model_name]
        problems = []
        for dependent in PRIOR_DEPENDENT_MODELS:
            if dependent not in loaded_before or dependent == model_name:
                continue
            log(f"reloading {dependent} (it reads the prior when it loads)")
            try:
                # Triton reloads only a model whose version folders changed: touch them.
                for version_folder in list_versions(Path(repository) / dependent):
                    os.utime(Path(repository) / dependent / str(version_folder))
                client.load_model(dependent, client_timeout=timeout_s)
                reloaded.append(dependent)
            except (InferenceServerException, OSError) as exc:
                message = exc.message() if isinstance(exc, InferenceServerException) else exc
                problems.append(f"{dependent}: {message}")
        if problems:
            raise PublishError(
                f"{model_name} version {version} is live, but reloading the models that use it "
                f"failed (they keep their previous prior): {'; '.join(problems)}",
                version=version,
                serving_version=version,
            )
        return version, reloaded
    finally:
        client.close()


def _roll_back(
    client: Any,
    model_dir: Path,
    version: int,
    failure: str,
    timeout_s: float,
    log: Callable[[str], None],
) -> PublishError:
    """Moves the version Triton refused out of the repository and loads the model again."""

    model_name = model_dir.name
    log(f"Triton refused {model_name} version {version}: {failure}")
    rejected = _reject(model_dir, model_dir / str(version), version, failure)
    log(f"moved version {version} to {rejected}")
    serving: int | None = None
    after = ""
    try:
        # Triton keeps the previous version serving through a failed load; loading the model
        # again would reload that version for nothing, so only when it is not ready.
        ready = _ready_versions(client, model_name, timeout_s=10.0)
        if not ready:
            client.load_model(model_name, client_timeout=timeout_s)
            ready = _ready_versions(client, model_name, timeout_s=10.0)
        serving = ready[-1] if ready else None
    except InferenceServerException as exc:
        after = f"; reloading without it failed too: {exc.message()}"
    still = f"version {serving} still serves" if serving else "no version of it is ready"
    return PublishError(
        f"Triton could not load {model_name} version {version} ({failure}); {still}{after}. "
        f"The rejected files are in {rejected}",
        version=version,
        rejected_dir=rejected,
        serving_version=serving,
    )


# --------------------------------------------------------------------------- publishing


def publish_prior(
    prior_path: Path,
    record: dict[str, Any],
    repository: Path,
    *,
    triton_url: str | None = None,
    model_name: str = MODEL_NAME,
    validate: bool = True,
    timeout_s: float = 300.0,
    log: Callable[[str], None] = lambda message: None,
) -> PublishResult:
    """Publishes ``prior_path`` (a ``prior.pt``) with ``record`` as the next version of
    ``<repository>/<model_name>``, then makes it live in Triton at ``triton_url`` (if given).

    ``validate=False`` skips the in-process check (tests use it to publish a broken version).
    Raises :class:`PublishError` (the message says what still serves) on any failure.
    """
    prior_path = Path(prior_path)
    if not prior_path.is_file():
        raise PublishError(f"no prior to publish at {prior_path}: train one first")
    model_dir = ensure_model_folder(Path(repository), model_name)
    digest = file_sha256(prior_path)
    with _publish_lock(model_dir):
        newest = latest_version(model_dir)
        if (
            newest is not None
            and read_record(model_dir / str(newest)).get("prior_sha256") == digest
        ):
            log(f"version {newest} already holds this prior: nothing new to publish")
            result = PublishResult(newest, model_dir / str(newest), created=False)
        else:
            result = _stage_and_rename(
                model_dir, prior_path, record, digest, validate=validate, log=log
            )
    if triton_url:
        result.triton_url = triton_url
        result.served_version, result.reloaded = reload_in_triton(
            Path(repository),
            result.version,
            triton_url,
            model_name=model_name,
            timeout_s=timeout_s,
            log=log,
        )
    return result


def _stage_and_rename(
    model_dir: Path,
    prior_path: Path,
    record: dict[str, Any],
    digest: str,
    *,
    validate: bool,
    log: Callable[[str], None],
) -> PublishResult:
    version = next_version(model_dir)
    staging = model_dir / f".staging-{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        # The model's one implementation, linked (relative: the folder is renamed, and the
        # repository may be mounted anywhere).
        os.symlink(Path(os.pardir) / MODEL_FILENAME, staging / MODEL_FILENAME)
        # Triton 2.51 reloads a version whose folder's mtime changed, and the python stub's
        # bytecode cache would create __pycache__ in it on the first load: make it now, so
        # that later load requests (a rollback, a rerun) leave this version alone.
        (staging / "__pycache__").mkdir()
        shutil.copy2(prior_path, staging / PRIOR_FILENAME)
        full_record = {
            **record,
            "model_name": model_dir.name,
            "version": version,
            "published_at": _utc_now().isoformat(timespec="seconds"),
            "prior_sha256": digest,
            "prior_bytes": prior_path.stat().st_size,
        }
        (staging / RECORD_FILENAME).write_text(json.dumps(full_record, indent=2) + "\n")
        if validate:
            log(f"validating version {version} in-process")
            try:
                validate_version_dir(staging)
            except Exception as exc:
                raise PublishError(
                    f"the prior at {prior_path} fails validation, nothing published: "
                    f"{type(exc).__name__}: {exc}",
                    version=version,
                ) from exc
        if not is_published(staging):
            raise PublishError(f"staging folder {staging} is incomplete, nothing published")
        target = model_dir / str(version)
        os.rename(staging, target)  # atomic: Triton never sees a half-written version
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"published {model_dir.name} version {version} at {target}")
    return PublishResult(version, target, created=True)
