"""Every knob of bodyserve in one place (environment variables prefixed ``BODYSERVE_``).

The gateway, the workers, the Triton models, the command line and the local stack all read the
same settings, so a value set once in the environment (or a ``.env`` file) means the same thing
everywhere.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, HttpUrl, SecretStr, model_validator
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
    job_retry_backoff_s: float = Field(
        default=2.0,
        gt=0,
        description="Wait before a job's 1st retry after a transient error (model server or "
        "Redis unavailable); doubles per retry, with jitter (half to all of it).",
    )
    job_retry_backoff_max_s: float = Field(
        default=60.0, gt=0, description="Longest wait between two retries of a job."
    )
    worker_redis_outage_s: float = Field(
        default=60.0,
        ge=0,
        description="How long a worker retries a Redis command (backoff up to 2 s) before its "
        "job counts the error as transient: a running job rides out a Redis restart.",
    )
    job_orphan_after_s: float = Field(
        default=120.0,
        gt=0,
        description="A job queued or running this long with no message anywhere (lost with a "
        "Redis host crash, or never sent) and no worker holding it is queued again.",
    )
    max_wait_s: float = 60.0
    idempotency_ttl_s: int = Field(
        default=24 * 3600,
        ge=1,
        description="How long an Idempotency-Key stays bound to the job its request created.",
    )

    # --- webhooks and retention (README "Webhooks", "Retention") --------------------------
    public_url: HttpUrl | None = Field(
        default=None,
        description="The gateway's address as clients reach it, for the links in webhook "
        "events; defaults to http://<gateway_host>:<gateway_port>.",
    )
    webhook_url: HttpUrl | None = Field(
        default=None,
        description="Open mode only: where job events are POSTed (API keys have their own, "
        "`bodyserve keys webhook`). Needs webhook_secret.",
    )
    webhook_secret: SecretStr | None = Field(
        default=None, description="Open mode only: the key that signs webhook_url's events."
    )
    webhook_max_attempts: int = Field(
        default=8, ge=1, description="Deliveries tried per event before it is marked failed."
    )
    webhook_retry_base_s: float = Field(
        default=15.0,
        gt=0,
        description="Backoff before the 2nd attempt; doubles per attempt, with jitter "
        "(8 attempts: about 30 minutes in all).",
    )
    webhook_retry_max_s: float = Field(
        default=900.0,
        gt=0,
        le=3000,
        description="Longest wait between two attempts; under the broker's visibility timeout "
        "(1 h), which would otherwise hand a waiting retry to a second worker.",
    )
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, description="Connect and response timeout of one attempt."
    )
    cleanup_interval_s: int = Field(
        default=3600,
        ge=0,
        description="How often one of the workers deletes the artifacts of jobs whose record "
        "is gone (0: never; `bodyserve cleanup` on demand).",
    )
    cleanup_grace_s: int = Field(
        default=3600,
        ge=0,
        description="Artifact folders younger than this are never deleted by the cleanup.",
    )

    # --- input limits -------------------------------------------------------------------
    max_upload_bytes: int = 20 * 1024 * 1024
    max_json_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Most bytes of a JSON request body, refused with 413 before it is read. "
        "The largest legal request is a lift of max_lift_rows (4,000) mediapipe33 people: "
        "4,000 x 33 keypoints x 3 = 396,000 numbers, at most 24 characters each written at "
        "full float precision, plus separators: 10.6 MB compact (8.1 MB with typical pixel "
        "coordinates); 16 MiB leaves room for indented JSON. (A 600-frame motion is ~1 MB.) "
        "Raise it with max_lift_rows.",
    )
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

    # --- synthetic datasets ---------------------------------------------------------------
    max_dataset_images: int = Field(
        default=200_000, ge=1, description="Most images one dataset job may ask for (count)."
    )
    dataset_input_dir: Path | None = Field(
        default=None,
        description="The only folder dataset specs may read from (mocap, backgrounds); "
        "defaults to data_dir. In containers, mount users' folders under it.",
    )
    dataset_chunk_time_limit_s: int = Field(
        default=1200,
        ge=10,
        description="Most seconds one dataset chunk (shard_size images) may take; its task is "
        "killed a minute later.",
    )
    image_job_time_limit_s: int = Field(
        default=900, ge=10, description="Most seconds one image-generation job may take."
    )
    diffusion_model_dir: Path | None = Field(
        default=None,
        description="Local folder of Stable Diffusion + ControlNet weights (diffusers layout) "
        "for image generation; unset: those routes answer 503.",
    )
    max_generated_images: int = Field(
        default=8, ge=1, description="Most images one POST /v1/images/generate may ask for (n)."
    )

    # --- pipeline -----------------------------------------------------------------------
    torch_threads: int = 0  # 0: torch's default

    @model_validator(mode="after")
    def _webhook_needs_its_secret(self) -> Settings:
        if (self.webhook_url is None) != (self.webhook_secret is None):
            raise ValueError(
                "set both BODYSERVE_WEBHOOK_URL and BODYSERVE_WEBHOOK_SECRET, or neither"
            )
        return self

    @property
    def artifacts_path(self) -> Path:
        return self.artifact_dir or (self.var_dir / "artifacts")

    @property
    def dataset_inputs_path(self) -> Path:
        return self.dataset_input_dir or self.data_dir

    @property
    def photos_dir(self) -> Path:
        return self.data_dir / "photos"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
