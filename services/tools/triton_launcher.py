"""Run NVIDIA Triton Inference Server on the bodyserve model repository.

Two homes for the ``tritonserver`` binary:

- the ``nvidia-pytriton`` wheel (``pip install bodyserve[triton]``), which carries a real
  ``tritonserver`` with the python backend; it runs on CPU, which is how the local stack and
  the integration tests use it;
- NVIDIA's Triton container image (``/opt/tritonserver``), or the same wheel inside the CUDA
  image, in production.

The wheel ships its python-backend stub per Python version, outside the backend folder, so
:func:`prepare_backend_dir` assembles a backend directory under ``<var_dir>/triton/backends``
(the wheel's ``backends/python`` plus the stub for this interpreter). It is a copy in the
project's runtime folder, not an edit of site-packages: a reinstall of the wheel never
leaves a half-patched package behind, and two checkouts never share one.

The python models import ``shared.*`` and the venv's packages. The stub embeds libpython in
*isolated* mode (``PYTHONPATH`` is ignored): it finds the venv through the first ``python3``
on ``PATH`` (the venv's, next to its ``pyvenv.cfg``), so the venv's site-packages (and the
editable install of bodyserve) are on its path; each ``model.py`` also puts the entries of
``PYTHONPATH`` (repo root, site-packages) and its own repository root on ``sys.path``.
:func:`triton_env` builds that environment.

Models are served in ``explicit`` model-control mode with ``--load-model=*``: everything in
the repository loads at startup, and later versions can be hot-loaded (and old ones unloaded)
with Triton's model-control API (``client.load_model("body_fit")``) without a restart.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from services.capabilities import TRITON_MODELS
from shared.settings import REPO_ROOT, Settings, get_settings

DEFAULT_HTTP_PORT = 8100
DEFAULT_GRPC_PORT = 8101
DEFAULT_METRICS_PORT = 8102
"""Triton's own defaults (8000-8002) clash with the gateway's 8000, so the stack shifts them."""

STUB_NAME = "triton_python_backend_stub"
SYSTEM_TRITON_HOME = Path("/opt/tritonserver")  # NVIDIA's container image


class TritonNotFound(FileNotFoundError):
    """No tritonserver binary: install ``bodyserve[triton]`` or use NVIDIA's Triton image."""


@dataclass(frozen=True)
class TritonDist:
    """Where a tritonserver installation keeps its pieces."""

    binary: Path
    python_backend: Path  # the folder holding libtriton_python.so
    stub: Path | None  # the python-backend stub for this interpreter (None: already in place)
    libs: tuple[Path, ...] = ()  # extra shared-library folders (the wheel's bundled libs)


def find_tritonserver() -> TritonDist:
    """The ``nvidia-pytriton`` wheel's tritonserver, else the one of NVIDIA's image / ``PATH``."""
    spec = importlib.util.find_spec("pytriton")
    if spec is not None and spec.origin is not None:
        package = Path(spec.origin).parent
        home = package / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = home / "python_backend_stubs" / version / STUB_NAME
        if (home / "bin" / "tritonserver").exists():
            if not stub.exists():
                raise TritonNotFound(f"nvidia-pytriton has no python-backend stub for {version}")
            return TritonDist(
                binary=home / "bin" / "tritonserver",
                python_backend=home / "backends" / "python",
                stub=stub,
                libs=(package.parent / "nvidia_pytriton.libs",),
            )
    found = shutil.which("tritonserver")
    binary = Path(found) if found else SYSTEM_TRITON_HOME / "bin" / "tritonserver"
    if not binary.exists():
        raise TritonNotFound(
            "tritonserver not found: `pip install -e .[triton]` (nvidia-pytriton), or run in "
            "NVIDIA's Triton image"
        )
    backend = binary.resolve().parent.parent / "backends" / "python"
    return TritonDist(binary=binary, python_backend=backend, stub=None)


def _same_file(a: Path, b: Path) -> bool:
    if not b.exists():
        return False
    sa, sb = a.stat(), b.stat()
    return sa.st_size == sb.st_size and int(sa.st_mtime) == int(sb.st_mtime)


def prepare_backend_dir(
    var_dir: Path | Settings | None = None, dist: TritonDist | None = None
) -> Path:
    """Assemble ``<var_dir>/triton/backends/python`` (backend library, utils, stub).

    ``var_dir``: a folder, or settings (their ``var_dir``); default: the settings'. Idempotent:
    files already copied (same size and mtime) are left alone. Returns the
    ``--backend-directory`` to pass. For an installation whose backend folder already holds
    its stub (NVIDIA's image), returns that installation's backend folder untouched. Raises
    :class:`TritonNotFound` (a ``FileNotFoundError``) without a tritonserver.
    """
    dist = dist or find_tritonserver()
    if dist.stub is None:
        return dist.python_backend.parent
    if isinstance(var_dir, Settings):
        var_dir = var_dir.var_dir
    var_dir = var_dir or get_settings().var_dir
    backends = Path(var_dir) / "triton" / "backends"
    target = backends / "python"
    target.mkdir(parents=True, exist_ok=True)
    sources = [p for p in dist.python_backend.iterdir() if p.is_file()] + [dist.stub]
    for source in sources:
        dest = target / source.name
        if not _same_file(source, dest):
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.copy2(source, tmp)
            os.replace(tmp, dest)  # atomic: a concurrent server never sees a half-written stub
    return backends


def _libpython_dir() -> Path | None:
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlibrary = sysconfig.get_config_var("LDLIBRARY")
    if libdir and ldlibrary and (Path(libdir) / ldlibrary).exists():
        return Path(libdir)
    return None


def _prepend(entries: Iterable[str | os.PathLike[str]], current: str | None) -> str:
    parts = [str(e) for e in entries]
    if current:
        parts += [p for p in current.split(os.pathsep) if p and p not in parts]
    return os.pathsep.join(parts)


def triton_env(
    base: Mapping[str, str] | None = None,
    *,
    dist: TritonDist | None = None,
    extra_pythonpath: Sequence[str | os.PathLike[str]] = (),
) -> dict[str, str]:
    """The environment tritonserver and its python-backend stubs need.

    - ``LD_LIBRARY_PATH``: this interpreter's libpython folder (the stub links
      ``libpython3.X.so.1.0``; without it the loader may pick a system libpython of another
      build) and the wheel's bundled libraries;
    - ``PATH``: this interpreter's ``bin`` first, so the embedded interpreter finds the venv;
    - ``PYTHONPATH``: ``extra_pythonpath``, the repo root (for ``shared.*``), the venv's
      site-packages, then whatever was there.
    """
    env = dict(os.environ if base is None else base)
    dist = dist or find_tritonserver()
    libs = [d for d in (_libpython_dir(), *dist.libs) if d is not None]
    env["LD_LIBRARY_PATH"] = _prepend(libs, env.get("LD_LIBRARY_PATH"))
    env["PATH"] = _prepend([Path(sys.executable).parent], env.get("PATH"))
    site_packages = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    env["PYTHONPATH"] = _prepend(
        [*extra_pythonpath, REPO_ROOT, *dict.fromkeys(site_packages)], env.get("PYTHONPATH")
    )
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass
class TritonCommand:
    """A ready-to-run tritonserver command line and its environment."""

    argv: list[str]
    env: dict[str, str]
    http_port: int
    grpc_port: int
    metrics_port: int
    address: str = "127.0.0.1"
    models: tuple[str, ...] = TRITON_MODELS  # what it serves when ready: the table's models

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint (what ``BODYSERVE_TRITON_URL`` holds)."""
        host = "127.0.0.1" if self.address in ("0.0.0.0", "") else self.address
        return f"{host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        host = "127.0.0.1" if self.address in ("0.0.0.0", "") else self.address
        return f"http://{host}:{self.http_port}"

    def popen(self, log: Path | None = None, **kwargs: object) -> subprocess.Popen[bytes]:
        """Start the server in the background (its own process group), logging to ``log``."""
        if log is None:
            return subprocess.Popen(self.argv, env=self.env, start_new_session=True, **kwargs)  # type: ignore[call-overload]
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            return subprocess.Popen(  # type: ignore[call-overload]
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **kwargs,
            )

    def exec(self) -> None:
        """Replace this process with tritonserver (foreground; signals go straight to it)."""
        os.execve(self.argv[0], self.argv, self.env)


@dataclass
class TritonOptions:
    """Everything :func:`triton_command` varies; defaults come from the settings."""

    model_repository: Path | None = None
    var_dir: Path | None = None
    http_port: int = DEFAULT_HTTP_PORT
    grpc_port: int = DEFAULT_GRPC_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    address: str = "127.0.0.1"
    load_models: Sequence[str] = ("*",)
    log_verbose: int = 0
    extra_args: Sequence[str] = ()
    extra_pythonpath: Sequence[str | os.PathLike[str]] = ()
    env: Mapping[str, str] | None = None  # base environment (default: os.environ)
    extra_env: Mapping[str, str] = field(default_factory=dict)


def triton_command(
    options: TritonOptions | None = None, settings: Settings | None = None
) -> TritonCommand:
    """Prepare the backend folder and build the tritonserver command line.

    ``address`` binds HTTP, gRPC and metrics (127.0.0.1 by default; ``0.0.0.0`` in a
    container). ``load_models`` are the models loaded at startup in explicit model-control
    mode (``*``: all of the repository).
    """
    options = options or TritonOptions()
    settings = settings or get_settings()
    dist = find_tritonserver()
    var_dir = Path(options.var_dir or settings.var_dir)
    repository = Path(options.model_repository or settings.model_repository).resolve()
    backend_dir = prepare_backend_dir(var_dir, dist)
    argv = [
        str(dist.binary),
        f"--model-repository={repository}",
        f"--backend-directory={backend_dir}",
        f"--http-address={options.address}",
        f"--http-port={options.http_port}",
        f"--grpc-address={options.address}",
        f"--grpc-port={options.grpc_port}",
        "--allow-metrics=true",
        f"--metrics-address={options.address}",
        f"--metrics-port={options.metrics_port}",
        "--model-control-mode=explicit",
        *(f"--load-model={name}" for name in options.load_models),
        "--strict-readiness=true",
        "--exit-on-error=false",
        f"--log-verbose={options.log_verbose}",
        "--exit-timeout-secs=10",
        *options.extra_args,
    ]
    env = triton_env(options.env, dist=dist, extra_pythonpath=options.extra_pythonpath)
    env.update(options.extra_env)
    env["BODYSERVE_VAR_DIR"] = str(var_dir)
    return TritonCommand(
        argv=argv,
        env=env,
        http_port=options.http_port,
        grpc_port=options.grpc_port,
        metrics_port=options.metrics_port,
        address=options.address,
    )


class TritonStartupError(RuntimeError):
    """Triton did not become ready: it exited, a model failed to load, or it timed out."""


def _strip_scheme(url: str) -> str:
    for scheme in ("grpc://", "http://", "https://"):
        if url.startswith(scheme):
            return url[len(scheme) :]
    return url


def wait_ready(
    url: str,
    models: Iterable[str] = TRITON_MODELS,
    timeout: float = 120.0,
    *,
    process: subprocess.Popen[bytes] | None = None,
    poll_s: float = 0.25,
) -> float:
    """Wait until Triton at gRPC ``url`` (``host:port``) is ready with every model in ``models``
    (default: every model of the capability table, :data:`services.capabilities.TRITON_MODELS`).

    Returns the seconds waited. Raises :class:`TritonStartupError` at once when ``process``
    has exited or when a model is reported ``UNAVAILABLE`` (its load failed; the message says
    why), and after ``timeout`` seconds otherwise.
    """

    models = list(models)
    start = time.monotonic()
    deadline = start + timeout
    last = "not contacted yet"
    client = grpcclient.InferenceServerClient(_strip_scheme(url))
    try:
        while True:
            if process is not None and process.poll() is not None:
                raise TritonStartupError(f"tritonserver exited with code {process.returncode}")
            try:
                if client.is_server_live(client_timeout=2.0):
                    index = client.get_model_repository_index(as_json=True, client_timeout=2.0)
                    states = {m["name"]: m for m in index.get("models", [])}
                    pending = []
                    for name in models:
                        entry = states.get(name, {})
                        state = entry.get("state", "MISSING")
                        if state == "READY" and client.is_model_ready(name, client_timeout=2.0):
                            continue
                        if state == "UNAVAILABLE" and entry.get("reason"):
                            raise TritonStartupError(
                                f"model {name} failed to load: {entry['reason']}"
                            )
                        pending.append(f"{name}={state}")
                    if not pending:
                        return time.monotonic() - start
                    last = ", ".join(pending)
                else:
                    last = "server not live"
            except InferenceServerException as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise TritonStartupError(f"Triton at {url} not ready after {timeout:.0f}s: {last}")
            time.sleep(poll_s)
    finally:
        client.close()
