"""2D -> 3D lifting with many hypotheses: the pose prior's sampler guided by a reprojection energy.

PlatyPose's idea on bodyserve's prior: every reverse diffusion step predicts a clean pose
``x0_hat``, pulls it (and the body's orientation and position, which the prior does not model)
towards poses whose keypoints project onto the 2D detections, and steps on from the corrected
prediction (a data-consistency step on ``x0``, as in DiffPIR). Each hypothesis draws its own
noise, so the hypotheses spread where the 2D evidence leaves the pose open (depth of a limb,
hidden joints) and agree where it does not.

Per track (one person in one image, or one person over T frames):

1. Rigid start: the prior's mean pose placed at four headings in front of the camera, its
   orientation and position fitted to the torso and head keypoints; the best heading wins (one
   heading for all the frames of a track). Each hypothesis then starts turned by its own random
   rotation (``orient_jitter_deg`` per axis): the prior models the pose, not how the whole body
   leans or turns, and without the turn every hypothesis would lean the same way and the spread
   would be overconfident.
2. Guided sampling: ``steps`` reverse steps of the prior (ancestral, DPM-Solver++ form), each
   followed by ``inner_iterations`` Adam steps on ``x0_hat``, orientation and position against
   the energy (robust reprojection, anatomical limits, and along a track the acceleration of
   the pose) plus a proximal term that keeps ``x0_hat`` near the prior's prediction; the
   proximal weight grows as the noise falls (trust the prior's sharp late predictions, let the
   data steer the blurry early ones). Frames of a track share each hypothesis' noise.
3. Refinement: ``refine_iterations`` Adam steps of the same energy with the proximal term around
   the sample, so every hypothesis reprojects tightly.
4. Rejection: ``oversample`` more hypotheses are drawn than asked for, and the first N that land
   on the keypoints are kept (a hypothesis whose reprojection error exceeds its frame's best by
   ``retry_error`` of the person's size fails: a start turned into a bad basin, the body facing
   away or a leg crossed over). Sampling conditioned on the 2D by rejection; small batches cost
   per operation, not per row, so the extra rows are nearly free.

Frames: the OpenCV camera frame (x right, y down, z ahead), metres. ``global_orient`` rotates the
SMPL-X body frame (Y up, facing +Z) into the camera, so an upright person facing the camera has
``global_orient`` about (pi, 0, 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import roma
import torch
from torch import Tensor

from shared.bodies.limits import limit_penalty
from shared.bodies.skeleton import rodrigues
from shared.fitting.losses import geman_mcclure, person_scale, project, weighted_centre
from shared.lifting.keypoints import LIFT_KEYPOINTS, KeypointSkeleton
from shared.prior.model import PosePrior
from shared.prior.sampling import Stepper, row_noise, time_grid

# Keypoints below this confidence are ignored (as in the deterministic fitter).
MIN_CONFIDENCE = 0.3
_RIGID_NAMES = ("left_shoulder", "right_shoulder", "left_hip", "right_hip", "nose")
_RIGID = [LIFT_KEYPOINTS.index(n) for n in _RIGID_NAMES]
_HEADINGS = (0.0, math.pi, math.pi / 2, -math.pi / 2)
# Upright, facing the camera: SMPL-X's Y up / +Z forward into OpenCV's y down / z ahead.
_FACING_CAMERA = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])
MAX_HYPOTHESES = 64


@dataclass(frozen=True)
class LiftSettings:
    """Knobs of the guided sampler. The defaults were chosen with synthetic noisy views of
    mocap poses (1.5 % keypoint noise, 10 % dropped) and the COCO-annotated skier of the shared
    data, balancing accuracy, calibration of the spread, every hypothesis landing on the
    keypoints, and cost (36 energy evaluations); ``bench/lifting.py`` reports on held-out
    subjects."""

    steps: int = 6
    inner_iterations: int = 2
    refine_iterations: int = 24
    rigid_iterations: int = 15
    learning_rate: float = 0.08
    # Orientation and position move at this fraction of the pose's learning rate.
    rigid_rate: float = 0.5
    # Each hypothesis starts turned by a random rotation of this standard deviation per axis.
    orient_jitter_deg: float = 20.0
    # The body axes of that turn (SMPL-X body frame: x left, y up, z forward).
    jitter_axes: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # Extra hypotheses drawn, as a fraction of those asked for, and the reprojection error
    # (above the frame's best, as a fraction of the person's size) that rejects one.
    oversample: float = 0.5
    retry_error: float = 0.04
    # Robust scale of the reprojection residual, as a fraction of the person's size in pixels.
    sigma: float = 0.05
    # Proximal weight towards the prior's prediction: proximal * (alpha_t / sigma_t)^2.
    proximal: float = 2e-4
    # Proximal weight of the refinement around the final sample.
    refine_proximal: float = 1e-4
    # Acceleration penalty along a track, per m^2 of the pelvis-relative joints' second
    # difference. Small: it irons out jitter; larger, it drags a track off its keypoints.
    smoothness: float = 0.5
    # Weight of the anatomical limits (per squared radian beyond them): the prior keeps the
    # samples human, but the refinement follows the keypoints alone and could bend a knee
    # backwards to meet a noisy ankle.
    limits: float = 10.0


@dataclass
class LiftResult:
    """Hypotheses for S tracks of T frames, N each; camera frame, metres, SMPL-X convention."""

    global_orient: np.ndarray  # (S, T, N, 3) axis-angle
    body_pose: np.ndarray  # (S, T, N, 21, 3) axis-angle
    pelvis: np.ndarray  # (S, T, N, 3)
    joints: np.ndarray  # (S, T, N, 22, 3) BODY_JOINT_NAMES order
    keypoints_2d: np.ndarray  # (S, T, N, 33, 2) the hypotheses' keypoints reprojected, pixels
    reprojection_error: np.ndarray  # (S, T, N) mean px error over confident keypoints


def hypothesis_seeds(seed: int, hypotheses: int) -> list[int]:
    """Independent per-hypothesis seeds derived from one request seed."""
    state = np.random.SeedSequence(int(seed)).generate_state(hypotheses, dtype=np.uint64)
    return [int(s) % 2**63 for s in state]


class _Energy:
    """Robust confidence-weighted reprojection energy of R rows, plus a track velocity penalty."""

    def __init__(
        self,
        skeleton: KeypointSkeleton,
        target: Tensor,
        camera: Tensor,
        frames: int,
        hypotheses: int,
        settings: LiftSettings,
    ) -> None:
        self.skeleton = skeleton
        self.target = target  # (R, K, 3)
        self.camera = camera  # (R, 4)
        self.scale = person_scale(target)  # (R,)
        self.confidence = target[..., 2]
        self.norm = self.confidence.sum(-1).clamp(min=1e-6)
        self.frames = frames
        self.hypotheses = hypotheses
        self.settings = settings

    def __call__(self, pose: Tensor, orient: Tensor, pelvis: Tensor) -> tuple[Tensor, Tensor]:
        """Energy per row (R,) and the joints (R, 22, 3)."""
        joints, keypoints = self.skeleton(orient, pose, pelvis)
        residual = (project(keypoints, self.camera) - self.target[..., :2]) / self.scale[
            :, None, None
        ]
        robust = geman_mcclure(residual.square().sum(-1), self.settings.sigma)
        energy = (self.confidence * robust).sum(-1) / self.norm
        if self.settings.limits > 0:
            energy = energy + self.settings.limits * limit_penalty(pose)
        if self.frames > 2 and self.settings.smoothness > 0:
            # Rows are ordered (track, frame, hypothesis). Penalise each frame's share of the
            # joints' acceleration (second difference): jitter, not steady motion.
            relative = joints - joints[:, :1]  # the pose; where the body stands follows the 2D
            by_frame = relative.view(-1, self.frames, self.hypotheses, 22, 3)
            accel = by_frame[:, 2:] - 2 * by_frame[:, 1:-1] + by_frame[:, :-2]
            cost = accel.square().sum((-1, -2))  # (S, T-2, N)
            share = torch.zeros_like(by_frame[..., 0, 0])
            share[:, 2:] += cost
            share[:, 1:-1] += cost
            share[:, :-2] += cost
            energy = energy + self.settings.smoothness * share.flatten() / 3
        return energy, joints


def _rigid_start(
    skeleton: KeypointSkeleton,
    mean_pose: Tensor,
    target: Tensor,
    camera: Tensor,
    settings: LiftSettings,
    track_length: int = 1,
) -> tuple[Tensor, Tensor]:
    """Best orientation (F, 3) and pelvis (F, 3) of the mean pose per frame, from 4 headings,
    the same heading for the frames of a track (F = tracks * track_length).

    The pose does not change here, so its keypoints are computed once and only moved rigidly.
    """
    frames, headings = target.shape[0], len(_HEADINGS)
    rigid_target = torch.zeros_like(target)
    rigid_target[:, _RIGID] = target[:, _RIGID]
    # Frames without torso keypoints fall back to every keypoint.
    empty = rigid_target[..., 2].sum(-1) <= 0
    rigid_target[empty] = target[empty]
    rigid_target = rigid_target.repeat_interleave(headings, 0)
    cam = camera.repeat_interleave(headings, 0)
    scale = person_scale(rigid_target)
    confidence = rigid_target[..., 2]

    yaw = torch.tensor(_HEADINGS).repeat(frames)
    turn = roma.rotvec_to_rotmat(torch.stack([0 * yaw, yaw, 0 * yaw], -1))
    orient0 = roma.rotmat_to_rotvec(_FACING_CAMERA @ turn)
    depth0 = _initial_depth(skeleton, mean_pose, target, camera).repeat_interleave(headings, 0)
    centre = weighted_centre(target).repeat_interleave(headings, 0)
    xy0 = (centre - cam[:, 2:]) / cam[:, :2] * depth0[:, None]

    with torch.no_grad():
        _, points = skeleton(mean_pose.new_zeros(1, 3), mean_pose, mean_pose.new_zeros(1, 3))
    orient = orient0.clone().requires_grad_(True)
    shift = xy0.clone().requires_grad_(True)
    log_depth = depth0.log().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([orient, shift, log_depth], lr=settings.learning_rate, fused=True)

    def loss() -> tuple[Tensor, Tensor]:
        pelvis = torch.cat([shift, log_depth.exp()[:, None]], -1)
        moved = points @ rodrigues(orient).transpose(-1, -2) + pelvis[:, None]
        residual = (project(moved, cam) - rigid_target[..., :2]) / scale[:, None, None]
        robust = geman_mcclure(residual.square().sum(-1), 0.2)
        return (confidence * robust).sum(-1) / confidence.sum(-1).clamp(min=1e-6), pelvis

    for _ in range(settings.rigid_iterations):
        optimiser.zero_grad()
        torch.autograd.backward(loss()[0].sum())  # what Tensor.backward (untyped) runs
        optimiser.step()
    with torch.no_grad():
        value, pelvis = loss()
        # One heading per track (the frames of a track do not turn around between frames).
        per_track = value.view(-1, track_length, headings).sum(1).argmin(-1)
        best = per_track.repeat_interleave(track_length) + torch.arange(frames) * headings
        return orient.detach()[best], pelvis[best]


def _initial_depth(
    skeleton: KeypointSkeleton, mean_pose: Tensor, target: Tensor, camera: Tensor
) -> Tensor:
    """(F,) depth from the apparent torso (or shoulder) size against the body's."""
    with torch.no_grad():
        _, points = skeleton(mean_pose.new_zeros(1, 3), mean_pose, mean_pose.new_zeros(1, 3))
    idx = {n: LIFT_KEYPOINTS.index(n) for n in _RIGID_NAMES}

    def mid(p: Tensor, a: str, b: str) -> Tensor:
        return (p[..., idx[a], :] + p[..., idx[b], :]) / 2

    ref = points[0]
    torso_m = mid(ref, "left_shoulder", "right_shoulder") - mid(ref, "left_hip", "right_hip")
    shoulders_m = (ref[idx["left_shoulder"]] - ref[idx["right_shoulder"]]).norm()
    xy, conf = target[..., :2], target[..., 2]
    torso_px = (mid(xy, "left_shoulder", "right_shoulder") - mid(xy, "left_hip", "right_hip")).norm(
        dim=-1
    )
    shoulders_px = (xy[:, idx["left_shoulder"]] - xy[:, idx["right_shoulder"]]).norm(dim=-1)
    has_torso = (conf[:, [idx[n] for n in _RIGID_NAMES[:4]]] > 0).all(-1)
    focal = camera[:, :2].mean(-1)
    by_torso = focal * torso_m.norm() / torso_px.clamp(min=4.0)
    by_shoulders = focal * shoulders_m / shoulders_px.clamp(min=4.0)
    # Without shoulders or hips: the person's box against a 1.7 m body.
    by_size = focal * 1.7 / person_scale(target)
    has_shoulders = (conf[:, [idx["left_shoulder"], idx["right_shoulder"]]] > 0).all(-1)
    depth = torch.where(has_torso, by_torso, torch.where(has_shoulders, by_shoulders, by_size))
    return depth.clamp(0.3, 200.0)


class _GuidedSampler:
    """The guided reverse diffusion and refinement of rows ordered (track, frame, hypothesis)."""

    def __init__(
        self, prior: PosePrior, skeleton: KeypointSkeleton, settings: LiftSettings, frames: int
    ) -> None:
        self.prior = prior
        self.skeleton = skeleton
        self.settings = settings
        self.frames = frames

    def __call__(
        self,
        target: Tensor,
        camera: Tensor,
        orient0: Tensor,
        pelvis0: Tensor,
        seeds_by_track: list[list[int]],
        jitter: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(F, K, 3) keypoints, (F, 4) cameras and the rigid start (F, 3) x 2 of F = S * T
        frames -> body pose (R, 21, 3), orientation (R, 3), pelvis (R, 3) and mean
        reprojection error (R,) px of the R = F * N rows."""
        prior, settings, frames = self.prior, self.settings, self.frames
        tracks, n = len(seeds_by_track), len(seeds_by_track[0])
        row_target = target.repeat_interleave(n, 0)
        row_camera = camera.repeat_interleave(n, 0)
        energy = _Energy(self.skeleton, row_target, row_camera, frames, n, settings)
        # Each hypothesis' noise, shared by the frames of its track: x_1, one draw per step,
        # and the start's turn (3 of the last draw's 63 numbers).
        draws = 2 + settings.steps
        noise = row_noise([h for seeds in seeds_by_track for h in seeds], draws)
        noise = noise.view(tracks, 1, n, draws, -1).expand(-1, frames, -1, -1, -1)
        noise = noise.reshape(tracks * frames * n, draws, -1)
        orient_rows = roma.rotvec_to_rotmat(orient0.repeat_interleave(n, 0))
        if jitter:
            # Each hypothesis starts from the rigid fit leaned by its own random angle about
            # the body's left-right axis: how far a body leans towards the camera is what a
            # photo shows least, and without this every hypothesis would lean the same way.
            lean = noise[:, -1, :3] * torch.tensor(settings.jitter_axes)
            orient_rows = orient_rows @ rodrigues(lean * math.radians(settings.orient_jitter_deg))
        orient = roma.rotmat_to_rotvec(orient_rows).requires_grad_(True)
        pelvis = pelvis0.repeat_interleave(n, 0).clone().requires_grad_(True)
        pose_var = torch.zeros(len(row_target), prior.mean.numel(), requires_grad=True)
        optimiser = torch.optim.Adam(
            [
                {"params": [pose_var], "lr": settings.learning_rate},
                {"params": [orient, pelvis], "lr": settings.learning_rate * settings.rigid_rate},
            ],
            fused=True,
        )

        def correct(x0: Tensor, weight: float, iterations: int) -> Tensor:
            """``iterations`` Adam steps from the prediction ``x0``: the pose starts afresh
            (its moments reset), orientation and position carry on from the last call."""
            anchor = x0.detach()
            with torch.no_grad():
                pose_var.copy_(anchor)
            optimiser.state.pop(pose_var, None)
            for _ in range(iterations):
                optimiser.zero_grad()
                pose = prior.denormalise(pose_var).view(-1, 21, 3)
                data, _ = energy(pose, orient, pelvis)
                loss = data + weight * (pose_var - anchor).square().sum(-1)
                torch.autograd.backward(loss.sum())
                optimiser.step()
            return pose_var.detach().clone()

        stepper = Stepper(prior)
        grid = [*time_grid(prior, settings.steps).tolist(), 0.0]
        x = noise[:, 0] * prior.sde.prior_std()
        for i in range(len(grid) - 1):
            t, s = grid[i], grid[i + 1]
            with torch.no_grad():
                x0_hat = stepper.denoise(x, t)
            alpha_t, sigma_t = stepper.marginal(t)
            x0_hat = correct(
                x0_hat, settings.proximal * (alpha_t / sigma_t) ** 2, settings.inner_iterations
            )
            if s <= 0.0:
                x = x0_hat
                break
            with torch.no_grad():
                x = stepper.step(x, x0_hat, t, s, 1.0, noise[:, i + 1])
        x = correct(x, settings.refine_proximal, settings.refine_iterations)

        with torch.no_grad():
            pose = prior.denormalise(x).view(-1, 21, 3)
            _, points = self.skeleton(orient, pose, pelvis)
            used = row_target[..., 2] > 0
            distance = (project(points, row_camera) - row_target[..., :2]).norm(dim=-1)
            error = (distance * used).sum(-1) / used.sum(-1).clamp(min=1)
        return pose, orient.detach(), pelvis.detach(), error


def lift(
    prior: PosePrior,
    keypoints: np.ndarray,
    camera: np.ndarray,
    hypotheses: int,
    seeds: np.ndarray | list[int],
    settings: LiftSettings | None = None,
) -> LiftResult:
    """Lift S tracks of T frames of 2D keypoints to N 3D hypotheses each.

    Args:
        prior: the pose prior.
        keypoints: (S, T, 33, 3) :data:`LIFT_KEYPOINTS` (mediapipe33) pixels + confidence in
            [0, 1]; confidence 0 for missing points. One image of P people: S = P, T = 1.
        camera: (S, 4) pinhole intrinsics fx, fy, cx, cy in pixels, per track.
        hypotheses: N, 1 .. :data:`MAX_HYPOTHESES`.
        seeds: (S,) one seed per track; hypothesis n of a track draws from
            ``hypothesis_seeds(seed, N)[n]``, whatever else is in the batch.
        settings: sampler knobs (default :class:`LiftSettings`).
    """
    settings = settings or LiftSettings()
    target = torch.as_tensor(np.asarray(keypoints, dtype=np.float32))
    if target.ndim != 4 or tuple(target.shape[2:]) != (len(LIFT_KEYPOINTS), 3):
        raise ValueError(
            f"keypoints must be (S, T, {len(LIFT_KEYPOINTS)}, 3), got {tuple(target.shape)}"
        )
    tracks, frames = target.shape[:2]
    cam = torch.as_tensor(np.asarray(camera, dtype=np.float32)).reshape(-1, 4)
    if cam.shape[0] != tracks:
        raise ValueError(f"camera must be (S, 4) with S = {tracks}, got {tuple(cam.shape)}")
    if not 1 <= hypotheses <= MAX_HYPOTHESES:
        raise ValueError(f"hypotheses must be in 1..{MAX_HYPOTHESES}, got {hypotheses}")
    seed_list = [int(s) for s in np.asarray(seeds).reshape(-1)]
    if len(seed_list) != tracks:
        raise ValueError(f"need one seed per track: got {len(seed_list)} for {tracks} tracks")
    if not torch.isfinite(target).all() or not torch.isfinite(cam).all():
        raise ValueError("keypoints and camera must be finite numbers")

    skeleton = KeypointSkeleton.neutral()
    target = target.clone()
    usable = (target[..., 2] >= MIN_CONFIDENCE) & skeleton.mapped
    target[..., 2] = torch.where(usable, target[..., 2], 0.0)
    flat_target = target.flatten(0, 1)  # (F, K, 3), F = S * T
    frame_camera = cam.repeat_interleave(frames, 0)

    was_training = prior.training
    prior.eval()
    try:
        with torch.no_grad():
            mean_pose = prior.denormalise(torch.zeros(1, prior.mean.numel())).reshape(1, 21, 3)
        orient0, pelvis0 = _rigid_start(
            skeleton, mean_pose, flat_target, frame_camera, settings, frames
        )
        n = hypotheses
        # Draw more hypotheses than asked and keep the first n that land on the keypoints: a
        # start turned into a bad basin (the body facing away, a leg crossed over) ends far
        # from them. Sampling conditioned on the 2D by rejection; the batch is small enough
        # that the extra rows cost little.
        drawn = n + math.ceil(n * settings.oversample)
        seeds_by_track = [hypothesis_seeds(seed, drawn) for seed in seed_list]
        sample = _GuidedSampler(prior, skeleton, settings, frames)
        pose, orient, pelvis, error = sample(
            flat_target, frame_camera, orient0, pelvis0, seeds_by_track, jitter=True
        )
        by_hypothesis = error.view(tracks, frames, drawn)
        best = by_hypothesis.min(-1, keepdim=True).values
        scale = person_scale(flat_target).view(tracks, frames, 1)
        excess = (by_hypothesis - best - settings.retry_error * scale).amax(1)  # (S, drawn)
        # Passing hypotheses in seed order, then the failing ones, least bad first.
        rank = torch.where(excess > 0, excess + 1e6, 0.0) + torch.arange(drawn) * 1e-3
        keep = rank.argsort(-1)[:, :n].sort(-1).values  # (S, n)
        rows = (
            torch.arange(tracks * frames).view(tracks, frames, 1) * drawn + keep[:, None, :]
        ).flatten()
        pose, orient, pelvis, error = pose[rows], orient[rows], pelvis[rows], error[rows]
        with torch.no_grad():
            joints, points = skeleton(orient, pose, pelvis)
            projected = project(points, frame_camera.repeat_interleave(n, 0))
    finally:
        prior.train(was_training)

    shape = (tracks, frames, n)
    return LiftResult(
        global_orient=orient.detach().numpy().reshape(*shape, 3),
        body_pose=pose.numpy().reshape(*shape, 21, 3),
        pelvis=pelvis.detach().numpy().reshape(*shape, 3),
        joints=joints.numpy().reshape(*shape, 22, 3),
        keypoints_2d=projected.numpy().reshape(*shape, len(LIFT_KEYPOINTS), 2),
        reprojection_error=error.numpy().reshape(shape),
    )
