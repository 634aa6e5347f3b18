"""GET /v1/capabilities through real HTTP: the capability table, with the limits the running
gateway's settings give (set here to values other than the defaults), behind an API key.

A gateway on its own (Redis and uvicorn, keys mode, no worker).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.capabilities import CAPABILITIES, DATASET_CHUNK, DATASET_FINISH
from tests.integration.gateway_only import GatewayOnly, gateway_only

pytestmark = pytest.mark.integration

# Settings of the gateway under test, none at its default, so that the answer shows they are read.
ENV = {
    "BODYSERVE_MAX_PEOPLE": "5",
    "BODYSERVE_MAX_LIFT_ROWS": "1234",
    "BODYSERVE_IMAGE_JOB_TIME_LIMIT_S": "300",
    "BODYSERVE_DATASET_CHUNK_TIME_LIMIT_S": "600",
    "BODYSERVE_JOB_SOFT_TIME_LIMIT_S": "100",
    "BODYSERVE_JOB_HARD_TIME_LIMIT_S": "150",
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayOnly]:
    with gateway_only(Path(tmp_path_factory.mktemp("capabilities")), **ENV) as running:
        yield running


@pytest.fixture(scope="module")
def answer(gateway: GatewayOnly) -> dict[str, Any]:
    reply = httpx.get(f"{gateway.url}/v1/capabilities", headers=gateway.auth, timeout=30)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def _by_name(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in answer["capabilities"]}


def test_it_needs_an_api_key(gateway: GatewayOnly) -> None:
    for headers in ({}, {"Authorization": "Bearer bsk_000000000000_nope"}):
        reply = httpx.get(f"{gateway.url}/v1/capabilities", headers=headers, timeout=30)
        assert reply.status_code == 401, reply.text
        assert reply.headers["WWW-Authenticate"] == "Bearer"


def test_it_lists_the_table(answer: dict[str, Any]) -> None:
    assert [entry["name"] for entry in answer["capabilities"]] == list(CAPABILITIES)
    for entry in answer["capabilities"]:
        capability = CAPABILITIES[entry["name"]]
        assert entry["description"] == capability.description
        assert entry["routes"] == list(capability.routes)
        assert entry["queue"] == capability.queue
        assert entry["triton_models"] == list(capability.triton_models)
        assert list(entry["request_limits"]) == list(capability.request_limits)
    lifting = _by_name(answer)["pose_lifting"]
    assert (lifting["queue"], lifting["triton_models"]) == ("poses", ["pose_lift"])


def test_it_shows_the_gateways_current_limits(answer: dict[str, Any]) -> None:
    capabilities = _by_name(answer)
    mesh = capabilities["mesh_recovery"]
    assert mesh["request_limits"]["max_people"] == 5
    assert mesh["request_limits"]["max_lift_rows"] == 1234
    assert mesh["request_limits"]["max_wait_s"] == 0.5  # gateway_only's
    assert mesh["time_limits"] == [
        {
            "task": "bodyserve.mesh_recovery",
            "soft_s": 100,
            "hard_s": 150,
            "soft_setting": "job_soft_time_limit_s",
            "hard_setting": "job_hard_time_limit_s",
        }
    ]
    (image,) = capabilities["image_generation"]["time_limits"]
    assert (image["soft_s"], image["hard_s"], image["hard_setting"]) == (300, 360, None)
    dataset = capabilities["dataset_generation"]["time_limits"]
    assert [t["task"] for t in dataset] == [
        "bodyserve.dataset_generation",
        DATASET_CHUNK.name,
        DATASET_FINISH.name,
    ]
    assert (dataset[1]["soft_s"], dataset[1]["hard_s"]) == (600, 660)
    assert dataset[1]["soft_setting"] == "dataset_chunk_time_limit_s"


def test_it_is_documented(gateway: GatewayOnly) -> None:
    document = httpx.get(f"{gateway.url}/openapi.json", timeout=30).json()
    operation = document["paths"]["/v1/capabilities"]["get"]
    responses = operation["responses"]
    assert set(responses) == {"200", "401", "503"}
    ok = responses["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/Capabilities"}
    for code in ("401", "503"):
        error = responses[code]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/ErrorBody"}
    assert operation["security"], "documented as needing the API key"
