"""The diffusion pose prior (DPoser-style): a score-based model over SMPL-X body pose.

``PosePrior`` holds the score network and the normalisation; :mod:`shared.prior.sampling` draws
poses, completes partial poses, denoises poses and provides ``PriorLoss`` for fitting;
:mod:`shared.prior.training` trains a prior from mocap poses.
"""

from shared.prior.model import BODY_JOINTS, POSE_DIM, PosePrior, PriorConfig
from shared.prior.sampling import PriorLoss, complete, denoise_poses, generate
from shared.prior.sde import DiffusionSDE

__all__ = [
    "BODY_JOINTS",
    "POSE_DIM",
    "DiffusionSDE",
    "PosePrior",
    "PriorConfig",
    "PriorLoss",
    "complete",
    "denoise_poses",
    "generate",
]
