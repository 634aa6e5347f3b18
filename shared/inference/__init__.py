"""Where the heavy steps run: the contract (``contracts``), the in-process backend (``local``)
and the Triton wire format of each served model (``wire``)."""
