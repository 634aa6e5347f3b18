"""What a set of hypotheses says: one representative pose, how unsure each joint is, and where.

All on pelvis-relative joints (the pose, not where the body stands: absolute depth from one
image is a matter of the assumed body size) in the camera frame:

- ``spread_mm`` per joint: the standard deviation of the hypotheses' positions per axis,
  ``sqrt(mean_n |J_n - mean|^2 / 3)``, in millimetres. The true position lies within 1 / 2
  spreads per axis about as often as a Gaussian's would (68 / 95 %) when the hypotheses are
  calibrated; ``bench/lifting.py`` measures how often it does.
- ``representative``: the medoid, the hypothesis closest on average to all the others (a real
  sample, so a plausible pose, unlike the average of the hypotheses).
- ``ambiguous``: joints whose spread exceeds :data:`AMBIGUOUS_SPREAD_MM`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AMBIGUOUS_SPREAD_MM = 75.0
"""A joint is called ambiguous when its hypotheses spread more than this per axis. On noisy
synthetic views (``bench/lifting.py``) seen joints spread about 50 mm and hidden ones about
110 mm: the threshold sits between, so that it names the joints the photo leaves open."""


@dataclass
class HypothesisSummary:
    """Per track and frame: (..., ) over the leading dims of the joints given."""

    representative: np.ndarray  # (...,) int index of the medoid hypothesis
    spread_mm: np.ndarray  # (..., 22) per-axis standard deviation of each joint, millimetres
    ambiguous: np.ndarray  # (..., 22) bool: spread above AMBIGUOUS_SPREAD_MM
    mean_joints: np.ndarray  # (..., 22, 3) the hypotheses' mean, pelvis-relative, metres


def summarise(joints: np.ndarray) -> HypothesisSummary:
    """(..., N, 22, 3) hypotheses' joints (pelvis first) -> :class:`HypothesisSummary`."""
    joints = np.asarray(joints, dtype=np.float64)
    relative = joints - joints[..., :1, :]
    mean = relative.mean(-3)  # (..., 22, 3)
    spread = np.sqrt(np.square(relative - mean[..., None, :, :]).sum(-1).mean(-2) / 3.0) * 1e3
    # Mean per-joint distance between every pair of hypotheses: (..., N, N).
    pairwise = np.linalg.norm(relative[..., :, None, :, :] - relative[..., None, :, :, :], axis=-1)
    representative = pairwise.mean(-1).mean(-1).argmin(-1)
    return HypothesisSummary(
        representative=representative,
        spread_mm=spread.astype(np.float32),
        ambiguous=spread > AMBIGUOUS_SPREAD_MM,
        mean_joints=mean.astype(np.float32),
    )
