"""Mesh (GLB, OBJ, PLY) and parameter (NPZ, JSON) exports."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest
import trimesh

from shared.io.exports import (
    SMPLX_PARAM_DIMS,
    export_mesh,
    export_meshes,
    export_params_json,
    export_params_npz,
    validate_params,
)


def _person(offset: float = 0.0, subdivisions: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A stand-in body in the OpenCV camera frame: tall along y (down), 3 m ahead."""
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions)
    vertices = sphere.vertices * [0.25, 0.9, 0.15] + [offset, 0.1, 3.0]
    return vertices.astype(np.float32), sphere.faces


def _load(data: bytes, fmt: str) -> Any:
    return trimesh.load(io.BytesIO(data), file_type=fmt, process=False)


# --- meshes -----------------------------------------------------------------------------------


def test_glb_round_trip_in_gltf_y_up() -> None:
    vertices, faces = _person()
    data = export_mesh(vertices, faces, "glb")
    assert data[:4] == b"glTF"
    scene = _load(data, "glb")
    assert isinstance(scene, trimesh.Scene)
    (mesh,) = scene.geometry.values()
    assert mesh.vertices.shape == vertices.shape
    np.testing.assert_array_equal(mesh.faces, faces)
    # OpenCV (y down, z ahead) -> glTF (y up, camera looking down -z): y and z flipped.
    np.testing.assert_allclose(mesh.vertices, vertices * [1, -1, -1], atol=1e-6)
    assert mesh.vertices[:, 2].max() < 0  # in front of a glTF camera at the origin
    # Winding is preserved by the (proper) rotation: the normals still point outwards.
    centre = mesh.vertices.mean(axis=0)
    assert (np.sum(mesh.face_normals * (mesh.triangles_center - centre), axis=1) > 0).all()


def test_glb_has_one_node_per_person() -> None:
    people = [_person(-0.6), _person(0.0, subdivisions=1), _person(0.6)]
    scene = _load(export_meshes(people, "glb"), "glb")
    assert isinstance(scene, trimesh.Scene)
    assert sorted(scene.graph.nodes_geometry) == ["person_0", "person_1", "person_2"]
    for i, (vertices, faces) in enumerate(people):
        _, geometry = scene.graph[f"person_{i}"]
        mesh = scene.geometry[geometry]
        assert len(mesh.vertices) == len(vertices)
        assert len(mesh.faces) == len(faces)
        np.testing.assert_allclose(mesh.vertices, vertices * [1, -1, -1], atol=1e-6)


def test_glb_includes_smooth_normals() -> None:
    vertices, faces = _person()
    data = export_mesh(vertices, faces, "glb")
    length = int.from_bytes(data[12:16], "little")
    document = json.loads(data[20 : 20 + length])
    attributes = document["meshes"][0]["primitives"][0]["attributes"]
    assert "NORMAL" in attributes and "POSITION" in attributes


def test_obj_round_trip_in_the_camera_frame() -> None:
    vertices, faces = _person()
    data = export_mesh(vertices, faces, "obj")
    mesh = _load(data, "obj")
    assert isinstance(mesh, trimesh.Trimesh)
    assert mesh.vertices.shape == vertices.shape
    assert mesh.faces.shape == faces.shape
    np.testing.assert_allclose(mesh.vertices, vertices, atol=1e-6)  # OBJ: unchanged frame
    np.testing.assert_array_equal(mesh.faces, faces)


def test_obj_has_one_object_per_person() -> None:
    people = [_person(-0.6), _person(0.6, subdivisions=1)]
    text = export_meshes(people, "obj", names=["alice", "bob"]).decode()
    lines = text.splitlines()
    assert [line for line in lines if line.startswith("o ")] == ["o alice", "o bob"]
    assert sum(line.startswith("v ") for line in lines) == sum(len(v) for v, _ in people)
    assert sum(line.startswith("f ") for line in lines) == sum(len(f) for _, f in people)
    merged = _load(text.encode(), "obj")
    assert len(merged.vertices) == sum(len(v) for v, _ in people)
    np.testing.assert_allclose(merged.vertices[len(people[0][0]) :], people[1][0], atol=1e-6)


def test_ply_round_trip_with_a_person_index() -> None:
    people = [_person(-0.6), _person(0.6, subdivisions=1)]
    data = export_meshes(people, "ply")
    assert data.startswith(b"ply\nformat binary_little_endian")
    assert b"property int person" in data
    mesh = _load(data, "ply")
    assert len(mesh.vertices) == sum(len(v) for v, _ in people)
    assert len(mesh.faces) == sum(len(f) for _, f in people)
    np.testing.assert_allclose(mesh.vertices[: len(people[0][0])], people[0][0], atol=1e-6)
    person = mesh.metadata["_ply_raw"]["vertex"]["data"]["person"]
    np.testing.assert_array_equal(np.bincount(person), [len(v) for v, _ in people])
    single = _load(export_mesh(*people[0], "ply"), "ply")
    np.testing.assert_array_equal(single.faces, people[0][1])


@pytest.mark.parametrize(
    ("vertices", "faces", "message"),
    [
        (np.zeros((4, 2)), np.array([[0, 1, 2]]), "vertices"),
        (np.zeros((4, 3)), np.array([[0, 1, 2, 3]]), "faces"),
        (np.zeros((4, 3)), np.array([[0, 1, 4]]), "indices"),
        (np.zeros((4, 3)), np.array([[0.0, 1.0, 2.0]]), "integer"),
        (np.full((4, 3), np.inf), np.array([[0, 1, 2]]), "NaN or infinity"),
        (np.zeros((0, 3)), np.zeros((0, 3), int), "at least one"),
    ],
)
def test_bad_meshes_are_rejected(vertices: np.ndarray, faces: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        export_mesh(vertices, faces, "glb")


def test_bad_format_and_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown mesh format"):
        export_mesh(*_person(), "stl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no meshes"):
        export_meshes([], "obj")
    with pytest.raises(ValueError, match="distinct"):
        export_meshes([_person(), _person()], "obj", names=["a", "a"])


# --- parameters -------------------------------------------------------------------------------


def _params(n: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    params = {key: rng.normal(size=(n, dim)) for key, dim in SMPLX_PARAM_DIMS.items()}
    params["anny_pose"] = rng.normal(size=(n, 163, 4, 4)).astype(np.float32)
    params["anny_phenotype"] = rng.uniform(size=(n, 11))
    return params


def test_npz_holds_the_smplx_forward_kwargs() -> None:
    params = _params(3)
    with np.load(io.BytesIO(export_params_npz(params)), allow_pickle=False) as npz:
        loaded = dict(npz)
    assert set(loaded) == set(SMPLX_PARAM_DIMS) | {"anny_pose", "anny_phenotype"}
    for key, dim in SMPLX_PARAM_DIMS.items():
        assert loaded[key].shape == (3, dim), key
        assert loaded[key].dtype == np.float32, key
        np.testing.assert_allclose(loaded[key], params[key], rtol=1e-6)
    # Extra keys pass through untouched (dtype included).
    np.testing.assert_array_equal(loaded["anny_pose"], params["anny_pose"])
    assert loaded["anny_phenotype"].dtype == np.float64


def test_npz_fills_optional_smplx_keys_with_zeros_and_reshapes_joints() -> None:
    params = {
        "global_orient": np.zeros(3),
        "body_pose": np.ones((1, 21, 3)),
        "left_hand_pose": np.ones((1, 15, 3)),
        "betas": np.zeros(10),
        "transl": [0.0, 0.0, 3.0],
    }
    with np.load(io.BytesIO(export_params_npz(params))) as npz:
        loaded = dict(npz)
    assert set(loaded) == set(SMPLX_PARAM_DIMS)
    assert {key: value.shape for key, value in loaded.items()} == {
        key: (1, dim) for key, dim in SMPLX_PARAM_DIMS.items()
    }
    assert (loaded["body_pose"] == 1).all() and (loaded["left_hand_pose"] == 1).all()
    assert (loaded["right_hand_pose"] == 0).all() and (loaded["expression"] == 0).all()
    np.testing.assert_array_equal(loaded["transl"], [[0.0, 0.0, 3.0]])


def test_json_matches_npz() -> None:
    params = _params(2)
    document = json.loads(export_params_json(params))
    with np.load(io.BytesIO(export_params_npz(params))) as npz:
        for key in npz.files:
            value = np.asarray(document[key])
            assert value.shape == npz[key].shape, key
            # float32 values are written as their shortest repr and read back exactly.
            np.testing.assert_array_equal(value.astype(npz[key].dtype), npz[key])
    assert json.loads(export_params_json({**_params(1), "body_pose": np.full(63, 0.1)}))[
        "body_pose"
    ] == [[0.1] * 63]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"body_pose": np.zeros((2, 69))}, r"body_pose must have shape \(N, 63\)"),
        ({"betas": np.zeros((2, 16))}, r"betas must have shape \(N, 10\)"),
        ({"transl": np.zeros((3, 3))}, "one row per person"),
        ({"jaw_pose": np.zeros((2, 3, 3))}, "jaw_pose must have shape"),
        ({"global_orient": np.full((2, 3), np.nan)}, "NaN"),
        ({"expression": np.array([["a"] * 10] * 2)}, "numbers"),
        ({"anny_pose": np.array([{"x": 1}], dtype=object)}, "numeric or boolean"),
    ],
)
def test_bad_params_are_rejected(change: dict, message: str) -> None:
    params = {**_params(2), **change}
    with pytest.raises(ValueError, match=message):
        export_params_npz(params)
    with pytest.raises(ValueError, match=message):
        export_params_json(params)


def test_missing_required_params_are_named() -> None:
    params = _params(1)
    del params["betas"], params["transl"]
    with pytest.raises(ValueError, match="missing SMPL-X parameters: betas, transl"):
        validate_params(params)


def test_json_rejects_non_finite_extras() -> None:
    with pytest.raises(ValueError, match="NaN"):
        export_params_json({**_params(1), "anny_phenotype": np.array([np.nan])})
