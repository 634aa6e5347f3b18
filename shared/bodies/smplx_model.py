"""A user-supplied SMPL-X model, posed from SMPL-X-convention parameters.

SMPL-X's model files are licensed by the Max Planck Institute and never shipped with bodyserve;
the ``smplx`` package (code licence: non-commercial) is the optional extra ``bodyserve[smplx]``.
Both are only needed to turn SMPL-X parameters (e.g. from
:func:`shared.bodies.smplx_convention.anny_to_smplx`) into an SMPL-X mesh.

Hand poses are full axis-angle (no PCA) relative to the FLAT hand (``flat_hand_mean=True``),
the convention :mod:`shared.bodies.smplx_convention` produces.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from shared.bodies.smplx_convention import (
    NUM_BETAS,
    NUM_EXPRESSION,
    SMPLX_JOINT_NAMES,
    SMPLX_PARAM_DIMS,
)

_POSE_SIZES = {k: n for k, n in SMPLX_PARAM_DIMS.items() if k not in ("betas", "expression")}


@dataclass
class SmplxOutput:
    vertices: torch.Tensor  # (B, V, 3) metres, V = 10475 for SMPL-X
    joints: torch.Tensor  # (B, 55, 3) the skeleton's joints (SMPLX_JOINT_NAMES order)
    faces: np.ndarray  # (F, 3) int64 triangles
    joint_names: tuple[str, ...] = SMPLX_JOINT_NAMES


def _import_smplx() -> Any:
    try:
        # smplx is an optional extra (its code licence is non-commercial): loaded only when used.
        import smplx
    except ImportError as error:
        raise ImportError(
            "SMPL-X support needs the optional 'smplx' package (non-commercial licence): "
            "pip install 'bodyserve[smplx]'"
        ) from error
    return smplx


def find_model_file(model_path: str | os.PathLike[str], gender: str = "neutral") -> Path:
    """The SMPL-X model file: ``model_path`` itself, or ``SMPLX_<GENDER>.npz`` / ``.pkl`` in the
    folder ``model_path`` or in its ``smplx/`` subfolder (smplx's ``models/`` layout)."""
    path = Path(model_path).expanduser()
    if path.is_file():
        return path
    name = f"SMPLX_{gender.upper()}"
    candidates = [
        folder / f"{name}.{ext}" for folder in (path, path / "smplx") for ext in ("npz", "pkl")
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"No SMPL-X model file at {path}: expected one of "
        + ", ".join(str(c) for c in candidates)
        + " (download SMPL-X from https://smpl-x.is.tue.mpg.de; its licence applies)."
    )


class SmplxBody:
    """An SMPL-X model loaded with the ``smplx`` package (imported on construction only)."""

    name = "smplx"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        gender: str = "neutral",
        num_betas: int = NUM_BETAS,
        num_expression_coeffs: int = NUM_EXPRESSION,
        device: str | torch.device = "cpu",
    ) -> None:
        smplx = _import_smplx()
        self.model_file = find_model_file(model_path, gender)
        ext = self.model_file.suffix.lstrip(".")
        if ext not in ("npz", "pkl"):
            raise ValueError(f"Unsupported SMPL-X model file {self.model_file} (npz or pkl)")
        self.model = smplx.create(
            str(self.model_file),
            model_type="smplx",
            gender=gender,
            ext=ext,
            use_pca=False,
            flat_hand_mean=True,
            num_betas=num_betas,
            num_expression_coeffs=num_expression_coeffs,
            batch_size=1,
        ).to(device)
        self.model.eval()
        self.num_betas = int(self.model.num_betas)
        self.num_expression = int(self.model.num_expression_coeffs)
        self.faces: np.ndarray = np.asarray(self.model.faces, dtype=np.int64)

    @property
    def vertex_count(self) -> int:
        return int(self.model.v_template.shape[0])

    @property
    def joint_names(self) -> list[str]:
        return list(SMPLX_JOINT_NAMES)

    @property
    def device(self) -> torch.device:
        return cast(torch.device, self.model.v_template.device)  # smplx is untyped

    def _tensor(self, value: Any, batch: int, size: int) -> torch.Tensor:
        dtype, device = self.model.v_template.dtype, self.device
        if value is None:
            return torch.zeros(batch, size, dtype=dtype, device=device)
        tensor = torch.as_tensor(value, dtype=dtype, device=device).reshape(batch, -1)
        if tensor.shape[1] > size:
            raise ValueError(f"Expected at most {size} values per person, got {tensor.shape[1]}")
        if tensor.shape[1] < size:  # fewer betas / expression coefficients: pad with zeros
            tensor = torch.cat([tensor, tensor.new_zeros(batch, size - tensor.shape[1])], 1)
        return tensor

    def _betas(self, betas: Any, batch: int) -> torch.Tensor:
        return self._tensor(betas, batch, self.num_betas)

    @torch.no_grad()
    def forward(self, params: Mapping[str, Any]) -> SmplxOutput:
        """Pose the model: ``params`` as from ``anny_to_smplx`` (any of ``global_orient``,
        ``body_pose``, hand poses, ``jaw_pose``, eye poses, ``transl``, ``betas``,
        ``expression``; missing entries are zero, other keys ignored)."""
        present = [v for k, v in params.items() if k in _POSE_SIZES and v is not None]
        batch = torch.as_tensor(present[0]).shape[0] if present else 1
        kwargs = {key: self._tensor(params.get(key), batch, n) for key, n in _POSE_SIZES.items()}
        kwargs["betas"] = self._betas(params.get("betas"), batch)
        kwargs["expression"] = self._tensor(params.get("expression"), batch, self.num_expression)
        output = self.model(**kwargs, return_verts=True)
        return SmplxOutput(
            vertices=output.vertices,
            joints=output.joints[:, : len(SMPLX_JOINT_NAMES)],
            faces=self.faces,
        )

    __call__ = forward

    @torch.no_grad()
    def pelvis_rest(self, betas: Any = None) -> torch.Tensor:
        """(B, 3) the rest pelvis joint J0 for these betas (default zeros, B = 1): SMPL-X rotates
        about it, so ``transl = pelvis - J0`` (see ``smplx_convention.smplx_transl``)."""
        # smplx is an optional extra (its code licence is non-commercial): loaded only when used.
        from smplx.lbs import blend_shapes, vertices2joints

        batch = 1 if betas is None or torch.as_tensor(betas).dim() < 2 else len(betas)
        b = self._betas(betas, batch)
        shaped = self.model.v_template[None] + blend_shapes(b, self.model.shapedirs)
        joints = cast(torch.Tensor, vertices2joints(self.model.J_regressor[:1], shaped))  # untyped
        return joints[:, 0]
