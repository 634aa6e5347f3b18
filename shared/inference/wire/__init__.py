"""The Triton wire format of each served model: one module per model of ``model_repository/``.

Each module (:mod:`.keypoints_2d`, :mod:`.body_fit`, :mod:`.pose_prior`, :mod:`.pose_lift`,
:mod:`.motion_denoise`) holds the model's tensors (``MODEL``, a :class:`ModelSpec`: names,
data types, dims, optional inputs, ``max_batch_size``; its ``config.pbtxt`` says the same, and
``tests/unit/test_wire.py`` checks it) and the four conversions between the domain types of
:mod:`shared.inference.contracts` and plain ``dict[str, np.ndarray]``:

- ``pack_request`` (client): domain inputs -> request arrays;
- ``unpack_request`` (server): request arrays -> domain inputs;
- ``pack_response`` (server): domain outputs -> response arrays;
- ``unpack_response`` (client): response arrays -> domain outputs.

Nothing here imports Triton: ``services.common.triton_backend`` wraps the arrays in
``tritonclient`` inputs, each ``model_repository/<model>/.../model.py`` in
``triton_python_backend_utils`` tensors.
"""

from shared.inference.wire.tensors import (
    DTYPES,
    Arrays,
    ModelSpec,
    TensorSpec,
    numpy_dtype,
    one_value,
    take,
    triton_dtype,
)

__all__ = [
    "DTYPES",
    "Arrays",
    "ModelSpec",
    "TensorSpec",
    "numpy_dtype",
    "one_value",
    "take",
    "triton_dtype",
]
