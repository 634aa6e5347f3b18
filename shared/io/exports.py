"""Export meshes (GLB, OBJ, PLY) and body-model parameters (NPZ, JSON) as bytes.

Coordinates: bodyserve's meshes live in the OpenCV camera frame (x right, y down, z ahead,
metres; see :mod:`shared.bodies.base`).

- **GLB** follows glTF's convention (+Y up, the camera looking down -Z): vertices are converted
  by flipping y and z, ``(x, y, z) -> (x, -y, -z)`` (a 180-degree rotation about x, so the
  triangles keep their winding), and a person standing in front of the camera stands upright
  in any glTF viewer. Smooth vertex normals are included (glTF viewers otherwise shade flat).
- **OBJ** and **PLY** keep the OpenCV camera frame unchanged, so their vertices equal the
  server's numbers (and the SMPL-X/Anny vertex order, one output vertex per model vertex).

Several people: one GLB or OBJ with one node/object per person (``person_0``, ``person_1``, ...),
one PLY holding every person's vertices with an extra per-vertex ``person`` property (PLY has
no notion of separate objects).

Parameters: :func:`export_params_npz` writes exactly the keyword arguments of
``smplx.SMPLX.forward`` (float32, one row per person), so SMPL-X users can run::

    params = {k: torch.from_numpy(v) for k, v in np.load("params.npz").items()}
    model = smplx.create(model_path, "smplx", use_pca=False, batch_size=len(params["betas"]))
    output = model(**params)

(hand poses are full axis-angle, hence ``use_pca=False``; extra keys such as ``anny_pose`` pass
through, and ``SMPLX.forward`` ignores unknown keywords).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal, cast

import numpy as np
import trimesh

__all__ = [
    "MESH_FORMATS",
    "SMPLX_PARAM_DIMS",
    "SMPLX_REQUIRED",
    "export_mesh",
    "export_meshes",
    "export_params_json",
    "export_params_npz",
    "opencv_to_gltf",
    "validate_params",
]

from shared.bodies.smplx_convention import SMPLX_PARAM_DIMS

MeshFormat = Literal["glb", "obj", "ply"]
MESH_FORMATS: Final[tuple[str, ...]] = ("glb", "obj", "ply")

# Required; the others default to zeros (a relaxed hand, neutral face), as in smplx itself.
SMPLX_REQUIRED: Final[tuple[str, ...]] = ("global_orient", "body_pose", "betas", "transl")

# OpenCV camera frame -> glTF (+Y up, camera looking down -Z): flip y and z.
_OPENCV_TO_GLTF: Final[np.ndarray] = np.array([1.0, -1.0, -1.0])


def opencv_to_gltf(vertices: np.ndarray) -> np.ndarray:
    """Points from the OpenCV camera frame to glTF's: ``(x, y, z) -> (x, -y, -z)``."""
    return np.asarray(np.asarray(vertices, dtype=np.float64) * _OPENCV_TO_GLTF)


# --- meshes -----------------------------------------------------------------------------------


def _check_mesh(index: int, vertices: Any, faces: Any) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"mesh {index}: vertices must have shape (V, 3), got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"mesh {index}: faces must have shape (F, 3) (triangles), got {f.shape}")
    if len(f) and not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"mesh {index}: faces must be integer indices, got {f.dtype}")
    if len(v) == 0 or len(f) == 0:
        raise ValueError(f"mesh {index}: a mesh needs at least one vertex and one face")
    if f.min() < 0 or f.max() >= len(v):
        raise ValueError(f"mesh {index}: face indices must lie in [0, {len(v)})")
    if not np.isfinite(v).all():
        raise ValueError(f"mesh {index}: vertices contain NaN or infinity")
    return v, f.astype(np.int64)


def export_mesh(vertices: np.ndarray, faces: np.ndarray, fmt: MeshFormat) -> bytes:
    """One mesh, ``vertices`` (V, 3) in the OpenCV camera frame and ``faces`` (F, 3), as bytes.

    ``fmt``: ``"glb"`` (converted to glTF's +Y-up frame by flipping y and z), ``"obj"`` or
    ``"ply"`` (kept in the OpenCV camera frame). Vertex order and count are preserved.
    """
    return export_meshes([(vertices, faces)], fmt)


def export_meshes(
    meshes: Sequence[tuple[np.ndarray, np.ndarray]],
    fmt: MeshFormat,
    names: Sequence[str] | None = None,
) -> bytes:
    """Several people in one file: a node (GLB) or object (OBJ) per person, named ``names``
    (default ``person_0``, ``person_1``, ...); for PLY one mesh with a per-vertex ``person``
    index. Coordinates as in :func:`export_mesh`: GLB is flipped to glTF's +Y up (``y`` and
    ``z`` negated), OBJ and PLY stay in the OpenCV camera frame.
    """
    if fmt not in MESH_FORMATS:
        raise ValueError(f"unknown mesh format {fmt!r}; choose one of {', '.join(MESH_FORMATS)}")
    if not meshes:
        raise ValueError("nothing to export: no meshes given")
    if names is None:
        names = [f"person_{i}" for i in range(len(meshes))]
    names = list(names)
    if len(names) != len(meshes) or len(set(names)) != len(names):
        raise ValueError("names must give one distinct name per mesh")
    checked = [_check_mesh(i, v, f) for i, (v, f) in enumerate(meshes)]

    if fmt == "ply":
        merged = cast(
            trimesh.Trimesh,
            trimesh.util.concatenate([trimesh.Trimesh(v, f, process=False) for v, f in checked]),
        )
        merged.vertex_attributes["person"] = np.repeat(
            np.arange(len(checked), dtype=np.int32), [len(v) for v, _ in checked]
        )
        return bytes(trimesh.exchange.ply.export_ply(merged, encoding="binary"))

    scene = trimesh.Scene()
    for name, (v, f) in zip(names, checked, strict=True):
        mesh = trimesh.Trimesh(opencv_to_gltf(v) if fmt == "glb" else v, f, process=False)
        _ = mesh.vertex_normals  # computed now, so the exporters include them
        scene.add_geometry(mesh, node_name=name, geom_name=name)
    # trimesh's exporters are unannotated: export_glb gives the file's bytes, export_obj its text.
    if fmt == "glb":
        export_glb = cast(Callable[..., bytes], trimesh.exchange.gltf.export_glb)
        return bytes(export_glb(scene, include_normals=True))
    export_obj = cast(Callable[..., str], trimesh.exchange.obj.export_obj)
    text = export_obj(scene, include_normals=True, include_color=False)
    return text.encode("utf-8")


# --- parameters -------------------------------------------------------------------------------


def validate_params(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Check and normalise SMPL-X parameters, one row per person (``N`` people).

    The result holds all ten ``smplx.SMPLX.forward`` keys of :data:`SMPLX_PARAM_DIMS`, each
    ``(N, D)`` float32. :data:`SMPLX_REQUIRED` must be given; the hand, jaw and eye poses and
    the expression default to zeros. Each is ``(N, D)`` (``(D,)`` is read as one person;
    ``body_pose`` may also be ``(N, 21, 3)`` and the hand poses ``(N, 15, 3)``) and finite. Any
    other key (``anny_pose``, ``anny_phenotype``, ...) passes through unchanged, as long as it
    is a numeric or boolean array (no Python objects: NPZ files must load without pickle).
    """
    missing = [key for key in SMPLX_REQUIRED if key not in params]
    if missing:
        raise ValueError(f"missing SMPL-X parameters: {', '.join(missing)}")
    out: dict[str, np.ndarray] = {}
    count: int | None = None
    for key, dim in SMPLX_PARAM_DIMS.items():
        if key not in params:
            continue
        value = np.asarray(params[key])
        if value.ndim == 1:
            value = value[None]
        elif value.ndim == 3 and value.shape[2] == 3 and value.shape[1] * 3 == dim:
            value = value.reshape(len(value), dim)
        if value.ndim != 2 or value.shape[1] != dim:
            raise ValueError(
                f"{key} must have shape (N, {dim}) (one row per person), got {value.shape}"
            )
        if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
            raise ValueError(f"{key} must hold numbers, got dtype {value.dtype}")
        if count is None:
            count = len(value)
        elif len(value) != count:
            raise ValueError(
                f"{key} has {len(value)} rows but global_orient has {count}: every parameter "
                "needs one row per person"
            )
        value = value.astype(np.float32)
        if not np.isfinite(value).all():
            raise ValueError(f"{key} contains NaN or infinity")
        out[key] = value
    assert count is not None
    out = {
        key: out[key] if key in out else np.zeros((count, dim), np.float32)
        for key, dim in SMPLX_PARAM_DIMS.items()
    }
    for key, raw in params.items():
        if key in out:
            continue
        if not isinstance(key, str) or not key or "/" in key:
            raise ValueError(f"parameter names must be non-empty strings without '/': {key!r}")
        value = np.asarray(raw)
        if value.dtype.kind not in "biuf":
            raise ValueError(f"{key} must be a numeric or boolean array, got dtype {value.dtype}")
        out[key] = value
    return out


def export_params_npz(params: Mapping[str, Any]) -> bytes:
    """SMPL-X parameters (see :func:`validate_params`) as a compressed ``.npz`` file.

    The keys are exactly ``smplx.SMPLX.forward``'s keyword arguments (float32, ``(N, D)``) plus
    any extra keys given; it loads with ``np.load`` without ``allow_pickle``.
    """
    arrays = validate_params(params)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _to_json_value(value: np.ndarray) -> Any:
    if np.issubdtype(value.dtype, np.floating):
        if not np.isfinite(value).all():
            raise ValueError("parameters contain NaN or infinity, which JSON cannot hold")
        if value.dtype == np.float32:
            # Shortest decimal that reads back to the same float32 (0.1, not 0.100000001490116).
            return value.astype(str).astype(np.float64).tolist()
        return value.astype(np.float64).tolist()
    return value.tolist()


def export_params_json(params: Mapping[str, Any]) -> bytes:
    """The same parameters as :func:`export_params_npz`, as a UTF-8 JSON object.

    ``{"global_orient": [[...], ...], "body_pose": [[...]], ...}``: the same keys, each a list
    with one row per person, numbers that read back to the exact float32 values.
    """
    arrays = validate_params(params)
    document = {key: _to_json_value(value) for key, value in arrays.items()}
    return json.dumps(document, allow_nan=False, separators=(",", ":")).encode("utf-8")
