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
from collections.abc import Mapping

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from shared.inference.contracts import (
    FitInputs,
    FitOutputs,
    InferenceError,
    InferenceUnavailable,
    LiftInputs,
    LiftOutputs,
    MotionInputs,
    MotionOutputs,
    PriorInputs,
    PriorRows,
)
from shared.inference.wire import (
    Arrays,
    ModelSpec,
    body_fit,
    keypoints_2d,
    motion_denoise,
    pose_lift,
    pose_prior,
    take,
)
from shared.keypoints.formats import PersonKeypoints

# The models' names and tensors: shared.inference.wire (their config.pbtxt says the same).
KEYPOINTS_MODEL = keypoints_2d.MODEL.name
FIT_MODEL = body_fit.MODEL.name
PRIOR_MODEL = pose_prior.MODEL.name
MOTION_MODEL = motion_denoise.MODEL.name
LIFT_MODEL = pose_lift.MODEL.name

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

    def _run(self, model: str, spec: ModelSpec, arrays: Mapping[str, np.ndarray]) -> Arrays:
        """``spec``'s outputs for the request ``arrays`` (a wire module's packed request)."""
        return self._run_versioned(model, spec, arrays)[0]

    def _run_versioned(
        self, model: str, spec: ModelSpec, arrays: Mapping[str, np.ndarray]
    ) -> tuple[Arrays, str]:
        """The same, and the version of ``model`` that computed them."""
        inputs = [_input(spec, name, array) for name, array in arrays.items()]
        return self._infer_versioned(model, inputs, spec.output_names)

    def _infer(
        self, model: str, inputs: list[grpcclient.InferInput], outputs: tuple[str, ...]
    ) -> Arrays:
        return self._infer_versioned(model, inputs, outputs)[0]

    def _infer_versioned(
        self, model: str, inputs: list[grpcclient.InferInput], outputs: tuple[str, ...]
    ) -> tuple[Arrays, str]:
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

    def _max_batch(self, model: str, spec: ModelSpec) -> int:
        """``model``'s max_batch_size as the server reports it (the spec's if it reports 0)."""
        return int(self._model_config(model).get("max_batch_size", 0)) or spec.max_batch_size

    def _model_config(self, model: str) -> dict:
        try:
            config = self.client.get_model_config(
                model, self.model_version, as_json=True, client_timeout=self.timeout_s
            )
        except InferenceServerException as exc:
            raise translate_error(exc, model) from exc
        return dict(config["config"])

    # --- detection ------------------------------------------------------------------------

    def detect(self, image: np.ndarray, max_people: int) -> list[PersonKeypoints]:
        arrays = keypoints_2d.pack_request(image, max_people)
        if max_people <= 0:
            return []
        out = self._run(self.keypoints_model, keypoints_2d.MODEL, arrays)
        return keypoints_2d.unpack_response(out)[0]

    # --- fitting --------------------------------------------------------------------------

    def fit(self, inputs: FitInputs) -> FitOutputs:
        people = len(inputs.body)
        if people == 0:
            return _empty_fit()
        arrays = body_fit.pack_request(inputs)
        step = self._max_fit_batch()
        parts = [
            body_fit.unpack_response(
                self._run(self.fit_model, body_fit.MODEL, take(arrays, slice(start, start + step)))
            )
            for start in range(0, people, step)
        ]
        if len(parts) == 1:
            return parts[0]
        return FitOutputs(
            **{
                field: np.concatenate([getattr(p, field) for p in parts])
                for field in body_fit.OUTPUT_FIELDS.values()
            }
        )

    def _max_fit_batch(self) -> int:
        if self._fit_max_batch is None:
            self._fit_max_batch = self._max_batch(self.fit_model, body_fit.MODEL)
        return self._fit_max_batch

    # --- pose prior -----------------------------------------------------------------------

    def prior(self, inputs: PriorInputs) -> PriorRows:
        if np.asarray(inputs.seeds).size == 0:
            raise ValueError("no rows: give at least one seed")
        rows = pose_prior.PriorRequest.rows(
            inputs.task,
            inputs.seeds,
            inputs.steps,
            pose=inputs.pose,
            known=inputs.known,
            noise_level=inputs.noise_level,
            sampler=inputs.sampler,
        )
        arrays = pose_prior.pack_request(rows)
        max_batch, served_inputs = self._prior_config()
        if "SAMPLER" in arrays and "SAMPLER" not in served_inputs:
            raise InferenceError(
                f"Triton {PRIOR_MODEL}: the served model has no SAMPLER input, so it "
                f"samples with the ODE only; ask for sampler 'ode'"
            )
        parts, versions = [], set()
        for start in range(0, len(rows), max_batch):
            chunk = take(arrays, slice(start, start + max_batch))
            out, version = self._run_versioned(PRIOR_MODEL, pose_prior.MODEL, chunk)
            parts.append(pose_prior.unpack_response(out))
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
            config = self._model_config(PRIOR_MODEL)
            max_batch = int(config.get("max_batch_size", 0)) or pose_prior.MODEL.max_batch_size
            self._prior_config_cache = (max_batch, {i["name"] for i in config.get("input", [])})
        return self._prior_config_cache

    # --- motion denoising -----------------------------------------------------------------

    def denoise_motion(self, inputs: MotionInputs) -> MotionOutputs:
        """One motion to ``motion_denoise`` (no batch dimension: T frames per request)."""
        arrays = motion_denoise.pack_request(inputs)
        out = self._run(MOTION_MODEL, motion_denoise.MODEL, arrays)
        return motion_denoise.unpack_response(out)

    # --- lifting ----------------------------------------------------------------------------

    def lift(self, inputs: LiftInputs) -> LiftOutputs:
        """Tracks to ``pose_lift`` in chunks of its ``max_batch_size`` (each track carries its
        own seed, so chunking does not change a result)."""
        arrays = pose_lift.pack_request(inputs)
        tracks = len(arrays["KEYPOINTS"])
        step = self._max_lift_batch()
        parts = []
        for start in range(0, tracks, step):
            chunk = take(arrays, slice(start, start + step))
            parts.append(pose_lift.unpack_response(self._run(LIFT_MODEL, pose_lift.MODEL, chunk)))
        versions = {part.prior_version for part in parts}
        if len(versions) > 1:
            # A new prior went live between two chunks: the tracks would mix two priors.
            raise InferenceUnavailable(
                f"Triton {LIFT_MODEL}: the pose prior changed mid-request (versions "
                f"{sorted(versions)}); retry"
            )
        arrays_out = {
            field: np.concatenate([getattr(part, field) for part in parts])
            for field in pose_lift.ARRAY_FIELDS.values()
        }
        return LiftOutputs(**arrays_out, prior_version=versions.pop())

    def _max_lift_batch(self) -> int:
        if self._lift_max_batch is None:
            self._lift_max_batch = self._max_batch(LIFT_MODEL, pose_lift.MODEL)
        return self._lift_max_batch


def _input(spec: ModelSpec, name: str, array: np.ndarray) -> grpcclient.InferInput:
    """The request tensor ``name`` of ``spec``'s model (its data type from the spec)."""
    tensor_spec = spec.input(name)
    data = tensor_spec.array(array)
    tensor = grpcclient.InferInput(name, list(data.shape), tensor_spec.dtype)
    tensor.set_data_from_numpy(data)
    return tensor


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
