"""The Triton models against the real tritonserver (python backend, CPU).

Triton must give the numbers the in-process backend gives (same detector, same fitter, same
seed), batch the people of concurrent fit requests into one execution without mixing their
results up, and turn "no server" into :class:`InferenceUnavailable`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image

from services.common.triton_backend import (
    FIT_MODEL,
    KEYPOINTS_MODEL,
    TritonBackend,
    get_client,
    triton_ready,
)
from services.tools.local_stack import free_ports
from shared.inference.contracts import FitInputs, FitOutputs, InferenceError, InferenceUnavailable
from shared.inference.local import InProcessBackend
from shared.keypoints.formats import PersonKeypoints
from shared.settings import get_settings

pytestmark = pytest.mark.integration

SINGLE = "coco_000000000785_skier_single.jpg"
MULTI = "coco_000000081988_surf_lesson_multi.jpg"
ITERATIONS = 10  # enough to move every parameter, light on a 2-core machine


def _photo(name: str) -> np.ndarray:
    path = get_settings().photos_dir / name
    if not path.exists():
        pytest.skip(f"photo {path} not available")
    return np.asarray(Image.open(path).convert("RGB"))


def _fit_inputs(
    people: list[PersonKeypoints], image: np.ndarray, iterations: int = ITERATIONS, seed: int = 0
) -> FitInputs:
    zeros = np.zeros((21, 3), np.float32)
    hands = [
        np.stack([h if h is not None else zeros for h in (p.left_hand, p.right_hand)])
        for p in people
    ]
    h, w = image.shape[:2]
    focal = float(max(h, w))
    return FitInputs(
        body=np.stack([p.body for p in people]).astype(np.float32),
        hands=np.stack(hands).astype(np.float32),
        camera=np.tile(np.array([focal, focal, w / 2, h / 2], np.float32), (len(people), 1)),
        iterations=iterations,
        seed=seed,
    )


def _assert_fit_close(a: FitOutputs, b: FitOutputs, atol: float = 1e-4) -> None:
    for name, value in a.__dict__.items():
        other = getattr(b, name)
        assert value.shape == other.shape, name
        assert value.dtype == (np.int32 if name == "prior_version" else np.float32), name
        # Pixels (keypoints_2d, reprojection_error) get a pixel-scale tolerance.
        tol = atol * 100 if name in ("keypoints_2d", "reprojection_error") else atol
        np.testing.assert_allclose(value, other, rtol=1e-4, atol=tol, err_msg=name)


def _stats(url: str, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) of ``model``, summed over versions, once settled:
    Triton records a request's statistics after it has sent the response, so a read right
    after a call returns may miss that call."""

    def read() -> tuple[int, int]:
        rows = get_client(url).get_inference_statistics(model, as_json=True)["model_stats"]
        return (
            sum(int(r.get("inference_count", 0)) for r in rows),
            sum(int(r.get("execution_count", 0)) for r in rows),
        )

    last, deadline = read(), time.monotonic() + 5.0
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = read()
        if now == last:
            return now
        last = now
    return last


@pytest.fixture(scope="module")
def in_process() -> InProcessBackend:
    backend = InProcessBackend()
    backend.load()
    return backend


@pytest.fixture(scope="module")
def triton(triton_server: Any) -> TritonBackend:
    return TritonBackend(triton_server.url, timeout_s=120)


@pytest.fixture(scope="module")
def multi_people(in_process: InProcessBackend) -> tuple[np.ndarray, list[PersonKeypoints]]:
    image = _photo(MULTI)
    people = in_process.detect(image, 16)
    assert len(people) >= 2, "the multi-person photo should show several people"
    return image, people


def test_models_load_and_report_ready(triton_server: Any) -> None:
    assert triton_ready(triton_server.url)
    client = get_client(triton_server.url)
    index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
    for model in (KEYPOINTS_MODEL, FIT_MODEL):
        assert index[model]["state"] == "READY"
        assert client.is_model_ready(model)
        config = client.get_model_config(model, as_json=True)["config"]
        assert config["backend"] == "python"
        assert "dynamic_batching" in config
    print(f"\ntritonserver startup (launch to models ready): {triton_server.startup_s:.1f} s")


def test_keypoints_match_in_process(triton: TritonBackend, in_process: InProcessBackend) -> None:
    for name in (MULTI, SINGLE):
        image = _photo(name)
        expected = in_process.detect(image, 16)
        got = triton.detect(image, 16)
        assert len(got) == len(expected) > 0, name
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_allclose(a.body, b.body, rtol=1e-5, atol=1e-3)
            np.testing.assert_allclose(a.bbox, b.bbox, rtol=1e-5, atol=1e-3)
            assert a.score == pytest.approx(b.score, abs=1e-5)
            for hand_a, hand_b in ((a.left_hand, b.left_hand), (a.right_hand, b.right_hand)):
                assert (hand_a is None) == (hand_b is None)
                if hand_a is not None and hand_b is not None:
                    np.testing.assert_allclose(hand_a, hand_b, rtol=1e-5, atol=1e-3)


def test_keypoints_max_people(triton: TritonBackend, in_process: InProcessBackend) -> None:
    image = _photo(MULTI)
    got = triton.detect(image, 1)
    expected = in_process.detect(image, 1)
    assert len(got) == len(expected) == 1
    np.testing.assert_allclose(got[0].body, expected[0].body, rtol=1e-5, atol=1e-3)
    assert triton.detect(image, 0) == []


def test_fit_matches_in_process(
    triton: TritonBackend,
    in_process: InProcessBackend,
    multi_people: tuple[np.ndarray, list[PersonKeypoints]],
) -> None:
    image, people = multi_people
    inputs = _fit_inputs(people[:2], image, seed=3)
    got = triton.fit(inputs)
    expected = in_process.fit(inputs)
    assert got.pose.shape == (2, 104, 3)
    assert got.vertices.shape == (2, 13718, 3)
    assert got.reprojection_error.shape == (2,)
    _assert_fit_close(got, expected)


def test_concurrent_fits_are_batched(
    triton_server: Any,
    triton: TritonBackend,
    multi_people: tuple[np.ndarray, list[PersonKeypoints]],
) -> None:
    image, people = multi_people
    # Requests from different "jobs": one person each, two iteration counts (so the model
    # must group them into two fit() calls within one batched execute).
    requests = {
        "a": _fit_inputs(people[0:1], image),
        "b": _fit_inputs(people[1:2], image),
        "c": _fit_inputs(people[0:1], image, iterations=ITERATIONS + 5),
    }
    separate = {key: triton.fit(inputs) for key, inputs in requests.items()}

    blocker = _fit_inputs(people, image, iterations=60)  # keeps the instance busy meanwhile
    results: dict[str, FitOutputs] = {}
    errors: list[BaseException] = []

    def call(key: str, inputs: FitInputs) -> Callable[[], None]:
        def run() -> None:
            try:
                results[key] = triton.fit(inputs)
            except BaseException as exc:
                errors.append(exc)

        return run

    before = _stats(triton_server.url, FIT_MODEL)
    first = threading.Thread(target=call("blocker", blocker))
    first.start()
    time.sleep(0.3)  # the blocker is executing; the next three queue up behind it
    threads = [threading.Thread(target=call(k, v)) for k, v in requests.items()]
    for t in threads:
        t.start()
    for t in [first, *threads]:
        t.join(timeout=300)
    after = _stats(triton_server.url, FIT_MODEL)
    assert not errors, errors

    inferences, executions = after[0] - before[0], after[1] - before[1]
    requests_sent = 1 + len(requests)
    assert inferences == len(people) + len(requests)  # one inference per person
    assert executions < requests_sent, (inferences, executions)
    # Fitted next to other people, a person's numbers may differ from a lone fit by float
    # reassociation in batched kernels (measured: <= 4e-4 rad of pose, ~4e-6 m of vertices).
    for key, expected in separate.items():
        _assert_fit_close(results[key], expected, atol=1e-3)


def test_unavailable_when_triton_is_down() -> None:
    (port,) = free_ports(1)
    url = f"127.0.0.1:{port}"
    backend = TritonBackend(url, timeout_s=3)
    with pytest.raises(InferenceUnavailable):
        backend.detect(np.zeros((64, 64, 3), np.uint8), 4)
    people = FitInputs(
        body=np.zeros((1, 33, 3), np.float32),
        hands=np.zeros((1, 2, 21, 3), np.float32),
        camera=np.array([[500, 500, 32, 32]], np.float32),
    )
    with pytest.raises(InferenceUnavailable):
        backend.fit(people)
    assert not triton_ready(url)


def test_model_errors_are_not_retryable(triton: TritonBackend) -> None:
    import tritonclient.grpc as grpcclient

    wrong = grpcclient.InferInput("BODY", [1, 17, 3], "FP32")  # coco17 is not mediapipe33
    wrong.set_data_from_numpy(np.zeros((1, 17, 3), np.float32))
    with pytest.raises(InferenceError) as info:
        triton._infer(FIT_MODEL, [wrong], ("POSE",))
    assert not isinstance(info.value, InferenceUnavailable)
    assert "BODY" in str(info.value) or "input" in str(info.value).lower()
