"""GET /v1/capabilities: what this server does, read from the capability table.

Each capability with its routes, queue and Triton models (:mod:`services.capabilities`), and its
limits as this gateway's settings say now: the time limits of the tasks its job runs, and the
settings that bound its requests. Nothing is looked up in Redis or Triton.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from services.capabilities import CAPABILITIES, Capability, TimeLimits
from services.gateway.deps import settings
from services.gateway.schemas import Capabilities, CapabilityInfo, TaskTimeLimits
from shared.settings import Settings

router = APIRouter(prefix="/v1", tags=["capabilities"])


def _time_limits(task: str, limits: TimeLimits, config: Settings) -> TaskTimeLimits:
    soft, hard = limits.seconds(config)
    return TaskTimeLimits(
        task=task,
        soft_s=soft,
        hard_s=hard,
        soft_setting=limits.soft_setting,
        hard_setting=limits.hard_setting,
    )


def capability_info(capability: Capability, config: Settings) -> CapabilityInfo:
    """One capability of the table, with its limits as ``config`` says."""
    tasks = [(capability.task, capability.time_limits)]
    tasks += [(helper.name, helper.time_limits) for helper in capability.helper_tasks]
    return CapabilityInfo(
        name=capability.name,
        description=capability.description,
        routes=list(capability.routes),
        queue=capability.queue,
        triton_models=list(capability.triton_models),
        time_limits=[_time_limits(task, limits, config) for task, limits in tasks],
        request_limits={name: getattr(config, name) for name in capability.request_limits},
    )


@router.get("/capabilities", response_model=Capabilities)
async def list_capabilities(config: Settings = Depends(settings)) -> Capabilities:
    """Every capability: its routes, queue, Triton models and current limits."""
    return Capabilities(capabilities=[capability_info(c, config) for c in CAPABILITIES.values()])
