"""The benchmarks' shared Procrustes alignment (PA-MPJPE)."""

from __future__ import annotations

import numpy as np
import roma
import torch

from bench.common import procrustes_aligned


def test_procrustes_undoes_a_similarity_and_keeps_a_mirror_image_apart() -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(4, 22, 3))
    rotation = roma.random_rotmat(4, dtype=torch.float64).numpy()
    moved = 1.7 * np.einsum("bij,bkj->bki", rotation, truth) + rng.normal(size=(4, 1, 3))
    np.testing.assert_allclose(procrustes_aligned(moved, truth), truth, atol=1e-9)
    # A reflection is not a rotation: the mirror image must not align.
    mirrored = truth * np.array([-1.0, 1.0, 1.0])
    assert np.abs(procrustes_aligned(mirrored, truth) - truth).max() > 0.1
