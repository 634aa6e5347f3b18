"""Triton's readiness probe: exit 0 when it serves every model of the capability table.

    python -m services.tools.triton_probe [http://127.0.0.1:8000]

Compose's healthcheck and the Kubernetes readinessProbe run it, so neither lists the models.
Per model, not Triton's own ``/v2/health/ready``: in explicit model-control mode that stays 200
when a model is unloaded, and a rejected pose_prior version makes it false for good while the
previous version serves on. Standard library only (besides the table), so it starts fast.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from services.capabilities import TRITON_MODELS

DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT_S = 4.0


def not_ready(url: str = DEFAULT_URL, models: tuple[str, ...] = TRITON_MODELS) -> list[str]:
    """The models of ``models`` that Triton's HTTP API at ``url`` does not call ready."""
    missing = []
    for model in models:
        try:
            with urllib.request.urlopen(f"{url}/v2/models/{model}/ready", timeout=TIMEOUT_S):
                pass
        except (urllib.error.URLError, OSError):
            missing.append(model)
    return missing


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else DEFAULT_URL
    missing = not_ready(url.rstrip("/"))
    if missing:
        print(f"not ready: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
