"""The pose prior's three tasks, row by row: one code path for Triton and for in-process use.

A *row* is one sample: a task code, a body pose (ignored by ``generate``), a mask of known
joints (``complete``), a seed, a number of steps, a noise level (``denoise``) and a sampler
code (``generate``). The served ``pose_prior`` Triton model and the in-process backend both
hand their rows to :func:`run_prior_batch`, which groups them by ``(task, steps, noise_level,
sampler)`` and calls :func:`run_prior_rows` once per group. Every row carries its own seed and
the sampling functions draw each row's noise from that seed alone, so a row's result does not
depend on which other rows share its batch.
"""

from __future__ import annotations

from collections import defaultdict
from enum import IntEnum
from typing import NamedTuple

import numpy as np

from shared.prior.model import BODY_JOINTS, PosePrior
from shared.prior.sampling import Sampler, complete, denoise_poses, generate

MAX_STEPS = 1000
"""Upper bound of ``steps`` per row: more buys nothing and would let one request hog a server."""


class PriorTask(IntEnum):
    """The ``TASK`` codes of the ``pose_prior`` model (Triton input ``TASK``, TYPE_INT32)."""

    GENERATE = 0
    COMPLETE = 1
    DENOISE = 2


SAMPLERS: tuple[Sampler, ...] = ("ode", "sde")
"""Sampler codes (Triton input ``SAMPLER``): 0 = ``"ode"`` (deterministic probability-flow ODE,
the default), 1 = ``"sde"`` (ancestral). Only ``generate`` takes one."""


class RowGroup(NamedTuple):
    """Rows that one sampling call serves together."""

    task: PriorTask
    steps: int
    noise_level: float  # 0.0 unless task is DENOISE (the others ignore it)
    sampler: Sampler = "ode"  # "ode" unless task is GENERATE (the others ignore it)


def parse_task(code: int) -> PriorTask:
    """``code`` as a :class:`PriorTask`; a clear error for unknown codes."""
    try:
        return PriorTask(int(code))
    except ValueError:
        known = ", ".join(f"{t.value} = {t.name.lower()}" for t in PriorTask)
        raise ValueError(f"unknown prior task code {int(code)}: use {known}") from None


def parse_sampler(code: int) -> Sampler:
    """A sampler code (0 ode, 1 sde) as its name; a clear error for unknown codes."""
    if not 0 <= int(code) < len(SAMPLERS):
        known = ", ".join(f"{i} = {name}" for i, name in enumerate(SAMPLERS))
        raise ValueError(f"unknown sampler code {int(code)}: use {known}")
    return SAMPLERS[int(code)]


def _check_steps(steps: int) -> int:
    steps = int(steps)
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")
    return steps


def run_prior_rows(
    prior: PosePrior,
    task: PriorTask | int,
    pose: np.ndarray | None,
    known: np.ndarray | None,
    seeds: np.ndarray,
    steps: int,
    noise_level: float = 0.0,
    sampler: Sampler = "ode",
) -> np.ndarray:
    """Runs one task on B rows that share ``task``, ``steps``, ``noise_level`` and ``sampler``.

    ``pose`` (B, 21, 3) SMPL-X body_pose axis-angle (``complete``, ``denoise``; ignored by
    ``generate``), ``known`` (B, 21) bool (``complete``: True where the joint is given),
    ``seeds`` (B,) one per row, ``sampler`` "ode" or "sde" (``generate`` only; completion and
    denoising use the samplers :mod:`shared.prior.sampling` defaults them to). Returns
    (B, 21, 3) float32, row r drawn with ``seeds[r]``.
    """

    task = parse_task(task)
    steps = _check_steps(steps)
    seed_array = np.asarray(seeds, dtype=np.int64).reshape(-1)
    if task is PriorTask.GENERATE:
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
        return generate(prior, seed_array, steps, sampler)
    if pose is None:
        raise ValueError(f"the {task.name.lower()} task needs a body pose (B, {BODY_JOINTS}, 3)")
    if task is PriorTask.COMPLETE:
        if known is None:
            raise ValueError(f"the complete task needs a known-joint mask (B, {BODY_JOINTS})")
        return complete(prior, pose, np.asarray(known, dtype=bool), seed_array, steps)
    return denoise_poses(prior, pose, float(noise_level), seed_array, steps)


def group_rows(
    tasks: np.ndarray,
    steps: np.ndarray,
    noise_levels: np.ndarray,
    samplers: np.ndarray | None = None,
) -> dict[RowGroup, np.ndarray]:
    """Row indices per :class:`RowGroup`, in first-seen order: (B,) each -> {group: (n,) int}.

    ``samplers`` holds sampler codes (default: all 0, the ODE). Unknown task or sampler codes
    raise ``ValueError``; ``noise_level`` only separates denoise rows, ``sampler`` only
    generate rows.
    """
    task_codes = np.asarray(tasks).reshape(-1)
    step_counts = np.asarray(steps).reshape(-1)
    levels = np.asarray(noise_levels, dtype=np.float32).reshape(-1)
    sampler_codes = (
        np.zeros(len(task_codes), np.int32) if samplers is None else np.asarray(samplers)
    ).reshape(-1)
    if not len(task_codes) == len(step_counts) == len(levels) == len(sampler_codes):
        raise ValueError(
            f"one task, steps, noise level and sampler per row: got {len(task_codes)}, "
            f"{len(step_counts)}, {len(levels)} and {len(sampler_codes)}"
        )
    members: dict[RowGroup, list[int]] = defaultdict(list)
    rows = zip(task_codes, step_counts, levels, sampler_codes, strict=True)
    for row, (code, count, level, sampler_code) in enumerate(rows):
        task = parse_task(int(code))
        sampler = parse_sampler(int(sampler_code))
        noise = float(level) if task is PriorTask.DENOISE else 0.0
        group = RowGroup(task, int(count), noise, sampler if task is PriorTask.GENERATE else "ode")
        members[group].append(row)
    return {group: np.asarray(rows, dtype=np.int64) for group, rows in members.items()}


def run_prior_batch(
    prior: PosePrior,
    tasks: np.ndarray,
    pose: np.ndarray,
    known: np.ndarray,
    seeds: np.ndarray,
    steps: np.ndarray,
    noise_levels: np.ndarray,
    samplers: np.ndarray | None = None,
) -> np.ndarray:
    """Rows of mixed tasks: (B,) tasks, (B, 21, 3) pose, (B, 21) known, (B,) seeds, steps,
    noise levels and sampler codes (default: ODE) -> (B, 21, 3) float32. One sampling call per
    :func:`group_rows` group."""
    pose = np.asarray(pose, dtype=np.float32)
    rows = len(np.asarray(tasks).reshape(-1))
    if pose.shape != (rows, BODY_JOINTS, 3):
        raise ValueError(f"pose must have shape ({rows}, {BODY_JOINTS}, 3), got {pose.shape}")
    known = np.asarray(known, dtype=bool)
    seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
    out = np.zeros((rows, BODY_JOINTS, 3), np.float32)
    for group, members in group_rows(tasks, steps, noise_levels, samplers).items():
        out[members] = run_prior_rows(
            prior,
            group.task,
            pose[members],
            known[members],
            seeds[members],
            group.steps,
            group.noise_level,
            group.sampler,
        )
    return out
