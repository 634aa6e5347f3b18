"""Motion capture ingestion: BVH reading/writing, retargeting to SMPL-X-convention body poses on
Anny's skeleton, AMASS-style ``.npz`` reading, and the cleaned, resampled, split pose dataset.

The CMU data used here: "The data used in this project was obtained from mocap.cs.cmu.edu. The
database was created with funding from NSF EIA-0196217."
"""

from shared.mocap.amass import read_amass
from shared.mocap.bvh import BvhError, BvhMotion, BvhSkeleton, read_bvh, write_bvh
from shared.mocap.dataset import (
    DEFAULT_VALID_SUBJECTS,
    CleaningConfig,
    PoseDataset,
    PoseSequence,
    build_dataset,
)
from shared.mocap.retarget import (
    FAMILIES,
    BodyMotion,
    Retargeter,
    RetargetError,
    detect_family,
    retarget,
)

__all__ = [
    "DEFAULT_VALID_SUBJECTS",
    "FAMILIES",
    "BodyMotion",
    "BvhError",
    "BvhMotion",
    "BvhSkeleton",
    "CleaningConfig",
    "PoseDataset",
    "PoseSequence",
    "RetargetError",
    "Retargeter",
    "build_dataset",
    "detect_family",
    "read_amass",
    "read_bvh",
    "retarget",
    "write_bvh",
]
