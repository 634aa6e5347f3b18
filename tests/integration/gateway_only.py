"""A gateway on its own, in keys mode: the local stack's Redis and gateway, no worker, no Triton.

For tests of the HTTP API itself (limits, the OpenAPI contract): accepted jobs stay queued, and
every request goes through the real uvicorn process, real authentication and a real Redis.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from services.common.keys import KeyStore
from services.tools.local_stack import LocalStack, StackConfig
from tests.conftest import missing
from tests.integration.stacks import started_stack

# No limits on the test key: the tests send many requests quickly, and jobs stay queued.
KEYS_MODE_ENV = {
    "BODYSERVE_AUTH_MODE": "keys",
    "BODYSERVE_KEY_RATE_PER_MINUTE": "0",
    "BODYSERVE_KEY_MAX_CONCURRENT": "0",
    "BODYSERVE_MAX_WAIT_S": "0.5",  # ?wait= on a job no worker will run: answer soon
    "BODYSERVE_TRITON_URL": "",  # no Triton: the models would run in the (absent) workers
}


@dataclass
class GatewayOnly:
    stack: LocalStack
    api_key: str  # a valid key: "Authorization: Bearer <api_key>"

    @property
    def url(self) -> str:
        return self.stack.base_url

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def artifacts(self) -> Path:
        return self.stack.var_dir / "artifacts"


@contextmanager
def gateway_only(var_dir: Path, **extra_env: str) -> Iterator[GatewayOnly]:
    """Start Redis and the gateway (keys mode, ``extra_env`` on top), issue a key, stop both."""
    if shutil.which("redis-server") is None:
        missing("redis-server is not installed")
    config = StackConfig.with_free_ports(
        var_dir, components=["redis", "gateway"], extra_env={**KEYS_MODE_ENV, **extra_env}
    )
    with started_stack(config, "the gateway") as stack:
        keys = KeyStore.from_url(stack.redis_url)
        _, token = keys.create("api-tests", rate_per_minute=0, max_concurrent=0)
        keys.redis.close()
        yield GatewayOnly(stack, token)
