"""Request bounds and validation helpers every request schema shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
from pydantic import (
    Field,
)
from pydantic_core import PydanticCustomError

from shared.settings import get_settings

MAX_ABS_RADIANS = 1_000.0  # axis-angle components: a few turns is all that makes sense
MAX_ABS_METRES = 10_000.0  # joint and pelvis positions
MAX_ABS_PIXELS = 1_000_000.0  # keypoint coordinates (as the intrinsics' principal point)
MAX_NAME_LENGTH = 32  # joint and body-part names (the longest is 14 characters)

Radians = Annotated[float, Field(ge=-MAX_ABS_RADIANS, le=MAX_ABS_RADIANS)]
Metres = Annotated[float, Field(ge=-MAX_ABS_METRES, le=MAX_ABS_METRES)]
# x, y in pixels and a confidence (checked to be in [0, 1] where the keypoints are read).
KeypointNumber = Annotated[float, Field(ge=-MAX_ABS_PIXELS, le=MAX_ABS_PIXELS)]
Name = Annotated[str, Field(max_length=MAX_NAME_LENGTH)]
# Axis-angle or position triples; their exact shapes are checked by check_array.
RadiansXYZ = Annotated[list[Radians], Field(max_length=3)]
MetresXYZ = Annotated[list[Metres], Field(max_length=3)]
Keypoint = Annotated[list[KeypointNumber], Field(max_length=3)]  # x, y, confidence
# The largest keypoint format (mediapipe33); each request's format is then checked exactly.
MAX_KEYPOINTS = 33
Keypoints = Annotated[list[Keypoint], Field(max_length=MAX_KEYPOINTS)]


def setting_limit(setting: str, keyword: str = "maxItems") -> Callable[[dict[str, Any]], None]:
    """Shows the current value of ``setting`` in a field's JSON schema (``keyword``: maxItems
    for a list, maximum for a number); the field's validator enforces it with a message that
    names the setting."""

    def show(schema: dict[str, Any]) -> None:
        schema[keyword] = getattr(get_settings(), setting)

    return show


MAX_SEED = 2**31 - 1


def invalid(kind: str, message: str) -> PydanticCustomError:
    """A validation error whose message is shown as is (no "Value error, " prefix)."""
    return PydanticCustomError(kind, message)


def check_array(value: Any, shape: tuple[int | None, ...], name: str, what: str) -> np.ndarray:
    """``value`` as a float64 array of ``shape`` (None: any length), or a clear error.

    ``what`` says what the numbers are, e.g. "21 SMPL-X body joints x 3 axis-angle, radians".
    """
    wanted = " x ".join("T" if n is None else str(n) for n in shape)
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise invalid(
            "shape", f"{name} must be a {wanted} array of numbers ({what}); got ragged rows"
        ) from None
    if array.ndim != len(shape) or any(
        n is not None and n != m for n, m in zip(shape, array.shape, strict=False)
    ):
        got = " x ".join(str(n) for n in array.shape) or "a single number"
        raise invalid("shape", f"{name} must be {wanted} ({what}), got {got}")
    if not np.isfinite(array).all():
        raise invalid("finite", f"{name} holds NaN or infinite values; send finite numbers")
    return array


def check_names(names: list[str], valid: tuple[str, ...] | list[str], field: str) -> None:
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise invalid(
            "names",
            f"{field}: unknown name(s) {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}",
        )


def check_count(value: int, limit: int, field: str, setting: str) -> int:
    if value > limit:
        raise invalid(
            "limit",
            f"{field} must be at most {limit} (the server's limit, BODYSERVE_{setting.upper()}); "
            "ask for fewer, or send several requests",
        )
    return value
