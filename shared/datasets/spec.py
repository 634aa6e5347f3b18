"""What a synthetic dataset is made of: the spec a client sends, validated once.

A spec fixes every random choice through its ``seed``: sample ``i`` of a dataset is a function
of ``(spec, i)`` alone (:mod:`shared.datasets.sampling`), whatever the chunking, the number of
workers or how often a chunk is re-run after a lost worker. That is what makes chunks idempotent.

Ranges are ``[low, high]`` pairs sampled uniformly. Folders (mocap, backgrounds) are server-side
folders *under* ``settings.dataset_input_dir`` (default: the shared data folder; in containers
a mounted volume), named relative to it: a spec never reads outside it.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.render.backgrounds import BackgroundError, BackgroundFolder
from shared.settings import get_settings

PHENOTYPES: tuple[str, ...] = ("gender", "age", "muscle", "weight", "height", "proportions")
MIN_RESOLUTION = 64
MAX_RESOLUTION = 1024
MAX_SHARD_SIZE = 5000
MAX_NAME_LENGTH = 64
MAX_PROMPT_LENGTH = 500

Pair = Annotated[list[float], Field(min_length=2, max_length=2)]

# Anny's age axis runs newborn (-1/3) .. baby (0) .. child (1/3) .. young adult (2/3) .. old (1).
SHAPE_PRESETS: dict[str, dict[str, tuple[float, float]]] = {
    "adults": {
        "gender": (0.0, 1.0),
        "age": (0.6, 1.0),
        "muscle": (0.15, 0.85),
        "weight": (0.15, 0.85),
        "height": (0.1, 0.9),
        "proportions": (0.0, 0.6),
    },
    "everyone": {name: (0.0, 1.0) for name in PHENOTYPES} | {"age": (0.3, 1.0)},
    "neutral": {name: (0.5, 0.5) for name in PHENOTYPES},
}


class SpecError(ValueError):
    """A spec that cannot be served: the message says what to change."""


def _check_range(value: list[float], name: str, low: float, high: float) -> tuple[float, float]:
    a, b = float(value[0]), float(value[1])
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"{name} must hold finite numbers")
    if a > b:
        raise ValueError(f"{name} must be [low, high] with low <= high, got [{a}, {b}]")
    if a < low or b > high:
        raise ValueError(f"{name} must lie within [{low}, {high}], got [{a}, {b}]")
    return a, b


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PoseSource(_Strict):
    """Where body poses come from."""

    source: Literal["prior", "mocap", "uniform"] = Field(
        "prior",
        description="prior: samples of the served pose prior; mocap: frames of the BVH / AMASS "
        "files in `folder`; uniform: uniform within the anatomical joint limits.",
    )
    folder: str | None = Field(
        None,
        max_length=256,
        description="mocap only: a folder under the dataset input folder (default: 'mocap').",
    )

    @model_validator(mode="after")
    def _folder_only_for_mocap(self) -> PoseSource:
        if self.folder is not None and self.source != "mocap":
            raise ValueError("poses.folder applies to source 'mocap' only")
        return self


class ShapeDistribution(_Strict):
    """Anny phenotypes, each uniform in a range; a preset fills the ranges not given."""

    preset: Literal["adults", "everyone", "neutral"] = "adults"
    ranges: dict[Literal[PHENOTYPES], Pair] = Field(  # type: ignore[valid-type]
        default_factory=dict,
        max_length=len(PHENOTYPES),
        description="Per phenotype (gender, age, muscle, weight, height, proportions), "
        "[low, high] within [0, 1].",
    )

    @field_validator("ranges")
    @classmethod
    def _check_ranges(cls, value: dict[str, list[float]]) -> dict[str, list[float]]:
        for name, pair in value.items():
            _check_range(pair, f"shapes.ranges.{name}", 0.0, 1.0)
        return value

    def bounds(self) -> dict[str, tuple[float, float]]:
        out = dict(SHAPE_PRESETS[self.preset])
        out.update({k: (float(v[0]), float(v[1])) for k, v in self.ranges.items()})
        return out


class CameraDistribution(_Strict):
    """Pinhole cameras around the body (degrees; the body's box fills ``fill`` of the height)."""

    fov_deg: Pair = Field(default_factory=lambda: [35.0, 65.0], description="Vertical FOV.")
    elevation_deg: Pair = Field(
        default_factory=lambda: [-10.0, 35.0], description="Camera above (+) or below the body."
    )
    heading_deg: Pair = Field(
        default_factory=lambda: [-180.0, 180.0], description="Body turned from facing the camera."
    )
    roll_deg: Pair = Field(default_factory=lambda: [-8.0, 8.0])
    fill: Pair = Field(
        default_factory=lambda: [0.55, 0.9], description="Share of the image height the body spans."
    )
    offset: float = Field(
        0.08, ge=0.0, le=0.3, description="Centre jitter, as a share of the image side."
    )

    @model_validator(mode="after")
    def _check(self) -> CameraDistribution:
        _check_range(self.fov_deg, "camera.fov_deg", 10.0, 120.0)
        _check_range(self.elevation_deg, "camera.elevation_deg", -80.0, 80.0)
        _check_range(self.heading_deg, "camera.heading_deg", -360.0, 360.0)
        _check_range(self.roll_deg, "camera.roll_deg", -45.0, 45.0)
        _check_range(self.fill, "camera.fill", 0.1, 1.0)
        return self


class LightingDistribution(_Strict):
    lights: Annotated[list[int], Field(min_length=2, max_length=2)] = Field(
        default_factory=lambda: [1, 3], description="How many directional lights, [low, high]."
    )
    key_intensity: Pair = Field(
        default_factory=lambda: [0.9, 1.7], description="The key light (1: white to full)."
    )
    ambient: Pair = Field(default_factory=lambda: [0.12, 0.45])

    @model_validator(mode="after")
    def _check(self) -> LightingDistribution:
        _check_range([float(n) for n in self.lights], "lighting.lights", 1, 3)
        _check_range(self.key_intensity, "lighting.key_intensity", 0.0, 3.0)
        _check_range(self.ambient, "lighting.ambient", 0.0, 1.0)
        return self


class Backgrounds(_Strict):
    source: Literal["procedural", "folder"] = "procedural"
    folder: str | None = Field(
        None,
        max_length=256,
        description="folder only: images under the dataset input folder, randomly cropped.",
    )

    @model_validator(mode="after")
    def _folder_given(self) -> Backgrounds:
        if self.source == "folder" and not self.folder:
            raise ValueError("backgrounds.folder is required with source 'folder'")
        if self.source == "procedural" and self.folder:
            raise ValueError("backgrounds.folder applies to source 'folder' only")
        return self


class DatasetSpec(_Strict):
    """A synthetic dataset: how many images, of what, and the seed that fixes them all."""

    count: int = Field(ge=1, description="Images in the dataset (one person each).")
    resolution: int = Field(
        256, ge=MIN_RESOLUTION, le=MAX_RESOLUTION, description="Square images, pixels a side."
    )
    poses: PoseSource = Field(default_factory=PoseSource)
    shapes: ShapeDistribution = Field(default_factory=ShapeDistribution)
    camera: CameraDistribution = Field(default_factory=CameraDistribution)
    lighting: LightingDistribution = Field(default_factory=LightingDistribution)
    backgrounds: Backgrounds = Field(default_factory=Backgrounds)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    shard_size: int = Field(
        250, ge=1, le=MAX_SHARD_SIZE, description="Samples per WebDataset shard (= per chunk)."
    )
    generator: Literal["render", "diffusion"] = Field(
        "render",
        description="render: the rendered body over a background; diffusion (Diffusion-HPC): "
        "Stable Diffusion paints the image following the body's depth (ControlNet), labels are "
        "the body's.",
    )
    prompt: str | None = Field(
        None,
        max_length=MAX_PROMPT_LENGTH,
        description="diffusion only: the text prompt (e.g. 'a skier on a snowy slope').",
    )
    image_format: Literal["jpg", "png"] = "jpg"
    name: str = Field(
        "dataset",
        max_length=MAX_NAME_LENGTH,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
        description="Shard file prefix: letters, digits, '_' and '-'.",
    )

    @field_validator("count")
    @classmethod
    def _count_limit(cls, value: int) -> int:
        limit = get_settings().max_dataset_images
        if value > limit:
            raise ValueError(
                f"count {value} is over the limit of {limit} images per dataset "
                "(BODYSERVE_MAX_DATASET_IMAGES); split it into several datasets with other seeds"
            )
        return value

    @model_validator(mode="after")
    def _prompt_for_diffusion(self) -> DatasetSpec:
        if self.generator != "diffusion":
            if self.prompt is not None:
                raise ValueError("prompt applies to generator 'diffusion' only")
            return self
        if not self.prompt or not self.prompt.strip():
            raise ValueError(
                "generator 'diffusion' needs a prompt (e.g. 'a photo of a skier on a slope')"
            )
        if self.resolution % 8:
            raise ValueError(
                f"generator 'diffusion' needs a resolution that is a multiple of 8, got "
                f"{self.resolution}"
            )
        return self

    # --- derived ---------------------------------------------------------------------------

    @property
    def chunks(self) -> int:
        return math.ceil(self.count / self.shard_size)

    def chunk_range(self, chunk: int) -> range:
        """The sample indices of chunk ``chunk`` (= shard ``chunk``)."""
        if not 0 <= chunk < self.chunks:
            raise IndexError(f"chunk {chunk} of {self.chunks}")
        start = chunk * self.shard_size
        return range(start, min(start + self.shard_size, self.count))

    def shard_name(self, chunk: int) -> str:
        return f"{self.name}-{chunk:06d}.tar"

    def fingerprint(self) -> str:
        """A short hash of everything that decides the samples (not of their count or sharding)."""
        decisive = self.model_dump(exclude={"count", "shard_size", "name"})
        blob = json.dumps(decisive, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# The longest file or folder name most file systems allow (NAME_MAX), in bytes.
MAX_NAME_BYTES = 255


def resolve_input_folder(relative: str, what: str, root: Path | None = None) -> Path:
    """``relative`` under the dataset input folder, checked: inside it, a readable folder.

    Raises :class:`SpecError` with a message naming the setting otherwise.
    """
    base = Path(root or get_settings().dataset_inputs_path).resolve()
    if not relative.isprintable() or any(
        len(part.encode()) > MAX_NAME_BYTES for part in relative.split("/")
    ):
        # Before the file system sees it: a NUL byte or an over-long name is an OSError there.
        raise SpecError(
            f"{what} must be a folder name of printable characters, each part of the path at "
            f"most {MAX_NAME_BYTES} bytes"
        )
    candidate = Path(relative)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise SpecError(
            f"{what} {relative!r} must be a folder name relative to the dataset input folder "
            "(BODYSERVE_DATASET_INPUT_DIR), without '..'"
        )
    try:
        folder = (base / candidate).resolve()
        if not folder.is_relative_to(base):
            raise SpecError(f"{what} {relative!r} leads outside the dataset input folder")
        if not folder.is_dir():
            # The message names the setting, not the server's path.
            raise SpecError(
                f"{what} {relative!r} is not a folder under the dataset input folder "
                "(BODYSERVE_DATASET_INPUT_DIR)"
            )
        next(folder.iterdir(), None)
    except OSError as exc:
        raise SpecError(f"{what} {relative!r} cannot be read: {exc.strerror}") from exc
    return folder


def check_inputs(spec: DatasetSpec, root: Path | None = None) -> None:
    """Check the spec's folders now (the gateway does, so that a bad folder is a 4xx at once)."""
    if spec.poses.source == "mocap":
        resolve_input_folder(spec.poses.folder or "mocap", "poses.folder", root)
    if spec.backgrounds.source == "folder":
        assert spec.backgrounds.folder is not None
        folder = resolve_input_folder(spec.backgrounds.folder, "backgrounds.folder", root)
        try:
            # Scans it as the workers will: images, readable headers.
            BackgroundFolder(folder, shown_as=repr(spec.backgrounds.folder))
        except BackgroundError as exc:
            raise SpecError(str(exc)) from exc
