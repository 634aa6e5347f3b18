"""What every model of this repository shares inside Triton's python-backend stub.

1. Makes ``shared.*`` importable. The stub embeds Python in isolated mode, which ignores
   ``PYTHONPATH``: honour it here (``services.tools.triton_launcher.triton_env`` puts the repo
   root there), and fall back to the repository that holds this model repository.
2. Moves tensors between Triton and the wire modules (:mod:`shared.inference.wire`), which
   work on plain ``dict[str, np.ndarray]`` and never import Triton: :func:`request_arrays`,
   :func:`response`, :func:`error_response`, and :func:`instance_device` for the GPU.

Each ``model.py`` puts the folder of the first ``bootstrap.py`` above its real path (this
repository's root, whether the version's ``model.py`` is the file, a copy or a link to the
model's one implementation) at the front of ``sys.path`` and imports ``bootstrap``, before it
imports the project. (Triton runs each model in a process of its own.)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from shared.inference.wire import ModelSpec


def add_project_to_path() -> None:
    entries = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    repo_root = Path(__file__).resolve().parent.parent
    if (repo_root / "shared" / "__init__.py").exists():
        entries.append(str(repo_root))
    for entry in reversed(entries):
        if entry not in sys.path:
            sys.path.insert(0, entry)


add_project_to_path()


def request_arrays(request: Any, model: ModelSpec) -> dict[str, np.ndarray]:
    """The request's inputs that ``model`` (a wire spec) names, as numpy arrays; the optional
    ones the request left out are absent."""
    # Triton's stub provides this module; the tests import this file without it.
    import triton_python_backend_utils as pb_utils

    tensors = {name: pb_utils.get_input_tensor_by_name(request, name) for name in model.input_names}
    return {name: tensor.as_numpy() for name, tensor in tensors.items() if tensor is not None}


def response(arrays: dict[str, np.ndarray]) -> Any:
    """An ``InferenceResponse`` carrying ``arrays`` (a wire module's packed response)."""
    import triton_python_backend_utils as pb_utils  # the stub's (see request_arrays)

    tensors = [pb_utils.Tensor(name, np.ascontiguousarray(a)) for name, a in arrays.items()]
    return pb_utils.InferenceResponse(output_tensors=tensors)


def error_response(message: str) -> Any:
    """An ``InferenceResponse`` that fails its request with ``message``."""
    import triton_python_backend_utils as pb_utils  # the stub's (see request_arrays)

    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


def instance_device(args: dict) -> str:
    """The device of the instance Triton is initialising ("cpu", or "cuda:N" for a
    ``KIND_GPU`` instance, made torch's current CUDA device)."""
    if args.get("model_instance_kind") != "GPU":
        return "cpu"
    import torch  # only a GPU instance needs it here

    device = int(args["model_instance_device_id"])
    torch.cuda.set_device(device)
    return f"cuda:{device}"
