"""The Triton wire format (``shared.inference.wire``), without Triton.

- Round trips per model: domain inputs -> client pack -> server unpack give the inputs back,
  domain outputs -> server pack -> client unpack give the outputs back, and every packed
  request and response is what the model's spec says (names, dtypes, dims).
- Every wire spec agrees with its model's ``config.pbtxt`` (parsed with the ``ModelConfig``
  protobuf that tritonclient ships): name, max_batch_size, tensor names, data types, dims,
  optional inputs, ragged batching.
- Every shipped pose_prior version serves through the model's one ``model.py`` (Triton's
  ``triton_python_backend_utils`` replaced by a stand-in), from the version folder's link and
  from a copy of it, as the Kubernetes seed writes it.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import types
from collections.abc import Iterator
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from shared.inference.contracts import (
    FitInputs,
    FitOutputs,
    LiftInputs,
    LiftOutputs,
    MotionInputs,
    MotionOutputs,
)
from shared.inference.wire import (
    ModelSpec,
    TensorSpec,
    body_fit,
    keypoints_2d,
    motion_denoise,
    numpy_dtype,
    pose_lift,
    pose_prior,
    take,
    triton_dtype,
)
from shared.keypoints.formats import PersonKeypoints
from shared.settings import REPO_ROOT

MODEL_REPOSITORY = REPO_ROOT / "model_repository"
WIRES = {w.MODEL.name: w for w in (keypoints_2d, body_fit, pose_prior, pose_lift, motion_denoise)}
rng = np.random.default_rng(0)


def normal(*shape: int) -> np.ndarray:
    return rng.normal(size=shape).astype(np.float32)


def assert_same(actual: Any, expected: Any, what: str = "") -> None:
    """Equal values, field by field for dataclasses, with equal dtypes for arrays."""
    if is_dataclass(expected):
        assert type(actual) is type(expected), what
        for f in fields(expected):
            assert_same(getattr(actual, f.name), getattr(expected, f.name), f"{what}.{f.name}")
    elif isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray), what
        assert actual.dtype == expected.dtype, what
        np.testing.assert_array_equal(actual, expected, err_msg=what)
    elif isinstance(expected, list | tuple | dict):
        assert len(actual) == len(expected), what
        pairs = expected.items() if isinstance(expected, dict) else enumerate(expected)
        for key, value in pairs:
            assert_same(actual[key], value, f"{what}[{key}]")
    else:
        assert actual == expected, what


# ----------------------------------------------------------------------------- the pieces


def test_dtypes_and_checks() -> None:
    assert numpy_dtype("TYPE_FP32") == np.float32 and numpy_dtype("BOOL") == np.bool_
    assert triton_dtype(np.int64) == "INT64"
    with pytest.raises(ValueError, match="unknown Triton data type"):
        numpy_dtype("FP16")
    spec = TensorSpec("X", "FP32", (-1, 3))
    spec.check(np.zeros((2, 5, 3), np.float32), batched=True)
    spec.check(np.zeros((5, 3), np.float32), batched=False)
    for bad in (np.zeros((2, 5, 3), np.float64), np.zeros((2, 5, 2), np.float32), np.zeros(3)):
        with pytest.raises(ValueError, match="X"):
            spec.check(bad, batched=True)
    model = ModelSpec("m", 4, (spec, TensorSpec("Y", "INT32", (1,), optional=True)), ())
    with pytest.raises(ValueError, match=r"missing inputs \['X'\]"):
        model.check_request({"Y": np.zeros((1, 1), np.int32)})
    with pytest.raises(KeyError, match="m has no input 'Z'"):
        model.check_request({"X": np.zeros((1, 1, 3), np.float32), "Z": np.zeros(1)})
    arrays = {"A": np.arange(10), "B": np.arange(20).reshape(10, 2)}
    assert_same(take(arrays, slice(2, 4)), {"A": np.arange(2, 4), "B": arrays["B"][2:4]})


# ----------------------------------------------------------------------------- round trips


def person(hands: tuple[bool, bool]) -> PersonKeypoints:
    left, right = (normal(21, 3) if present else None for present in hands)
    score = float(rng.uniform())
    return PersonKeypoints(normal(4), score, normal(33, 3), left_hand=left, right_hand=right)


def test_keypoints_2d_round_trips() -> None:
    image = rng.integers(0, 255, (6, 5, 3), dtype=np.uint8)
    request = keypoints_2d.pack_request(image, 3)
    keypoints_2d.MODEL.check_request(request)
    assert_same(keypoints_2d.unpack_request(request, max_people=16), [(image, 3)])
    # The server's limit caps MAX_PEOPLE, and stands in for it when absent.
    assert keypoints_2d.unpack_request(keypoints_2d.pack_request(image, 40), 16)[0][1] == 16
    assert keypoints_2d.unpack_request({"IMAGE": request["IMAGE"]}, 16)[0][1] == 16
    with pytest.raises(ValueError, match=r"RGB \(H, W, 3\)"):
        keypoints_2d.pack_request(image[..., 0], 3)

    people = [[person((True, False)), person((False, True)), person((True, True))], []]
    response = keypoints_2d.pack_response(people, max_people=4)
    keypoints_2d.MODEL.check_response(response)
    assert response["BODY"].shape == (2, 4, 33, 3)
    got = keypoints_2d.unpack_response(response)
    for found, expected in zip(got, people, strict=True):
        assert len(found) == len(expected)
        for a, b in zip(found, expected, strict=True):
            assert_same(
                (a.bbox, a.score, a.body, a.left_hand, a.right_hand),
                (b.bbox, np.float32(b.score).item(), b.body, b.left_hand, b.right_hand),
            )
    # Only the first max_people of an image travel.
    assert len(keypoints_2d.unpack_response(keypoints_2d.pack_response(people, 2))[0]) == 2


def fit_inputs(people: int, prior: Any = "none") -> FitInputs:
    return FitInputs(
        body=normal(people, 33, 3),
        hands=normal(people, 2, 21, 3),
        camera=normal(people, 4),
        iterations=12,
        seed=3,
        prior=prior,
    )


@pytest.mark.parametrize("prior", ["none", "pose_prior", None])
def test_body_fit_request_round_trips(prior: Any) -> None:
    inputs = fit_inputs(3, prior)
    request = body_fit.pack_request(inputs)
    body_fit.MODEL.check_request(request)
    assert ("PRIOR" in request) == (prior is not None)  # absent: the server's default
    [(index, unpacked)] = body_fit.unpack_request(request)
    assert_same(index, np.arange(3))
    assert_same(unpacked, inputs)


def test_body_fit_groups_the_people_of_a_request() -> None:
    request = body_fit.pack_request(fit_inputs(4))
    request["SEED"][2] = 9
    request["PRIOR"][3] = body_fit.DEFAULT_PRIOR_CODE
    groups = body_fit.unpack_request(request)
    assert [(index.tolist(), fit.seed, fit.prior) for index, fit in groups] == [
        ([0, 1], 3, "none"),
        ([2], 9, "none"),
        ([3], 3, None),
    ]
    assert_same(groups[1][1].body, request["BODY"][2:3])
    request["PRIOR"][0] = 5
    with pytest.raises(ValueError, match=r"unknown PRIOR code\(s\) \[5\]"):
        body_fit.unpack_request(request)
    with pytest.raises(ValueError, match="unknown prior 'learned'"):
        body_fit.pack_request(fit_inputs(1, "learned"))
    with pytest.raises(ValueError, match=r"missing inputs \['SEED'\]"):
        body_fit.unpack_request({k: v for k, v in request.items() if k != "SEED"})


def test_body_fit_response_round_trips() -> None:
    people, bones, vertices = 2, 5, 7
    outputs = FitOutputs(
        pose=normal(people, bones, 3),
        phenotype=normal(people, 6),
        transl=normal(people, 3),
        global_orient=normal(people, 3),
        vertices=normal(people, vertices, 3),
        joints=normal(people, bones, 3),
        keypoints_2d=normal(people, 33, 2),
        keypoints_3d=normal(people, 33, 3),
        reprojection_error=normal(people),
        prior_version=np.array([2, 0], np.int32),
    )
    response = body_fit.pack_response(outputs)
    body_fit.MODEL.check_response(response)
    assert_same(body_fit.unpack_response(response), outputs)
    assert_same(body_fit.unpack_response(take(response, slice(1, 2))), outputs.person(1))


@pytest.mark.parametrize("sampler", ["ode", "sde"])
def test_pose_prior_round_trips(sampler: str) -> None:
    pose, known = normal(3, 21, 3), rng.uniform(size=(3, 21)) < 0.5
    rows = pose_prior.PriorRequest.rows(
        1, np.arange(3), 8, pose=pose, known=known, noise_level=0.25, sampler=sampler
    )
    request = pose_prior.pack_request(rows)
    pose_prior.MODEL.check_request(request)
    assert ("SAMPLER" in request) == (sampler != "ode")  # a version without SAMPLER serves ODE
    assert_same(pose_prior.unpack_request(request), rows)
    assert_same(rows.seeds, np.arange(3, dtype=np.int64))
    assert_same(rows.sampler, np.full(3, pose_prior.SAMPLER_CODES[sampler], np.int32))
    two = pose_prior.PriorRequest.concatenate([rows, rows])
    assert len(two) == 6 and two.task.dtype == np.int32

    body_pose = normal(3, 21, 3)
    response = pose_prior.pack_response(body_pose)
    pose_prior.MODEL.check_response(response)
    assert_same(pose_prior.unpack_response(response), body_pose)


def test_pose_prior_defaults_and_bad_codes() -> None:
    from shared.prior.rows import SAMPLERS

    assert tuple(pose_prior.SAMPLER_CODES) == SAMPLERS  # the codes are the order of SAMPLERS
    rows = pose_prior.PriorRequest.rows(0, np.array([[4], [5]]), 3)
    assert_same(rows.pose, np.zeros((2, 21, 3), np.float32))
    assert_same(rows.known, np.zeros((2, 21), bool))
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        pose_prior.PriorRequest.rows(0, np.arange(2), 3, sampler="euler")
    request = pose_prior.pack_request(rows)
    with pytest.raises(ValueError, match=r"missing inputs \['STEPS'\]"):
        pose_prior.unpack_request({k: v for k, v in request.items() if k != "STEPS"})


@pytest.mark.parametrize("form", ["joints", "poses", "poses with pelvis"])
@pytest.mark.parametrize("iterations", [None, 40])
def test_motion_denoise_round_trips(form: str, iterations: int | None) -> None:
    frames = 5
    motion = (
        MotionInputs(joints=normal(frames, 22, 3))
        if form == "joints"
        else MotionInputs(
            global_orient=normal(frames, 3),
            body_pose=normal(frames, 21, 3),
            pelvis=normal(frames, 3) if "pelvis" in form else None,
        )
    )
    motion.fps, motion.iterations, motion.seed = 24.0, iterations, 11
    request = motion_denoise.pack_request(motion)
    motion_denoise.MODEL.check_request(request)
    assert_same(motion_denoise.unpack_request(request), motion)
    request["ITERATIONS"] = np.array([motion_denoise.DEFAULT_ITERATIONS_CODE], np.int32)
    assert motion_denoise.unpack_request(request).iterations is None
    with pytest.raises(ValueError, match="exactly one of joints"):
        motion_denoise.pack_request(MotionInputs())


@pytest.mark.parametrize("version", [3, None])
def test_motion_denoise_response_round_trips(version: int | None) -> None:
    outputs = MotionOutputs(
        global_orient=normal(4, 3),
        body_pose=normal(4, 21, 3),
        pelvis=normal(4, 3),
        joints=normal(4, 22, 3),
        phenotype=normal(6),
        prior_version=version,
    )
    response = motion_denoise.pack_response(outputs)
    motion_denoise.MODEL.check_response(response)
    assert_same(motion_denoise.unpack_response(response), outputs)


def test_pose_lift_round_trips() -> None:
    tracks, frames, hypotheses = 3, 4, 2
    inputs = LiftInputs(
        keypoints=normal(tracks, frames, 33, 3),
        camera=normal(tracks, 4),
        hypotheses=hypotheses,
        seeds=np.array([5, 6, 7], np.int64),
    )
    request = pose_lift.pack_request(inputs)
    pose_lift.MODEL.check_request(request)
    assert_same(pose_lift.unpack_request(request), inputs)
    assert_same(pose_lift.unpack_request(take(request, slice(1, 3))).seeds, inputs.seeds[1:])
    request["HYPOTHESES"][0] = 5
    with pytest.raises(ValueError, match="HYPOTHESES must be the same"):
        pose_lift.unpack_request(request)
    with pytest.raises(ValueError, match=r"keypoints must be \(S >= 1, T, 33, 3\)"):
        pose_lift.pack_request(LiftInputs(normal(0, 4, 33, 3), normal(0, 4), 2, np.arange(0)))

    shape = (tracks, frames, hypotheses)
    outputs = LiftOutputs(
        global_orient=normal(*shape, 3),
        body_pose=normal(*shape, 21, 3),
        pelvis=normal(*shape, 3),
        joints=normal(*shape, 22, 3),
        keypoints_2d=normal(*shape, 33, 2),
        reprojection_error=normal(*shape),
        prior_version=2,
    )
    response = pose_lift.pack_response(outputs)
    pose_lift.MODEL.check_response(response)
    assert_same(pose_lift.unpack_response(response), outputs)
    part = pose_lift.unpack_response(take(response, slice(0, 1)))  # one request's share
    assert part.prior_version == 2 and part.body_pose.shape == (1, frames, hypotheses, 21, 3)


# ----------------------------------------------------------------------------- config.pbtxt


def read_config(model: str) -> Any:
    config = model_config_pb2.ModelConfig()
    text_format.Parse((MODEL_REPOSITORY / model / "config.pbtxt").read_text(), config)
    return config


def test_every_model_of_the_repository_has_a_wire_module() -> None:
    assert {p.parent.name for p in MODEL_REPOSITORY.glob("*/config.pbtxt")} == set(WIRES)


@pytest.mark.parametrize("model", sorted(WIRES))
def test_the_wire_spec_is_the_config(model: str) -> None:
    spec, config = WIRES[model].MODEL, read_config(model)
    assert (config.name, config.backend) == (spec.name, "python")
    assert config.max_batch_size == spec.max_batch_size

    def declared(tensor: Any, is_input: bool) -> TensorSpec:
        dtype = model_config_pb2.DataType.Name(tensor.data_type)
        return TensorSpec(
            tensor.name,
            dtype.removeprefix("TYPE_"),
            tuple(tensor.dims),
            optional=tensor.optional if is_input else False,
            ragged=tensor.allow_ragged_batch if is_input else False,
        )

    assert tuple(declared(t, True) for t in config.input) == spec.inputs
    assert tuple(declared(t, False) for t in config.output) == spec.outputs
    for tensor in (*spec.inputs, *spec.outputs):
        numpy_dtype(tensor.dtype)  # a type the wire knows


# ----------------------------------------------------------------------------- versions


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _Response:
    def __init__(self, output_tensors: list[_Tensor] | None = None, error: Any = None) -> None:
        self.arrays = {t.name(): t.as_numpy() for t in output_tensors or []}
        self.error = error


class _Error:
    def __init__(self, message: str) -> None:
        self.text = message


def stand_in_pb_utils() -> types.ModuleType:
    """What the models use of Triton's ``triton_python_backend_utils``; a request is a dict of
    tensors."""
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = _Tensor  # type: ignore[attr-defined]
    module.InferenceResponse = _Response  # type: ignore[attr-defined]
    module.TritonError = _Error  # type: ignore[attr-defined]
    module.get_input_tensor_by_name = lambda request, name: request.get(name)  # type: ignore[attr-defined]
    return module


def shipped_versions() -> list[int]:
    from shared.prior.registry import list_versions

    return list_versions(MODEL_REPOSITORY / "pose_prior")


def test_version_folders_hold_only_what_differs() -> None:
    model_dir = MODEL_REPOSITORY / "pose_prior"
    assert shipped_versions(), "the repository ships a pose prior"
    for version in shipped_versions():
        folder = model_dir / str(version)
        code = folder / "model.py"
        assert code.is_symlink() and code.readlink() == Path("..", "model.py"), folder
        files = {p.name for p in folder.iterdir() if p.name != "__pycache__"}
        assert files == {"model.py", "prior.pt", "record.json"}, folder


@pytest.fixture
def stub_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process as Triton's python stub looks to a model.py: the stand-in utils, and
    ``sys.path`` and ``bootstrap`` as they were once the model is done with them."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stand_in_pb_utils())
    monkeypatch.setattr(sys, "path", list(sys.path))  # model.py puts its repository first
    previous = sys.modules.pop("bootstrap", None)  # and imports its bootstrap.py
    yield
    sys.modules.pop("bootstrap", None)
    if previous is not None:
        sys.modules["bootstrap"] = previous


@pytest.mark.usefixtures("stub_process")
@pytest.mark.parametrize("layout", ["link", "copy"])
@pytest.mark.parametrize("version", shipped_versions())
def test_every_shipped_prior_version_serves_through_the_one_model_py(
    version: int, layout: str, tmp_path: Path
) -> None:
    from shared.prior.registry import load_prior_version
    from shared.prior.rows import PriorTask, run_prior_rows

    model_dir = MODEL_REPOSITORY / "pose_prior"
    if layout == "copy":  # as shutil.copytree and the Kubernetes seed write it: no link
        shutil.copy2(MODEL_REPOSITORY / "bootstrap.py", tmp_path / "bootstrap.py")
        shutil.copytree(model_dir / str(version), tmp_path / "pose_prior" / str(version))
        model_dir = tmp_path / "pose_prior"
        assert not (model_dir / str(version) / "model.py").is_symlink()
    spec = importlib.util.spec_from_file_location(
        f"pose_prior_v{version}", model_dir / str(version) / "model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_repository": str(model_dir), "model_version": str(version)})

    seeds = np.arange(3)
    good = pose_prior.PriorRequest.rows(PriorTask.GENERATE, seeds, steps=3)
    no_steps, unknown_task = (
        {name: array.copy() for name, array in pose_prior.pack_request(good).items()}
        for _ in range(2)
    )
    no_steps["STEPS"][:] = 0
    unknown_task["TASK"][1] = 7
    requests = [no_steps, pose_prior.pack_request(good), unknown_task]
    tensors = [{n: _Tensor(n, a) for n, a in request.items()} for request in requests]
    refused, served, unknown = model.execute(tensors)  # one bad request fails alone
    assert served.error is None
    assert refused.error.text.startswith(f"pose_prior v{version}: ValueError: steps must be")
    assert unknown.error.text.startswith(
        f"pose_prior v{version}: bad inputs: unknown prior task code 7"
    )
    expected = run_prior_rows(
        load_prior_version(model_dir, version), PriorTask.GENERATE, None, None, seeds, 3
    )
    np.testing.assert_allclose(pose_prior.unpack_response(served.arrays), expected, atol=1e-5)
