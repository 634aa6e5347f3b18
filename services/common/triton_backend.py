"""The Triton client side of :class:`shared.inference.InferenceBackend`.

:class:`TritonBackend` sends detection and fitting to the ``keypoints_2d`` and ``body_fit``
models of ``model_repository/`` over gRPC, pose-prior rows to ``pose_prior`` and keypoint
tracks to ``pose_lift`` (in chunks of their ``max_batch_size``), motions to ``motion_denoise``,
and converts the tensors back to the domain types (:class:`PersonKeypoints`,
:class:`FitOutputs`, :class:`PriorRows`, :class:`LiftOutputs`, :class:`MotionOutputs`), so the
pipeline never sees Triton.

Errors:

- server down, connection refused or dropped, deadline exceeded, model (re)loading or not
  ready: :class:`shared.inference.InferenceUnavailable` (transient, retry later);
- anything the model itself rejected or raised: :class:`shared.inference.InferenceError`
  with the server's message (not retryable).

One gRPC client per process and URL, created lazily and reused; a forked child (Celery's
prefork pool) makes its own, since gRPC channels do not survive a fork. Its channel tries to
reconnect to a server that went away every second or two (gRPC's default backoff grows to two
minutes, failing every call meanwhile: a restarted Triton looked down long after it was back).
"""

from __future__ import annotations

import os
import threading
from dataclasses import fields
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from shared.inference.contracts import (
    FIT_OUTPUT_TENSORS,
    PRIOR_CODES,
    FitInputs,
    FitOutputs,
    InferenceBackend,
    InferenceError,
    InferenceUnavailable,
    LiftInputs,
    LiftOutputs,
    MotionInputs,
    MotionOutputs,
    PriorRows,
)
from shared.inference.local import InProcessBackend
from shared.keypoints.formats import PersonKeypoints
from shared.settings import Settings, get_settings

KEYPOINTS_MODEL = "keypoints_2d"
FIT_MODEL = "body_fit"
FIT_MAX_BATCH = 32  # body_fit's max_batch_size; read from the server when it can be
PRIOR_MODEL = "pose_prior"
PRIOR_MAX_BATCH = 256  # pose_prior's max_batch_size; read from the server when it can be
PRIOR_SAMPLERS = {"ode": 0, "sde": 1}  # codes of pose_prior's optional SAMPLER input
MOTION_MODEL = "motion_denoise"
MOTION_OUTPUTS = ("GLOBAL_ORIENT", "BODY_POSE", "PELVIS", "JOINTS", "PHENOTYPE", "PRIOR_VERSION")
LIFT_MODEL = "pose_lift"
LIFT_MAX_BATCH = 64  # pose_lift's max_batch_size (tracks); read from the server when it can be
# pose_lift's output tensors: each LiftOutputs field, upper-cased.
LIFT_OUTPUTS: dict[str, str] = {f.name.upper(): f.name for f in fields(LiftOutputs)}

FIT_OUTPUTS = FIT_OUTPUT_TENSORS
DETECT_OUTPUTS = ("COUNT", "BODY", "HANDS", "HAND_PRESENT", "BBOX", "SCORE")

# gRPC status codes that mean "not now" rather than "never".
_TRANSIENT_STATUS = {
    "StatusCode.UNAVAILABLE",
    "StatusCode.DEADLINE_EXCEEDED",
    "StatusCode.RESOURCE_EXHAUSTED",
    "StatusCode.CANCELLED",
    "StatusCode.ABORTED",
}
# Triton's messages for a model that is loading, unloading or absent during a hot reload.
_TRANSIENT_MESSAGES = (
    "is not ready",
    "unavailable",
    "is not found",
    "failed to connect",
    "connection refused",
    "socket closed",
    "deadline exceeded",
    "stub process is not healthy",  # the python backend restarts a crashed stub
)

# tritonclient's own channel options (unlimited messages, its keepalive defaults), plus a short
# reconnection backoff.
_KEEPALIVE = grpcclient.KeepAliveOptions()
CHANNEL_ARGS: list[tuple[str, int | bool]] = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.keepalive_time_ms", _KEEPALIVE.keepalive_time_ms),
    ("grpc.keepalive_timeout_ms", _KEEPALIVE.keepalive_timeout_ms),
    ("grpc.keepalive_permit_without_calls", _KEEPALIVE.keepalive_permit_without_calls),
    ("grpc.http2.max_pings_without_data", _KEEPALIVE.http2_max_pings_without_data),
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

_clients: dict[tuple[int, str], grpcclient.InferenceServerClient] = {}
_clients_lock = threading.Lock()


def _strip_scheme(url: str) -> str:
    for scheme in ("grpc://", "http://", "https://"):
        if url.startswith(scheme):
            return url[len(scheme) :]
    return url


def get_client(url: str) -> grpcclient.InferenceServerClient:
    """This process's gRPC client for ``url`` (``host:port``), created on first use."""
    key = (os.getpid(), _strip_scheme(url))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            for stale in [k for k in _clients if k[0] != key[0]]:
                del _clients[stale]  # inherited through fork: never use, never close
            client = grpcclient.InferenceServerClient(key[1], channel_args=CHANNEL_ARGS)
            _clients[key] = client
        return client


def _is_transient(exc: InferenceServerException) -> bool:
    status = str(exc.status() or "")
    if status in _TRANSIENT_STATUS:
        return True
    message = (exc.message() or str(exc)).lower()
    return any(marker in message for marker in _TRANSIENT_MESSAGES)


def translate_error(exc: InferenceServerException, model: str) -> Exception:
    """:class:`InferenceUnavailable` for transient failures, :class:`InferenceError` else."""
    message = exc.message() or str(exc)
    if _is_transient(exc):
        return InferenceUnavailable(f"Triton {model}: {message}")
    return InferenceError(f"Triton {model}: {message}")


class TritonBackend:
    """:class:`InferenceBackend` served by Triton (gRPC at ``url``, ``host:port``)."""

    def __init__(
        self,
        url: str,
        timeout_s: float = 60.0,
        *,
        keypoints_model: str = KEYPOINTS_MODEL,
        fit_model: str = FIT_MODEL,
        model_version: str = "",
    ) -> None:
        self.url = _strip_scheme(url)
        self.timeout_s = timeout_s
        self.keypoints_model = keypoints_model
        self.fit_model = fit_model
        self.model_version = model_version  # "": Triton's version policy (latest)
        self._fit_max_batch: int | None = None
        self._prior_config_cache: tuple[int, set[str]] | None = None
        self._lift_max_batch: int | None = None

    @property
    def client(self) -> grpcclient.InferenceServerClient:
        return get_client(self.url)

    def _infer(
        self, model: str, inputs: list[grpcclient.InferInput], outputs: tuple[str, ...]
    ) -> dict[str, np.ndarray]:
        return self._infer_versioned(model, inputs, outputs)[0]

    def _infer_versioned(
        self, model: str, inputs: list[grpcclient.InferInput], outputs: tuple[str, ...]
    ) -> tuple[dict[str, np.ndarray], str]:
        """The outputs, and the version of ``model`` that computed them."""
        requested = [grpcclient.InferRequestedOutput(name) for name in outputs]
        try:
            result = self.client.infer(
                model,
                inputs,
                model_version=self.model_version,
                outputs=requested,
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as exc:
            raise translate_error(exc, model) from exc
        # Copies: as_numpy() views the response buffer read-only; the in-process backend's
        # arrays are writable, and callers may rely on that.
        arrays = {name: np.array(result.as_numpy(name)) for name in outputs}
        return arrays, str(result.get_response().model_version)

    # --- detection ------------------------------------------------------------------------

    def detect(self, image: np.ndarray, max_people: int) -> list[PersonKeypoints]:
        image = np.ascontiguousarray(image, dtype=np.uint8)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB (H, W, 3) image, got shape {image.shape}")
        if max_people <= 0:
            return []
        tensors = [
            _input("IMAGE", image[None]),
            _input("MAX_PEOPLE", np.array([[max_people]], np.int32)),
        ]
        out = self._infer(self.keypoints_model, tensors, DETECT_OUTPUTS)
        return unpack_people(out)[0]

    # --- fitting --------------------------------------------------------------------------

    def fit(self, inputs: FitInputs) -> FitOutputs:
        people = len(inputs.body)
        if people == 0:
            return _empty_fit()
        step = self._max_fit_batch()
        parts = [self._fit_chunk(inputs, start, start + step) for start in range(0, people, step)]
        if len(parts) == 1:
            return parts[0]
        return FitOutputs(
            **{
                field: np.concatenate([getattr(p, field) for p in parts])
                for field in FIT_OUTPUTS.values()
            }
        )

    def _fit_chunk(self, inputs: FitInputs, start: int, stop: int) -> FitOutputs:
        body = np.asarray(inputs.body[start:stop], np.float32)
        count = len(body)
        tensors = [
            _input("BODY", body),
            _input("HANDS", np.asarray(inputs.hands[start:stop], np.float32)),
            _input("CAMERA", np.asarray(inputs.camera[start:stop], np.float32)),
            _input("ITERATIONS", np.full((count, 1), inputs.iterations, np.int32)),
            _input("SEED", np.full((count, 1), inputs.seed, np.int64)),
        ]
        if inputs.prior is not None:  # absent: the model's default (pose_prior if published)
            if inputs.prior not in PRIOR_CODES:
                raise ValueError(f"unknown prior {inputs.prior!r}: use {', '.join(PRIOR_CODES)}")
            code = PRIOR_CODES[inputs.prior]
            tensors.append(_input("PRIOR", np.full((count, 1), code, np.int32)))
        out = self._infer(self.fit_model, tensors, tuple(FIT_OUTPUTS))
        fields = {FIT_OUTPUTS[name]: value for name, value in out.items()}
        fields["reprojection_error"] = fields["reprojection_error"].reshape(count)
        fields["prior_version"] = fields["prior_version"].reshape(count).astype(np.int32)
        return FitOutputs(**fields)

    def _max_fit_batch(self) -> int:
        if self._fit_max_batch is None:
            try:
                config = self.client.get_model_config(
                    self.fit_model, self.model_version, as_json=True, client_timeout=self.timeout_s
                )
                self._fit_max_batch = (
                    int(config["config"].get("max_batch_size", 0)) or FIT_MAX_BATCH
                )
            except InferenceServerException as exc:
                raise translate_error(exc, self.fit_model) from exc
        return self._fit_max_batch

    # --- pose prior -----------------------------------------------------------------------

    def prior(
        self,
        task: int,
        pose: np.ndarray | None,
        known: np.ndarray | None,
        seeds: np.ndarray,
        steps: int,
        noise_level: float = 0.0,
        sampler: str = "ode",
    ) -> PriorRows:
        seed_rows = np.asarray(seeds, np.int64).reshape(-1)
        rows = len(seed_rows)
        if rows == 0:
            raise ValueError("no rows: give at least one seed")
        pose_rows = np.zeros((rows, 21, 3), np.float32) if pose is None else pose
        known_rows = np.zeros((rows, 21), np.bool_) if known is None else known
        pose_rows = np.ascontiguousarray(pose_rows, np.float32).reshape(rows, 21, 3)
        known_rows = np.ascontiguousarray(known_rows, np.bool_).reshape(rows, 21)
        max_batch, inputs = self._prior_config()
        extra: dict[str, np.ndarray] = {}
        if sampler != "ode":
            if "SAMPLER" not in inputs:
                raise InferenceError(
                    f"Triton {PRIOR_MODEL}: the served model has no SAMPLER input, so it "
                    f"samples with the ODE only; ask for sampler 'ode'"
                )
            extra["SAMPLER"] = np.array([[PRIOR_SAMPLERS[sampler]]], np.int32)
        parts, versions = [], set()
        for start in range(0, rows, max_batch):
            stop = min(start + max_batch, rows)
            count = stop - start
            tensors = [
                _input("TASK", np.full((count, 1), int(task), np.int32)),
                _input("POSE", pose_rows[start:stop]),
                _input("KNOWN", known_rows[start:stop]),
                _input("SEED", seed_rows[start:stop, None]),
                _input("STEPS", np.full((count, 1), steps, np.int32)),
                _input("NOISE_LEVEL", np.full((count, 1), noise_level, np.float32)),
                *(_input(name, np.repeat(value, count, 0)) for name, value in extra.items()),
            ]
            out, version = self._infer_versioned(PRIOR_MODEL, tensors, ("BODY_POSE",))
            parts.append(out["BODY_POSE"].reshape(count, 21, 3))
            versions.add(version)
        if len(versions) > 1:
            # A new version went live between two chunks: the rows would mix two priors.
            raise InferenceUnavailable(
                f"Triton {PRIOR_MODEL}: the model was reloaded mid-request (versions "
                f"{sorted(versions)}); retry"
            )
        return PriorRows(body_pose=np.concatenate(parts), version=int(versions.pop()))

    def _prior_config(self) -> tuple[int, set[str]]:
        """pose_prior's max_batch_size and input names, read from the server once."""
        if self._prior_config_cache is None:
            try:
                config = self.client.get_model_config(
                    PRIOR_MODEL, self.model_version, as_json=True, client_timeout=self.timeout_s
                )["config"]
            except InferenceServerException as exc:
                raise translate_error(exc, PRIOR_MODEL) from exc
            max_batch = int(config.get("max_batch_size", 0)) or PRIOR_MAX_BATCH
            self._prior_config_cache = (max_batch, {i["name"] for i in config.get("input", [])})
        return self._prior_config_cache

    # --- motion denoising -----------------------------------------------------------------

    def denoise_motion(self, inputs: MotionInputs) -> MotionOutputs:
        """One motion to ``motion_denoise`` (no batch dimension: T frames per request)."""
        inputs.check()
        tensors = [
            _input("FPS", np.array([inputs.fps], np.float32)),
            _input("SEED", np.array([inputs.seed], np.int64)),
        ]
        if inputs.iterations is not None:
            tensors.append(_input("ITERATIONS", np.array([inputs.iterations], np.int32)))
        motion = {
            "JOINTS": inputs.joints,
            "GLOBAL_ORIENT": inputs.global_orient,
            "BODY_POSE": inputs.body_pose,
            "PELVIS": inputs.pelvis,
        }
        for name, value in motion.items():
            if value is not None:
                tensors.append(_input(name, np.asarray(value, np.float32)))
        out = self._infer(MOTION_MODEL, tensors, MOTION_OUTPUTS)
        version = int(out["PRIOR_VERSION"].reshape(-1)[0])
        return MotionOutputs(
            global_orient=out["GLOBAL_ORIENT"],
            body_pose=out["BODY_POSE"],
            pelvis=out["PELVIS"],
            joints=out["JOINTS"],
            phenotype=out["PHENOTYPE"],
            prior_version=version or None,
        )

    # --- lifting ----------------------------------------------------------------------------

    def lift(self, inputs: LiftInputs) -> LiftOutputs:
        """Tracks to ``pose_lift`` in chunks of its ``max_batch_size`` (each track carries its
        own seed, so chunking does not change a result)."""
        keypoints = np.ascontiguousarray(inputs.keypoints, np.float32)
        if keypoints.ndim != 4 or keypoints.shape[2:] != (33, 3) or len(keypoints) == 0:
            raise ValueError(f"keypoints must be (S >= 1, T, 33, 3), got {keypoints.shape}")
        tracks = len(keypoints)
        camera = np.ascontiguousarray(inputs.camera, np.float32).reshape(tracks, 4)
        seeds = np.ascontiguousarray(inputs.seeds, np.int64).reshape(tracks, 1)
        step = self._max_lift_batch()
        parts, versions = [], set()
        for start in range(0, tracks, step):
            stop = min(start + step, tracks)
            tensors = [
                _input("KEYPOINTS", keypoints[start:stop]),
                _input("CAMERA", camera[start:stop]),
                _input("HYPOTHESES", np.full((stop - start, 1), inputs.hypotheses, np.int32)),
                _input("SEED", seeds[start:stop]),
            ]
            out = self._infer(LIFT_MODEL, tensors, tuple(LIFT_OUTPUTS))
            versions.add(int(out.pop("PRIOR_VERSION").reshape(-1)[0]))
            parts.append(out)
        if len(versions) > 1:
            # A new prior went live between two chunks: the tracks would mix two priors.
            raise InferenceUnavailable(
                f"Triton {LIFT_MODEL}: the pose prior changed mid-request (versions "
                f"{sorted(versions)}); retry"
            )
        arrays = {
            LIFT_OUTPUTS[name]: np.concatenate([part[name] for part in parts]) for name in parts[0]
        }
        return LiftOutputs(**arrays, prior_version=versions.pop())

    def _max_lift_batch(self) -> int:
        if self._lift_max_batch is None:
            try:
                config = self.client.get_model_config(
                    LIFT_MODEL, self.model_version, as_json=True, client_timeout=self.timeout_s
                )
            except InferenceServerException as exc:
                raise translate_error(exc, LIFT_MODEL) from exc
            self._lift_max_batch = int(config["config"].get("max_batch_size", 0)) or LIFT_MAX_BATCH
        return self._lift_max_batch


def _input(name: str, array: np.ndarray) -> grpcclient.InferInput:
    dtype = {
        np.dtype(np.bool_): "BOOL",
        np.dtype(np.uint8): "UINT8",
        np.dtype(np.int32): "INT32",
        np.dtype(np.int64): "INT64",
        np.dtype(np.float32): "FP32",
    }[array.dtype]
    tensor = grpcclient.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(np.ascontiguousarray(array))
    return tensor


def unpack_people(out: dict[str, Any]) -> list[list[PersonKeypoints]]:
    """``keypoints_2d`` outputs (batch of images) back to :class:`PersonKeypoints` lists."""
    images = []
    for n in range(len(out["COUNT"])):
        people = []
        for i in range(int(out["COUNT"][n].reshape(-1)[0])):
            hands = out["HANDS"][n, i].astype(np.float32)
            present = out["HAND_PRESENT"][n, i]
            people.append(
                PersonKeypoints(
                    bbox=out["BBOX"][n, i].astype(np.float32),
                    score=float(out["SCORE"][n, i]),
                    body=out["BODY"][n, i].astype(np.float32),
                    left_hand=hands[0] if present[0] else None,
                    right_hand=hands[1] if present[1] else None,
                )
            )
        images.append(people)
    return images


def _empty_fit() -> FitOutputs:
    """No people: empty arrays (J and V are unknown without a person, so 0)."""
    return FitOutputs(
        pose=np.zeros((0, 0, 3), np.float32),
        phenotype=np.zeros((0, 6), np.float32),
        transl=np.zeros((0, 3), np.float32),
        global_orient=np.zeros((0, 3), np.float32),
        vertices=np.zeros((0, 0, 3), np.float32),
        joints=np.zeros((0, 0, 3), np.float32),
        keypoints_2d=np.zeros((0, 33, 2), np.float32),
        keypoints_3d=np.zeros((0, 33, 3), np.float32),
        reprojection_error=np.zeros((0,), np.float32),
        prior_version=np.zeros((0,), np.int32),
    )


_backends: dict[tuple[int, str | None], InferenceBackend] = {}
_backends_lock = threading.Lock()


def get_backend(settings: Settings | None = None) -> InferenceBackend:
    """This process's backend: Triton when ``settings.triton_url`` is set, else in-process.

    Cached per process and URL, so the in-process models load once per worker process.
    """
    settings = settings or get_settings()
    key = (os.getpid(), settings.triton_url)
    with _backends_lock:
        backend = _backends.get(key)
        if backend is None:
            if settings.triton_url:
                backend = TritonBackend(settings.triton_url, settings.triton_timeout_s)
            else:
                backend = InProcessBackend()
            _backends[key] = backend
        return backend


def triton_ready(
    url: str, models: tuple[str, ...] = (KEYPOINTS_MODEL, FIT_MODEL), timeout_s: float = 2.0
) -> bool:
    """True when Triton at ``url`` is up and serves every model in ``models`` (never raises).

    Per model, not the server's own readiness: a rejected prior version stays listed as
    UNAVAILABLE and makes the whole server "not ready" while the previous version serves on.
    """
    try:
        client = get_client(url)
        if not client.is_server_live(client_timeout=timeout_s):
            return False
        return all(client.is_model_ready(m, client_timeout=timeout_s) for m in models)
    except Exception:
        return False
