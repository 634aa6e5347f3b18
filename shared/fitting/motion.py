"""Motion denoising: a jittery motion in, a smooth and plausible one out (DPoser's motion task).

Input: noisy 3D positions of the 22 SMPL-X body joints per frame (``joints`` (T, 22, 3)), or
noisy SMPL-X-convention parameters per frame (``poses``). Output: per-frame ``global_orient``,
``body_pose`` and ``pelvis`` whose forward kinematics on ONE skeleton for the whole motion
(:class:`~shared.bodies.skeleton.BodySkeleton`) give the clean ``joints``.

Method (from joints):

1. **Noise level** ``sigma``, estimated from the motion itself (:func:`estimate_joint_noise`:
   the frame-to-frame curvature), so one setting serves clean and very noisy motions alike.
2. **Temporal smoothing** of the joints: the exact minimiser of ``|x - y|^2 / (2 sigma^2)``
   plus squared accelerations and velocities in physical units (frame differences times
   ``fps^2`` and ``fps``, integrated over time), so the weights hold at any frame rate
   (:func:`smooth_positions`, a Whittaker smoother, one banded solve per joint). It is made
   robust by reweighting (Geman-McClure, :func:`robust_smooth_positions`): a joint the tracker
   lost for a few frames counts little.
3. **One skeleton** for the motion, as an Anny phenotype (:func:`fit_phenotype`), from the mean
   squared bone lengths of the raw joints with the noise's bias (``+6 sigma^2``) taken out. A
   phenotype keeps bone lengths human and left/right symmetric with 6 numbers where 21 free
   lengths would soak up noise, and poses Anny's mesh directly; the price is that a skeleton of
   non-Anny proportions is matched only approximately.
4. **Poses**: every frame's ``global_orient``, ``body_pose`` and ``pelvis`` fitted to the
   smoothed joints on that skeleton, with the **pose prior** (DPoser's denoising regulariser,
   :class:`~shared.prior.sampling.PriorLoss`, on every frame's ``body_pose``, its time range
   annealed) and a weak smoothness of the rotations no joint shows (twists, hands, feet, head).
   Started by a swing-only inverse kinematics pass (:func:`initial_pose`); L-BFGS, in stages
   within which the prior's random draws are frozen (L-BFGS needs a deterministic objective).

From poses: each joint's rotation (unit quaternions) and the pelvis are smoothed the same way,
with the rotation noise estimated from the rotations (:func:`estimate_rotation_noise`), then the
prior adjusts every frame, held near its smoothed rotations by their squared geodesic angle.
The skeleton is Anny's neutral one.

Why not one joint optimisation of everything against the raw joints (the textbook MAP)? It was
tried: from any start short of the truth, L-BFGS and Adam stall in poor valleys (smoothness
couples the frames, rotations make it non-convex), and where it converges it over-smooths fast
moves (kicks, dribbles: real accelerations are heavy-tailed); smoothing first and fitting each
frame after was both better (about 20 % lower MPJPE than a tuned Gaussian filter against
about 10 %) and several times faster.

Frame: whatever frame the observations are in (SMPL-X's Y-up for the API); the prior only sees
``body_pose``, which is frame-independent. Deterministic under ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import cast

import numpy as np
import roma
import torch
from scipy.linalg import solveh_banded
from scipy.sparse import diags

from shared.bodies.skeleton import BODY_JOINT_NAMES, BODY_PARENTS, NUM_BODY_JOINTS, BodySkeleton
from shared.prior.model import PosePrior
from shared.prior.sampling import PriorLoss

JOINT_COUNT = len(BODY_JOINT_NAMES)  # 22: the pelvis and the 21 body joints
PHENOTYPE_SIZE = 6
DEFAULT_ITERATIONS = 200
MAX_FRAMES = 10_000

_CHILDREN: list[list[int]] = [
    [c for c in range(JOINT_COUNT) if BODY_PARENTS[c] == j] for j in range(JOINT_COUNT)
]


@dataclass
class MotionSettings:
    """Weights of the objective (see the module docstring) and the optimiser's schedule."""

    # Penalties on every joint's squared acceleration ((m/s^2)^-2 per second of motion) and
    # velocity ((m/s)^-2 per second), against observations weighted 1 / (2 sigma^2).
    acceleration_weight: float = 0.35
    velocity_weight: float = 1 / 72
    # The same on the rotation vectors of body_pose ((rad/s^2)^-2 per second).
    rotation_acceleration_weight: float = 1 / (2 * 60.0**2)
    # Poses: the smoother's weight on the quaternions' accelerations, and the noise left after
    # smoothing (a fraction of the input's) that holds each frame against the prior.
    rotation_smoothing_weight: float = 0.3
    smoothed_rotation_noise: float = 0.5
    prior_weight: float = 0.3
    prior_t_range: tuple[float, float] = (0.2, 0.02)
    # L-BFGS runs in this many stages; the prior's draws are frozen within a stage, redrawn
    # between stages.
    stages: int = 4
    # Robust scale of the smoother's observation term (Geman-McClure), in noise standard
    # deviations, and its reweighting rounds (0: plain least squares).
    robust_scale: float = 8.0
    robust_rounds: int = 3
    # Bounds of the estimated noise level (m for joints, rad for rotations): clean input is
    # trusted, not copied; beyond the upper bound the input is mostly noise anyway.
    min_noise: float = 0.005
    max_noise: float = 0.5
    # Noise level assumed when the motion is too short to estimate it (fewer than 3 frames).
    default_joint_noise: float = 0.02
    default_rotation_noise: float = 0.05
    # Pull of the phenotype towards the neutral body (on its logits).
    phenotype_weight: float = 0.1


@dataclass
class MotionResult:
    """A denoised motion, T frames."""

    global_orient: np.ndarray  # (T, 3) float32 axis-angle, the observations' frame
    body_pose: np.ndarray  # (T, 21, 3) float32 axis-angle, SMPL-X body joint order
    pelvis: np.ndarray  # (T, 3) float32 pelvis positions, metres
    joints: np.ndarray  # (T, 22, 3) float32 the skeleton's joints, order BODY_JOINT_NAMES
    phenotype: np.ndarray  # (6,) float32 the Anny phenotype of the skeleton (neutral for poses)
    noise: float  # the input's estimated noise level (m for joints, rad for poses); nan: unknown


def denoise_motion(
    joints: np.ndarray | None = None,
    poses: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None,
    fps: float = 30.0,
    prior: PosePrior | None = None,
    iterations: int = DEFAULT_ITERATIONS,
    seed: int = 0,
    settings: MotionSettings | None = None,
) -> MotionResult:
    """Denoise a motion given as joints OR as poses (exactly one).

    Args:
        joints: (T, 22, 3) noisy joint positions, metres, order ``BODY_JOINT_NAMES``.
        poses: ``(global_orient (T, 3), body_pose (T, 21, 3), pelvis (T, 3) or None)`` noisy
            SMPL-X-convention parameters (axis-angle, radians; metres). Without ``pelvis`` the
            pelvis stays at the origin.
        fps: frames per second of the motion.
        prior: the learned pose prior; ``None``: skeleton, observation and smoothness only.
        iterations: L-BFGS iterations of the pose fit (0: the smoothed start as it is; from
            poses without a prior, nothing is iterated).
        seed: seeds the prior's draws: same inputs and seed, same result.
        settings: the objective's weights; default :class:`MotionSettings`.
    """
    settings = settings or MotionSettings()
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not math.isfinite(fps):
        raise ValueError(f"fps must be a positive number of frames per second, got {fps!r}")
    if fps <= 0:
        raise ValueError(f"fps must be a positive number of frames per second, got {fps!r}")
    if iterations < 0:
        raise ValueError(f"iterations must be 0 or more, got {iterations}")
    if (joints is None) == (poses is None):
        raise ValueError(
            "give the motion as exactly one of joints (T, 22, 3) or poses "
            "(global_orient (T, 3), body_pose (T, 21, 3), pelvis (T, 3) or None)"
        )
    with torch.random.fork_rng(), torch.enable_grad():
        torch.manual_seed(seed)
        problem = _Problem(prior, float(fps), seed, settings)
        if joints is not None:
            return problem.from_joints(_as_frames(joints, (JOINT_COUNT, 3), "joints"), iterations)
        assert poses is not None
        return problem.from_poses(*_check_poses(poses), iterations)


# --------------------------------------------------------------------------- input checks


def _as_frames(array: np.ndarray, shape: tuple[int, ...], name: str) -> torch.Tensor:
    """(T, *shape) float32 tensor from an array-like, or a ValueError saying what is wrong."""
    try:
        values = np.asarray(array, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an array of numbers (ragged or not numeric)") from None
    want = "(T, " + ", ".join(map(str, shape)) + ")"
    if values.ndim != len(shape) + 1 or values.shape[1:] != shape:
        hint = ""
        if name == "joints" and values.ndim == 3 and values.shape[2] == 3:
            hint = (
                f": each frame needs the {JOINT_COUNT} SMPL-X body joints "
                f"({', '.join(BODY_JOINT_NAMES[:3])}, ..., {BODY_JOINT_NAMES[-1]}), not "
                f"{values.shape[1]}"
            )
        raise ValueError(f"{name} must have shape {want}, got {values.shape}{hint}")
    if not 1 <= len(values) <= MAX_FRAMES:
        raise ValueError(f"{name} must have 1 to {MAX_FRAMES} frames, got {len(values)}")
    if not np.isfinite(values).all():
        raise ValueError(f"{name} holds NaN or infinite values; send finite numbers")
    return torch.from_numpy(values.copy())


def _check_poses(
    poses: tuple[np.ndarray, np.ndarray, np.ndarray | None],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if not isinstance(poses, tuple | list) or len(poses) != 3:
        raise ValueError(
            "poses must be (global_orient (T, 3), body_pose (T, 21, 3), pelvis (T, 3) or None)"
        )
    orient = _as_frames(poses[0], (3,), "global_orient")
    body_pose = _as_frames(poses[1], (NUM_BODY_JOINTS, 3), "body_pose")
    pelvis = None if poses[2] is None else _as_frames(poses[2], (3,), "pelvis")
    for name, value in (("body_pose", body_pose), ("pelvis", pelvis)):
        if value is not None and len(value) != len(orient):
            raise ValueError(
                f"{name} has {len(value)} frames and global_orient {len(orient)}: send one of "
                "each per frame"
            )
    return orient, body_pose, pelvis


# --------------------------------------------------------------------------- noise level


def estimate_joint_noise(joints: torch.Tensor, fps: float) -> float:
    """Per-coordinate noise std (m) of (T, K, 3) positions, from their frame-to-frame curvature.

    ``y[t] - (y[t-1] + y[t+1]) / 2`` is the noise's ``n[t] - (n[t-1] + n[t+1]) / 2`` (std
    ``sqrt(1.5) sigma``) plus half the motion's own acceleration times ``dt^2``; the median
    absolute value (x 1.4826: a std) ignores the few fast moments, and a typical acceleration of
    2 m/s^2 is removed in quadrature. NaN for fewer than 3 frames.
    """
    if joints.shape[0] < 3:
        return float("nan")
    curvature = joints[1:-1] - (joints[:-2] + joints[2:]) / 2
    robust_std = 1.4826 * float(curvature.abs().median())
    motion = 0.5 * 2.0 / fps**2
    return math.sqrt(max(robust_std**2 - motion**2, 0.0) / 1.5)


def estimate_rotation_noise(rotations: torch.Tensor) -> float:
    """Per-axis noise std (rad) of (T, K, 3, 3) rotations, from their second differences
    (``n[t+1] - 2 n[t] + n[t-1]``, std ``sqrt(6) sigma``). NaN for fewer than 3 frames."""
    if rotations.shape[0] < 3:
        return float("nan")
    step = roma.rotmat_to_rotvec(rotations[:-1].transpose(-1, -2) @ rotations[1:])
    second = step[1:] - step[:-1]
    return 1.4826 * float(second.abs().median()) / math.sqrt(6.0)


# --------------------------------------------------------------------------- smoothing, IK


def smooth_positions(
    points: torch.Tensor,
    noise: float,
    fps: float,
    acceleration_weight: float,
    velocity_weight: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """(T, K, 3) positions smoothed by the acceleration/velocity prior of :class:`MotionSettings`:
    the exact minimiser of ``sum w |x - y|^2 / (2 noise^2) + smoothness(x)`` (a Whittaker
    smoother: one banded linear solve per point). ``weights``: (T, K) per observation, default 1.
    """
    frames, count = points.shape[0], points.shape[1]
    if frames < 3:
        return points.clone()

    second = diags([1.0, -2.0, 1.0], [0, 1, 2], shape=(frames - 2, frames))
    first = diags([-1.0, 1.0], [0, 1], shape=(frames - 1, frames))
    # Gradient of the objective = 0: (W + 2 noise^2 (wa fps^3 D2'D2 + wv fps D1'D1)) x = W y.
    smoothness = (
        2
        * noise**2
        * (
            acceleration_weight * fps**3 * (second.T @ second)
            + velocity_weight * fps * (first.T @ first)
        )
    )
    bands = np.zeros((3, frames))
    bands[1, 1:] = smoothness.diagonal(1)
    bands[0, 2:] = smoothness.diagonal(2)
    diagonal = smoothness.diagonal(0)
    values = points.double().numpy()
    w = np.ones((frames, count)) if weights is None else weights.double().numpy()
    out = np.empty_like(values)
    for k in range(count):
        bands[2] = diagonal + w[:, k]
        out[:, k] = solveh_banded(bands, w[:, k, None] * values[:, k])
    return torch.from_numpy(out).to(points.dtype)


def robust_smooth_positions(
    points: torch.Tensor, noise: float, fps: float, settings: MotionSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`smooth_positions` with a Geman-McClure observation loss, by iteratively
    reweighted least squares: (T, K, 3) -> smoothed (T, K, 3) and the weights (T, K) in [0, 1]
    (near 0: an outlier, e.g. a joint the tracker lost for a frame)."""
    scale = (settings.robust_scale * noise) ** 2
    weights = torch.ones(points.shape[:2], dtype=points.dtype)
    s = settings
    for _ in range(s.robust_rounds):
        smoothed = smooth_positions(
            points, noise, fps, s.acceleration_weight, s.velocity_weight, weights
        )
        squared = (points - smoothed).square().sum(-1)
        weights = (scale / (squared + scale)).square()  # the Geman-McClure IRLS weight
    smoothed = smooth_positions(
        points, noise, fps, s.acceleration_weight, s.velocity_weight, weights
    )
    return smoothed, weights


def smooth_rotations(
    rotvecs: torch.Tensor, noise: float, fps: float, acceleration_weight: float
) -> torch.Tensor:
    """(T, K, 3) axis-angle rotations smoothed over time: each joint's unit quaternions (signs
    made continuous) through :func:`smooth_positions`, normalised back. ``noise``: the rotations'
    noise (rad); ``acceleration_weight``: on the quaternions' accelerations."""
    quaternions = roma.rotvec_to_unitquat(rotvecs.double())
    # q and -q are one rotation: keep each frame on the side of the previous one.
    signs = torch.ones(quaternions.shape[:2], dtype=quaternions.dtype)
    for t in range(1, quaternions.shape[0]):
        same_side = (quaternions[t] * quaternions[t - 1] * signs[t - 1, :, None]).sum(-1) >= 0
        signs[t] = torch.where(same_side, 1.0, -1.0)
    quaternions = quaternions * signs[..., None]
    # A rotation by a small angle a moves a unit quaternion by about a / 2.
    smoothed = smooth_positions(quaternions, noise / 2, fps, acceleration_weight, 0.0)
    smoothed = torch.nn.functional.normalize(smoothed, dim=-1)
    return cast(torch.Tensor, roma.unitquat_to_rotvec(smoothed)).to(rotvecs.dtype)  # roma: untyped


def _swing(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) smallest rotation taking direction ``a`` to direction ``b`` (..., 3)."""
    a = torch.nn.functional.normalize(a, dim=-1)
    b = torch.nn.functional.normalize(b, dim=-1)
    axis = torch.linalg.cross(a, b)
    sin = axis.norm(dim=-1, keepdim=True)
    angle = torch.atan2(sin, (a * b).sum(-1, keepdim=True))
    rotvec = torch.where(sin > 1e-8, axis / sin.clamp(min=1e-12) * angle, torch.zeros_like(axis))
    return cast(torch.Tensor, roma.rotvec_to_rotmat(rotvec))  # roma is untyped


def initial_pose(joints: torch.Tensor, skeleton: BodySkeleton) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse kinematics without twist: (T, 22, 3) joints -> global_orient (T, 3), body_pose
    (T, 21, 3) that point every bone of ``skeleton`` along the observed one.

    A joint with one child turns by the smallest rotation that aims that child; one with
    several (pelvis, spine3) by the rotation that best aligns all of them (Kabsch). Leaf
    joints keep zero rotation.
    """
    frames = joints.shape[0]
    rest = skeleton.rest_joints[0]
    offsets = rest - rest[[0, *BODY_PARENTS[1:]]]
    eye = torch.eye(3).expand(frames, 3, 3)
    global_rot = [eye] * JOINT_COUNT
    local = [eye] * JOINT_COUNT
    for j in range(JOINT_COUNT):
        parent_rot = eye if j == 0 else global_rot[BODY_PARENTS[j]]
        children = _CHILDREN[j]
        if not children:
            global_rot[j] = parent_rot
            continue
        observed = joints[:, children] - joints[:, j : j + 1]  # (T, C, 3)
        if len(children) == 1:
            unturned = (parent_rot @ offsets[children[0], :, None])[..., 0]
            global_rot[j] = _swing(unturned, observed[:, 0]) @ parent_rot
        else:
            bones = offsets[children].expand(frames, -1, -1)
            global_rot[j] = roma.rigid_vectors_registration(bones, observed)
        local[j] = parent_rot.transpose(-1, -2) @ global_rot[j]
    rotvecs = roma.rotmat_to_rotvec(torch.stack(local, 1))
    return rotvecs[:, 0], rotvecs[:, 1:]


def fit_phenotype(
    joints: torch.Tensor, noise: float, pull: float = 0.1, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """(1, 6) the Anny phenotype whose skeleton has the bone lengths of (T, 22, 3) noisy joints
    (``weights`` (T, 22): how much each observation counts, default 1).

    Noise lengthens every observed bone on average (``E|d + n|^2 = |d|^2 + 6 sigma^2`` for
    noise of std ``sigma`` on both ends), short ones most; fitting a skeleton to the joints
    themselves would inherit that bias, so the mean squared lengths are corrected first. ``pull``
    holds the phenotype's logits towards the neutral body.
    """
    parents = list(BODY_PARENTS[1:])
    if weights is None:
        weights = torch.ones(joints.shape[:2])
    pair = weights[:, 1:] * weights[:, parents]  # (T, 21)
    squared = (joints[:, 1:] - joints[:, parents]).square().sum(-1)
    squared = (pair * squared).sum(0) / pair.sum(0).clamp(min=1e-6)  # (21,)
    target = (squared - 6 * noise**2).clamp(min=0.02**2).sqrt()
    logit = torch.zeros(1, PHENOTYPE_SIZE, requires_grad=True)
    for _ in range(2):  # the second round re-linearises at the first round's answer
        linearised = _LinearisedSkeleton(torch.sigmoid(logit).detach())

        def loss(linearised: _LinearisedSkeleton = linearised) -> torch.Tensor:
            rest = linearised(torch.sigmoid(logit)).rest_joints[0]
            lengths: torch.Tensor = (rest[1:] - rest[parents]).norm(dim=-1)  # Tensor.norm: Any
            # Errors relative to a 5 mm length uncertainty per bone.
            fit = (lengths - target).square().sum() / (2 * 0.005**2)
            return fit + pull * logit.square().sum()

        _lbfgs([logit], loss, 30)
    return torch.sigmoid(logit).detach()


class _LinearisedSkeleton:
    """:meth:`BodySkeleton.for_phenotype` linearised around a phenotype (1, 6).

    The exact skeleton costs far more than a whole frame batch of kinematics; the rest joints
    are close to linear in the phenotype (Anny interpolates its shape targets linearly), so a
    finite-difference Jacobian taken once serves a whole optimisation stage.
    """

    def __init__(self, phenotype: torch.Tensor, step: float = 0.05) -> None:
        self.phenotype = phenotype.detach().clone()
        # One step along each phenotype value (back where forward would leave [0, 1]).
        steps = torch.where(self.phenotype[0] + step <= 1.0, step, -step)  # (6,)
        moved = self.phenotype + torch.diag(steps)  # (6, 6)
        with torch.no_grad():  # the point and its 6 neighbours in one batched call
            rest = BodySkeleton.for_phenotype(torch.cat([self.phenotype, moved])).rest_joints
        self.rest = rest[:1]  # (1, 22, 3)
        self.jacobian = (rest[1:] - rest[:1]) / steps[:, None, None]  # (6, 22, 3)

    def __call__(self, phenotype: torch.Tensor) -> BodySkeleton:
        change = torch.einsum("i,ijk->jk", (phenotype - self.phenotype)[0], self.jacobian)
        return BodySkeleton(self.rest + change[None])


# --------------------------------------------------------------------------- the optimisation


def _smoothness(
    points: torch.Tensor, fps: float, weight_acc: float, weight_vel: float
) -> torch.Tensor:
    """Scalar: time integrals of squared accelerations and velocities of (T, ...) values."""
    loss = points.new_zeros(())
    if points.shape[0] >= 2 and weight_vel > 0:
        velocity = (points[1:] - points[:-1]) * fps
        loss = loss + weight_vel * velocity.square().sum() / fps
    if points.shape[0] >= 3 and weight_acc > 0:
        acceleration = (points[2:] - 2 * points[1:-1] + points[:-2]) * fps**2
        loss = loss + weight_acc * acceleration.square().sum() / fps
    return loss


def _lbfgs(
    parameters: list[torch.Tensor], loss_fn: Callable[[], torch.Tensor], iterations: int
) -> None:
    if iterations <= 0:
        return
    optimiser = torch.optim.LBFGS(
        parameters,
        lr=1.0,
        max_iter=iterations,
        history_size=20,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = loss_fn()
        torch.autograd.backward(loss)  # what Tensor.backward (untyped) runs
        return loss

    # LBFGS.step is unannotated (and Optimizer.step's stub wants a closure returning a float).
    optimiser.step(closure)  # type: ignore[no-untyped-call]


class _Problem:
    """The terms both inputs share (prior, smoothness) and the stages of the optimisation."""

    def __init__(
        self, prior: PosePrior | None, fps: float, seed: int, settings: MotionSettings
    ) -> None:
        self.fps = fps
        self.settings = settings
        use_prior = prior is not None and settings.prior_weight > 0
        self.prior_loss = (
            PriorLoss(prior, t_range=settings.prior_t_range) if use_prior and prior else None
        )
        # One generator for the whole motion: every frame's draws follow from the seed.
        self.generator = torch.Generator().manual_seed(seed)
        self._frozen = self.generator.get_state()

    def _noise(self, estimate: float, default: float) -> float:
        s = self.settings
        value = estimate if math.isfinite(estimate) else default
        return min(max(value, s.min_noise), s.max_noise)

    def prior_term(self, body_pose: torch.Tensor, progress: float) -> torch.Tensor:
        """The prior on every frame with this stage's frozen draws (0 without a prior)."""
        if self.prior_loss is None:
            return body_pose.new_zeros(())
        self.generator.set_state(self._frozen)
        prior = self.prior_loss(body_pose, progress, generator=self.generator)
        return self.settings.prior_weight * prior.sum()

    def refine(
        self,
        parameters: list[torch.Tensor],
        loss_fn: Callable[[float], torch.Tensor],
        iterations: int,
    ) -> None:
        """L-BFGS in stages; within a stage the prior's draws are frozen (a deterministic
        objective), between stages they are redrawn and the prior's time range anneals. The
        restarts help even without a prior: the problem is not convex, and a fresh curvature
        history leaves a poor valley sooner."""
        stages = max(1, self.settings.stages)
        done = 0
        for stage in range(stages):
            share = (iterations - done) // (stages - stage)
            done += share
            progress = stage / max(stages - 1, 1)
            # Every evaluation of this stage rewinds to here; the last one leaves the
            # generator past the stage's draws.
            self._frozen = self.generator.get_state()
            _lbfgs(parameters, partial(loss_fn, progress), share)

    # ------------------------------------------------------------------ from joints

    def from_joints(self, observed: torch.Tensor, iterations: int) -> MotionResult:
        s = self.settings
        estimate = estimate_joint_noise(observed, self.fps)
        noise = self._noise(estimate, s.default_joint_noise)

        # (1) The joints smoothed by the acceleration prior (robustly: outliers count less).
        smoothed, weights = robust_smooth_positions(observed, noise, self.fps, s)
        # (2) The skeleton, from the bone lengths the raw joints show.
        phenotype = fit_phenotype(observed, noise, s.phenotype_weight, weights)
        with torch.no_grad():
            skeleton = BodySkeleton.for_phenotype(phenotype)
            start_orient, start_pose = initial_pose(smoothed, skeleton)
        # (3) Every frame's pose fitted to the smoothed joints, with the prior. No coupling
        # between frames but the rotations' (weak) smoothness: a bad start in one frame is
        # mended there.
        global_orient = start_orient.contiguous().clone().requires_grad_(True)
        body_pose = start_pose.contiguous().clone().requires_grad_(True)
        pelvis = smoothed[:, 0].contiguous().clone().requires_grad_(True)

        def loss(progress: float) -> torch.Tensor:
            joints = skeleton(global_orient, body_pose, pelvis)
            fit = (joints - smoothed).square().sum() / (2 * noise**2)
            smooth = _smoothness(body_pose, self.fps, s.rotation_acceleration_weight, 0.0)
            return fit + smooth + self.prior_term(body_pose, progress)

        self.refine([global_orient, body_pose, pelvis], loss, iterations)
        with torch.no_grad():
            joints = skeleton(global_orient, body_pose, pelvis)
        return _result(global_orient, body_pose, pelvis, joints, phenotype, estimate)

    # ------------------------------------------------------------------ from poses

    def from_poses(
        self,
        observed_orient: torch.Tensor,
        observed_pose: torch.Tensor,
        observed_pelvis: torch.Tensor | None,
        iterations: int,
    ) -> MotionResult:
        s = self.settings
        frames = observed_orient.shape[0]
        rotvecs = torch.cat([observed_orient[:, None], observed_pose], 1)  # (T, 22, 3)
        estimate = estimate_rotation_noise(roma.rotvec_to_rotmat(rotvecs))
        noise = self._noise(estimate, s.default_rotation_noise)

        # (1) Every joint's rotation and the pelvis smoothed over time.
        smoothed_rot = smooth_rotations(rotvecs, noise, self.fps, s.rotation_smoothing_weight)
        pelvis = torch.zeros(frames, 3)
        if observed_pelvis is not None:
            pelvis_noise = self._noise(
                estimate_joint_noise(observed_pelvis[:, None], self.fps), s.default_joint_noise
            )
            pelvis = smooth_positions(
                observed_pelvis[:, None], pelvis_noise, self.fps,
                s.acceleration_weight, s.velocity_weight,
            )[:, 0]  # fmt: skip
        phenotype = torch.full((1, PHENOTYPE_SIZE), 0.5)
        with torch.no_grad():
            skeleton = BodySkeleton.for_phenotype(phenotype)
        # (2) The prior, each frame held near its smoothed rotations (squared geodesic angle).
        target = roma.rotvec_to_rotmat(smoothed_rot)
        smoothed_noise = noise * s.smoothed_rotation_noise
        global_orient = smoothed_rot[:, 0].contiguous().clone().requires_grad_(True)
        body_pose = smoothed_rot[:, 1:].contiguous().clone().requires_grad_(True)

        def loss(progress: float) -> torch.Tensor:
            rotations = roma.rotvec_to_rotmat(torch.cat([global_orient[:, None], body_pose], 1))
            angle: torch.Tensor = roma.rotmat_to_rotvec(target.transpose(-1, -2) @ rotations)
            fit = angle.square().sum() / (2 * smoothed_noise**2)
            return fit + self.prior_term(body_pose, progress)

        if self.prior_loss is not None:
            self.refine([global_orient, body_pose], loss, iterations)
        with torch.no_grad():
            joints = skeleton(global_orient, body_pose, pelvis)
        return _result(global_orient, body_pose, pelvis, joints, phenotype, estimate)


def _result(
    global_orient: torch.Tensor,
    body_pose: torch.Tensor,
    pelvis: torch.Tensor,
    joints: torch.Tensor,
    phenotype: torch.Tensor,
    noise: float,
) -> MotionResult:
    def array(value: torch.Tensor) -> np.ndarray:
        return value.detach().numpy().astype(np.float32)

    return MotionResult(
        global_orient=array(global_orient),
        body_pose=array(body_pose),
        pelvis=array(pelvis),
        joints=array(joints),
        phenotype=array(phenotype[0]),
        noise=float(noise),
    )
