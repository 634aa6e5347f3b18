"""What every wire module is made of: Triton's data types as numpy dtypes, the spec of a tensor
and of a model, and the checks of arrays against a spec.

Plain ``dict[str, np.ndarray]`` throughout, never a Triton object: the client
(``services.common.triton_backend``) wraps the arrays in ``tritonclient`` inputs, the served
models (``model_repository/*/model.py``) in ``triton_python_backend_utils`` tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

Arrays = dict[str, np.ndarray]
"""Tensors by name, as one request or one response carries them."""

DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP32": np.dtype(np.float32),
}
"""Triton's data type names (``config.pbtxt``'s ``TYPE_<name>``, tritonclient's datatype) ->
numpy dtypes, for the types the models use."""


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype of a Triton data type name ("FP32" or "TYPE_FP32")."""
    try:
        return DTYPES[name.removeprefix("TYPE_")]
    except KeyError:
        raise ValueError(f"unknown Triton data type {name!r}: use {', '.join(DTYPES)}") from None


def triton_dtype(dtype: np.dtype[Any] | type) -> str:
    """The Triton data type name of a numpy dtype."""
    wanted = np.dtype(dtype)
    for name, known in DTYPES.items():
        if known == wanted:
            return name
    raise ValueError(f"no Triton data type for numpy {wanted}")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor as ``config.pbtxt`` declares it."""

    name: str
    dtype: str  # Triton's data type name, without TYPE_ ("FP32")
    dims: tuple[int, ...]  # per batch item (without the batch dimension); -1: any size
    optional: bool = False  # an input the request may leave out
    ragged: bool = False  # allow_ragged_batch: requests of different sizes batch together

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return numpy_dtype(self.dtype)

    def array(self, value: Any) -> np.ndarray:
        """``value`` as a C-contiguous array of this tensor's dtype."""
        return np.ascontiguousarray(value, dtype=self.numpy_dtype)

    def check(self, array: np.ndarray, batched: bool) -> None:
        """``ValueError`` unless ``array`` has this dtype and these dims (after the batch
        dimension when ``batched``)."""
        if array.dtype != self.numpy_dtype:
            raise ValueError(f"{self.name}: dtype {array.dtype}, expected {self.numpy_dtype}")
        shape = array.shape[1:] if batched else array.shape
        if (batched and array.ndim == 0) or len(shape) != len(self.dims):
            expected = ("batch", *self.dims) if batched else self.dims
            raise ValueError(f"{self.name}: shape {array.shape}, expected {expected}")
        for size, dim in zip(shape, self.dims, strict=True):
            if dim != -1 and size != dim:
                raise ValueError(f"{self.name}: shape {array.shape}, expected dims {self.dims}")


@dataclass(frozen=True)
class ModelSpec:
    """A served model's tensors (``config.pbtxt`` says the same; tests/unit/test_wire.py checks)."""

    name: str
    max_batch_size: int  # 0: no batch dimension (one request is one item)
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.outputs)

    def input(self, name: str) -> TensorSpec:
        return _named(self.inputs, name, f"{self.name} has no input")

    def output(self, name: str) -> TensorSpec:
        return _named(self.outputs, name, f"{self.name} has no output")

    def require(self, arrays: Mapping[str, np.ndarray]) -> None:
        """``ValueError`` naming the required inputs that ``arrays`` (a request) lacks."""
        missing = [s.name for s in self.inputs if not s.optional and s.name not in arrays]
        if missing:
            raise ValueError(f"missing inputs {missing}")

    def check_request(self, arrays: Mapping[str, np.ndarray]) -> None:
        """``ValueError`` unless ``arrays`` is a request this model takes: known names, every
        required input, each of its spec's dtype and dims."""
        self.require(arrays)
        for name, array in arrays.items():
            self.input(name).check(array, self.batched)

    def check_response(self, arrays: Mapping[str, np.ndarray]) -> None:
        """``ValueError`` unless ``arrays`` holds exactly this model's outputs, each of its
        spec's dtype and dims."""
        if set(arrays) != set(self.output_names):
            raise ValueError(f"{self.name} outputs {sorted(arrays)}, expected {self.output_names}")
        for name, array in arrays.items():
            self.output(name).check(array, self.batched)


def _named(specs: tuple[TensorSpec, ...], name: str, what: str) -> TensorSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise KeyError(f"{what} {name!r}")


def take(arrays: Mapping[str, np.ndarray], index: slice | np.ndarray) -> Arrays:
    """The rows ``index`` (of the batch dimension) of every array: a chunk of a request, or one
    request's share of a batched response."""
    return {name: np.ascontiguousarray(array[index]) for name, array in arrays.items()}


def one_value(arrays: Mapping[str, np.ndarray], name: str) -> int | float | bool:
    """The single value of the (1,) tensor ``name`` as a Python number (``ValueError`` when it
    holds more)."""
    value = np.asarray(arrays[name]).reshape(-1)
    if value.size != 1:
        raise ValueError(f"{name} must hold one value, got shape {np.shape(arrays[name])}")
    number: int | float | bool = value[0].item()
    return number
