"""Every knob of bodyserve in one place (environment variables prefixed ``BODYSERVE_``).

The gateway, the workers, the Triton models, the command line and the local stack all read the
same settings, so a value set once in the environment (or a ``.env`` file) means the same thing
everywhere.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BODYSERVE_", env_file=".env", extra="ignore")

    # --- where things live -------------------------------------------------------------
    data_dir: Path = Field(
        default=REPO_ROOT.parent / "shared" / "data",
        description="The shared real data (photos, mocap, keypoints2d).",
    )
    var_dir: Path = Field(
        default=REPO_ROOT / "var",
        description="Runtime state of the local stack: logs, pid files, artifacts.",
    )
    artifact_dir: Path | None = Field(
        default=None, description="Local artifact storage; defaults to <var_dir>/artifacts."
    )
    model_repository: Path = REPO_ROOT / "model_repository"

    # --- body models ---------------------------------------------------------------------
    default_body_model: Literal["anny", "smplx"] = "anny"
    anny_cache_dir: Path | None = Field(
        default=None,
        description="Anny's cache (built once by `bodyserve setup`); defaults to Anny's own.",
    )
    smplx_model_path: Path | None = Field(
        default=None,
        description="Folder holding SMPLX_NEUTRAL.npz (or .pkl); licensed, supplied by the user.",
    )

    # --- services -----------------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    triton_url: str | None = Field(
        default=None,
        description="host:port of Triton's gRPC endpoint; unset runs the models in-process.",
    )
    triton_timeout_s: float = 60.0
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    worker_metrics_port: int | None = Field(
        default=None, description="Port of a worker's Prometheus endpoint (compose: 9100)."
    )

    # --- access -------------------------------------------------------------------------
    auth_mode: Literal["keys", "open"] = Field(
        default="keys",
        description="keys: every /v1 request needs an API key (`bodyserve keys create`); "
        "open: no key, one shared owner, no limits (local demos only).",
    )
    key_rate_per_minute: int = Field(
        default=60,
        ge=0,
        description="Job submissions per minute of a key without its own limit (0: unlimited).",
    )
    key_max_concurrent: int = Field(
        default=8,
        ge=0,
        description="Queued or running jobs of a key without its own limit (0: unlimited).",
    )

    # --- jobs ---------------------------------------------------------------------------
    result_ttl_s: int = 7 * 24 * 3600
    job_soft_time_limit_s: int = 120
    job_hard_time_limit_s: int = 180
    job_max_retries: int = 3
    max_wait_s: float = 60.0
    idempotency_ttl_s: int = Field(
        default=24 * 3600,
        ge=1,
        description="How long an Idempotency-Key stays bound to the job its request created.",
    )

    # --- input limits -------------------------------------------------------------------
    max_upload_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_image_side: int = 12_000
    max_people: int = 16
    max_pose_samples: int = Field(
        default=64, ge=1, description="Most poses per generate request (n) or completion (k)."
    )
    max_motion_frames: int = Field(
        default=600, ge=1, description="Most frames of a motion to denoise (T)."
    )
    max_lift_hypotheses: int = Field(
        default=50, ge=1, le=64, description="Most 3D hypotheses per person or frame (N)."
    )
    max_lift_rows: int = Field(
        default=4000,
        ge=1,
        description="Most people-or-frames times hypotheses in one lifting request: bounds its "
        "cost (about 1 s of CPU per 1,000).",
    )

    # --- pipeline -----------------------------------------------------------------------
    torch_threads: int = 0  # 0: torch's default

    @property
    def artifacts_path(self) -> Path:
        return self.artifact_dir or (self.var_dir / "artifacts")

    @property
    def photos_dir(self) -> Path:
        return self.data_dir / "photos"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
