"""Which inference backend this process uses: Triton when it is configured, else in-process."""

from __future__ import annotations

import os
import threading

from services.common.triton_backend import TritonBackend
from shared.inference.contracts import InferenceBackend
from shared.inference.local import InProcessBackend
from shared.settings import Settings, get_settings

_backends: dict[tuple[int, str | None], InferenceBackend] = {}
_backends_lock = threading.Lock()


def get_backend(settings: Settings | None = None) -> InferenceBackend:
    """This process's backend: Triton when ``settings.triton_url`` is set, else in-process.

    Cached per process and URL, so the in-process models load once per worker process.
    """
    settings = settings or get_settings()
    key = (os.getpid(), settings.triton_url)
    with _backends_lock:
        backend = _backends.get(key)
        if backend is None:
            if settings.triton_url:
                backend = TritonBackend(settings.triton_url, settings.triton_timeout_s)
            else:
                backend = InProcessBackend()
            _backends[key] = backend
        return backend
