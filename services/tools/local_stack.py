"""The local stack, for machines without Docker: Redis, Triton, Celery workers and the gateway.

Each component runs as its own process group on 127.0.0.1, with its log and pid file under
``<var_dir>/stack/`` and the stack's configuration (ports, URLs, start times) in
``<var_dir>/stack/stack.json``, so ``bodyserve stack status`` / ``down`` from another shell
find what ``up`` started. Every component gets the same environment (``BODYSERVE_REDIS_URL``,
``BODYSERVE_TRITON_URL``, ``BODYSERVE_VAR_DIR``, ...), in open mode (``BODYSERVE_AUTH_MODE=open``:
no API keys) unless the environment sets ``BODYSERVE_AUTH_MODE``.

- ``redis``: ``redis-server`` on its own port (6390) with ``--dir <var_dir>/redis`` and AOF
  persistence (fsync every second), as in the containers; only when no Redis URL is given
  (``BODYSERVE_REDIS_URL`` in the environment, or ``redis_url``).
- ``triton``: ``tritonserver`` as built by :mod:`services.tools.triton_launcher` (python
  backend, CPU), ready when it serves every model of the capability table.
- ``worker-<queue>``: one Celery worker per queue of the capability table (``-c 1``, prefetch
  1), serving the webhooks queue too.
- ``gateway``: ``uvicorn services.gateway.app:app``.

``up()`` is idempotent (a component already running is reported, not restarted) and waits for
each component to be ready: Redis answers PING, Triton reports every model ready, each worker
answers a Celery ping, the gateway's ``GET /readyz`` returns 200. ``down()`` sends SIGTERM,
then SIGKILL to the whole process group after a grace period.

Any single component can be stopped and started again on the same ports and directories
(fault-tolerance tests): ``stop(name)`` sends SIGTERM to its main process only, as Docker and
Kubernetes do; ``kill(name)`` sends SIGKILL to its whole process group, as a crash would.

Usage::

    stack = LocalStack(StackConfig.from_env())
    stack.up()
    stack.kill_worker("mesh_recovery")   # kill -9, as a crash would
    stack.start_worker("mesh_recovery")
    stack.restart("redis", down_s=2)     # SIGTERM, 2 s down, start again (its AOF reloads)
    stack.stop("triton"); stack.start("triton")
    stack.down()
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import httpx
import redis
from celery import Celery

from services.capabilities import JOB_QUEUES, TRITON_MODELS, WEBHOOKS_QUEUE
from services.common.triton_backend import triton_ready
from services.tools.triton_launcher import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    TritonOptions,
    TritonStartupError,
    triton_command,
    wait_ready,
)
from shared.settings import REPO_ROOT, get_settings

DEFAULT_REDIS_PORT = 6390
ALL_COMPONENTS: tuple[str, ...] = ("redis", "triton", "workers", "gateway")
CELERY_APP = "services.workers.celery_app:app"
COMPUTE_NICENESS = 10
GATEWAY_APP = "services.gateway.app:app"


class StackError(RuntimeError):
    """A component could not start, or is not ready in time (the message quotes its log)."""


# --------------------------------------------------------------------------- configuration


@dataclass
class StackConfig:
    """What the local stack runs and where. All ports on ``host`` (127.0.0.1)."""

    var_dir: Path
    host: str = "127.0.0.1"
    redis_port: int = DEFAULT_REDIS_PORT
    redis_url: str | None = None  # an external Redis: no redis-server is started
    triton_http_port: int = DEFAULT_HTTP_PORT
    triton_grpc_port: int = DEFAULT_GRPC_PORT
    triton_metrics_port: int = DEFAULT_METRICS_PORT
    gateway_port: int = 8000
    # One worker per queue of the capability table (services/capabilities.py), as compose's.
    queues: list[str] = field(default_factory=lambda: list(JOB_QUEUES))
    components: list[str] = field(default_factory=lambda: list(ALL_COMPONENTS))
    model_repository: Path | None = None  # default: settings.model_repository
    # The Triton models to wait for: every one the capability table names.
    models: list[str] = field(default_factory=lambda: list(TRITON_MODELS))
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_pythonpath: list[str] = field(default_factory=list)  # for Triton's python models too
    startup_timeout_s: float = 300.0
    grace_s: float = 15.0  # SIGTERM to SIGKILL; Triton itself gives up after 10 s

    @classmethod
    def from_env(cls, **overrides: Any) -> StackConfig:
        """Defaults from the settings; an external Redis when ``BODYSERVE_REDIS_URL`` is set."""
        settings = get_settings()
        values: dict[str, Any] = {
            "var_dir": settings.var_dir,
            "redis_url": os.environ.get("BODYSERVE_REDIS_URL") or None,
            "gateway_port": settings.gateway_port,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def with_free_ports(cls, var_dir: Path, **overrides: Any) -> StackConfig:
        """Every port picked free (tests): Redis, Triton's three, the gateway."""
        redis, http, grpc, metrics, gateway = free_ports(5)
        values: dict[str, Any] = {
            "var_dir": Path(var_dir),
            "redis_port": redis,
            "triton_http_port": http,
            "triton_grpc_port": grpc,
            "triton_metrics_port": metrics,
            "gateway_port": gateway,
        }
        values.update(overrides)
        return cls(**values)

    # --- derived -------------------------------------------------------------------------

    @property
    def stack_dir(self) -> Path:
        return Path(self.var_dir) / "stack"

    @property
    def own_redis(self) -> bool:
        return "redis" in self.components and not self.redis_url

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or f"redis://{self.host}:{self.redis_port}/0"

    @property
    def triton_url(self) -> str:
        """gRPC ``host:port`` (what ``BODYSERVE_TRITON_URL`` holds)."""
        return f"{self.host}:{self.triton_grpc_port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.gateway_port}"

    def component_names(self) -> list[str]:
        """The processes of this stack, in start order."""
        names = []
        if self.own_redis:
            names.append("redis")
        if "triton" in self.components:
            names.append("triton")
        if "workers" in self.components:
            names += [worker_name(q) for q in self.queues]
        if "gateway" in self.components:
            names.append("gateway")
        return names

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StackConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("var_dir", "model_repository"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        return cls(**values)


def worker_name(queue: str) -> str:
    return f"worker-{queue}"


def free_ports(count: int = 1, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free on ``host`` right now (bound together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


# --------------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state first), or None when there is no such process."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return data.rsplit(")", 1)[1].split()


def _start_ticks(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return int(stat[19]) if stat else None


def pid_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Running (not a zombie) and, when ``start_ticks`` is given, the same process (no reuse)."""
    stat = _proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return False
    return start_ticks is None or int(stat[19]) == start_ticks


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat and stat[0] not in ("Z", "X") and int(stat[2]) == pgid:
            members.append(int(entry.name))
    return members


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text[-lines:])


@dataclass
class ComponentStatus:
    """One component as ``status()`` / ``up()`` / ``down()`` report it."""

    name: str
    state: str  # running | started | already running | stopped | not running | dead
    pid: int | None = None
    ready: bool = False
    url: str | None = None
    log: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["log"] = str(self.log) if self.log else None
        return data


# --------------------------------------------------------------------------- the stack


class LocalStack:
    """The local stack in ``config.var_dir``; see the module docstring.

    ``LocalStack.open(var_dir)`` attaches to a stack started elsewhere (its recorded config).
    """

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig.from_env()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}  # started by this object: reaped

    @classmethod
    def open(cls, var_dir: Path | None = None) -> LocalStack:
        """The stack recorded in ``var_dir`` (default: settings), else a default config."""
        var_dir = Path(var_dir or get_settings().var_dir)
        state = _read_state(var_dir / "stack" / "stack.json")
        if state.get("config"):
            return cls(StackConfig.from_json(state["config"]))
        return cls(StackConfig.from_env(var_dir=var_dir))

    # --- urls and environment ------------------------------------------------------------

    @property
    def var_dir(self) -> Path:
        return Path(self.config.var_dir)

    @property
    def redis_url(self) -> str:
        return self.config.effective_redis_url

    @property
    def triton_url(self) -> str:
        return self.config.triton_url

    @property
    def base_url(self) -> str:
        return self.config.base_url

    def env(self) -> dict[str, str]:
        """The environment every component runs with."""
        env = dict(os.environ)
        env.update(
            {
                "BODYSERVE_REDIS_URL": self.redis_url,
                "BODYSERVE_VAR_DIR": str(self.var_dir),
                "BODYSERVE_GATEWAY_HOST": self.config.host,
                "BODYSERVE_GATEWAY_PORT": str(self.config.gateway_port),
                "PYTHONUNBUFFERED": "1",
            }
        )
        # Local demos and tests: open mode (no API key), unless the environment asks for keys.
        env.setdefault("BODYSERVE_AUTH_MODE", "open")
        if "triton" in self.config.components:
            env["BODYSERVE_TRITON_URL"] = self.triton_url
        if self.config.model_repository:
            env["BODYSERVE_MODEL_REPOSITORY"] = str(self.config.model_repository)
        path = [*self.config.extra_pythonpath, str(REPO_ROOT)]
        if env.get("PYTHONPATH"):
            path.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(path)
        env.update(self.config.extra_env)
        return env

    # --- state ---------------------------------------------------------------------------

    @property
    def _state_path(self) -> Path:
        return self.config.stack_dir / "stack.json"

    def _state(self) -> dict[str, Any]:
        return _read_state(self._state_path)

    def _save_state(self, processes: dict[str, Any]) -> None:
        self.config.stack_dir.mkdir(parents=True, exist_ok=True)
        data = {"config": self.config.to_json(), "processes": processes}
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self._state_path)

    def _record(self, name: str, proc: subprocess.Popen[bytes], argv: Sequence[str]) -> None:
        processes = self._state().get("processes", {})
        processes[name] = {
            "pid": proc.pid,
            "start_ticks": _start_ticks(proc.pid),
            "argv": list(argv),
            "log": str(self.log_path(name)),
        }
        self._save_state(processes)
        self.pid_path(name).write_text(f"{proc.pid}\n")

    def _forget(self, name: str) -> None:
        processes = self._state().get("processes", {})
        processes.pop(name, None)
        self._save_state(processes)
        self.pid_path(name).unlink(missing_ok=True)

    def log_path(self, name: str) -> Path:
        return self.config.stack_dir / f"{name}.log"

    def pid_path(self, name: str) -> Path:
        return self.config.stack_dir / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        """The pid of component ``name`` when it is running, else None."""
        proc = self._procs.get(name)
        if proc is not None:
            return proc.pid if proc.poll() is None else None
        entry = self._state().get("processes", {}).get(name)
        if entry and pid_alive(entry["pid"], entry.get("start_ticks")):
            return int(entry["pid"])
        return None

    def _check_config(self) -> None:
        """Refuse to start a second, differently configured stack over a running one."""
        recorded = self._state().get("config")
        if not recorded:
            return
        running = [n for n in self._state().get("processes", {}) if self.pid(n)]
        if not running:
            return
        old = StackConfig.from_json(recorded)
        keys = ("redis_port", "triton_grpc_port", "triton_http_port", "gateway_port", "redis_url")
        if any(getattr(old, k) != getattr(self.config, k) for k in keys):
            raise StackError(
                f"a stack with other ports is already running in {self.var_dir} "
                f"({', '.join(running)}): run `down` first"
            )
        # Keep components/queues started earlier in the record as well.
        merged_queues = list(dict.fromkeys([*old.queues, *self.config.queues]))
        merged = list(dict.fromkeys([*old.components, *self.config.components]))
        self.config = replace(self.config, queues=merged_queues, components=merged)

    # --- commands ------------------------------------------------------------------------

    def _command(self, name: str) -> tuple[list[str], dict[str, str]]:
        cfg, env = self.config, self.env()
        if name == "redis":
            server = shutil.which("redis-server")
            if server is None:
                raise StackError("redis-server not found (apt-get install redis-server)")
            redis_dir = self.var_dir / "redis"
            redis_dir.mkdir(parents=True, exist_ok=True)
            argv = [
                server,
                "--port", str(cfg.redis_port),
                "--bind", cfg.host,
                "--dir", str(redis_dir),
                "--daemonize", "no",
                "--protected-mode", "yes",
                # As docker-compose.yml and deploy/kubernetes/redis.yaml: queued jobs and job
                # states survive a restart (and a crash, but for the last second of writes).
                "--appendonly", "yes",
                "--appendfsync", "everysec",
            ]  # fmt: skip
            return argv, env
        if name == "triton":
            command = triton_command(
                TritonOptions(
                    model_repository=cfg.model_repository,
                    var_dir=self.var_dir,
                    http_port=cfg.triton_http_port,
                    grpc_port=cfg.triton_grpc_port,
                    metrics_port=cfg.triton_metrics_port,
                    address=cfg.host,
                    extra_pythonpath=cfg.extra_pythonpath,
                    env=env,
                )
            )
            return command.argv, command.env
        if name.startswith("worker-"):
            queue = name.removeprefix("worker-")
            argv = [
                sys.executable, "-m", "celery",
                "-A", CELERY_APP,
                "worker",
                # Its queue and the webhooks queue every worker serves.
                "-Q", ",".join(dict.fromkeys([queue, WEBHOOKS_QUEUE])),
                "-c", "1",
                "--prefetch-multiplier", "1",
                "-n", f"{queue}@%h",
                "--without-gossip",
                "--without-mingle",
                "--loglevel", "INFO",
            ]  # fmt: skip
            return argv, env
        if name == "gateway":
            argv = [
                sys.executable, "-m", "uvicorn", GATEWAY_APP,
                "--host", cfg.host,
                "--port", str(cfg.gateway_port),
            ]  # fmt: skip
            return argv, env
        raise KeyError(name)

    def _ports(self, name: str) -> list[int]:
        cfg = self.config
        if name == "redis":
            return [cfg.redis_port]
        if name == "triton":
            return [cfg.triton_http_port, cfg.triton_grpc_port, cfg.triton_metrics_port]
        if name == "gateway":
            return [cfg.gateway_port]
        return []

    def url(self, name: str) -> str | None:
        if name == "redis":
            return self.redis_url
        if name == "triton":
            return self.triton_url
        if name == "gateway":
            return self.base_url
        if name.startswith("worker-"):
            return self._nodename(name.removeprefix("worker-"))
        return None

    @staticmethod
    def _nodename(queue: str) -> str:
        return f"{queue}@{socket.gethostname()}"

    def _start(self, name: str) -> subprocess.Popen[bytes]:
        busy = [p for p in self._ports(name) if port_in_use(p, self.config.host)]
        if busy:
            raise StackError(f"{name}: port(s) {busy} already in use by another process")
        argv, env = self._command(name)
        nice = shutil.which("nice")
        if nice and (name == "triton" or name.startswith("worker-")):
            # The compute services yield the CPU to the gateway and Redis: on a small machine
            # status reads stay fast while models run (in Kubernetes they are separate pods).
            argv = [nice, "-n", str(COMPUTE_NICENESS), *argv]
        log = self.log_path(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: down() reaches its children
            )
        self._procs[name] = proc
        self._record(name, proc, argv)
        return proc

    # --- readiness -----------------------------------------------------------------------

    def probe(self, name: str, timeout_s: float = 2.0) -> bool:
        """One readiness check of component ``name`` (never raises)."""
        try:
            if name == "redis":
                client = redis.Redis.from_url(self.redis_url, socket_timeout=timeout_s)
                try:
                    return bool(client.ping())
                finally:
                    client.close()
            if name == "triton":
                return triton_ready(self.triton_url, tuple(self.config.models), timeout_s)
            if name.startswith("worker-"):
                return self._ping_worker(name.removeprefix("worker-"), timeout_s)
            if name == "gateway":
                # /readyz wants a worker; a stack without workers (a gateway on its own, for
                # API tests) is ready when the gateway answers.
                probe = "/readyz" if "workers" in self.config.components else "/healthz"
                return httpx.get(f"{self.base_url}{probe}", timeout=timeout_s).status_code == 200
        except Exception:
            return False
        return False

    def _ping_worker(self, queue: str, timeout_s: float) -> bool:

        app = Celery("bodyserve-stack-probe", broker=self.redis_url)
        try:
            replies = app.control.ping(destination=[self._nodename(queue)], timeout=timeout_s)
            return any(self._nodename(queue) in reply for reply in replies)
        finally:
            app.close()

    def wait_ready(self, name: str, timeout_s: float | None = None) -> float:
        """Block until ``name`` is ready; :class:`StackError` (with its log) when it dies or
        times out. Returns the seconds waited."""
        timeout_s = timeout_s if timeout_s is not None else self.config.startup_timeout_s
        start = time.monotonic()
        proc = self._procs.get(name)
        if name == "triton":
            try:
                return wait_ready(self.triton_url, self.config.models, timeout_s, process=proc)
            except TritonStartupError as exc:
                raise StackError(f"triton: {exc}\n{_log_tail(self.log_path(name))}") from exc
        while True:
            if self.probe(name):
                return time.monotonic() - start
            if proc is not None and proc.poll() is not None:
                raise StackError(
                    f"{name} exited with code {proc.returncode}:\n{_log_tail(self.log_path(name))}"
                )
            if time.monotonic() - start > timeout_s:
                raise StackError(
                    f"{name} not ready after {timeout_s:.0f}s:\n{_log_tail(self.log_path(name))}"
                )
            time.sleep(0.25)

    # --- lifecycle -----------------------------------------------------------------------

    def up(self) -> list[ComponentStatus]:
        """Start whatever is not running yet, wait until all is ready, report each component.

        On failure, the components this call started are stopped again and
        :class:`StackError` says which one failed and why.
        """
        self._check_config()
        self.config.stack_dir.mkdir(parents=True, exist_ok=True)
        report: dict[str, ComponentStatus] = {}
        started: list[str] = []
        try:
            for name in self.config.component_names():
                pid = self.pid(name)
                if pid is not None:
                    report[name] = ComponentStatus(name, "already running", pid)
                    continue
                proc = self._start(name)
                started.append(name)
                report[name] = ComponentStatus(name, "started", proc.pid)
                if name == "redis":  # everything else needs it
                    self.wait_ready(name)
            for name in self.config.component_names():
                self.wait_ready(name)
                report[name].ready = True
        except BaseException:
            for name in reversed(started):
                self.stop(name)
            raise
        for status in report.values():
            status.url = self.url(status.name)
            status.log = self.log_path(status.name)
        return list(report.values())

    def stop(self, name: str, grace_s: float | None = None, sig: int = signal.SIGTERM) -> bool:
        """Stop ``name`` and wait until every process of its group has exited.

        ``sig`` SIGTERM (or any signal but SIGKILL) goes to the main process only, as Docker
        and Kubernetes deliver it to a container's PID 1 (a Celery worker starts its warm
        shutdown, its pool processes go on with their job); whatever is left after
        ``grace_s`` is killed with SIGKILL, group and all. ``sig`` SIGKILL kills the whole
        group at once, as a crash would. Returns True when something was running.
        """
        grace_s = self.config.grace_s if grace_s is None else grace_s
        pid = self.pid(name)
        proc = self._procs.pop(name, None)
        if pid is None:
            # The leader is gone; its children may not be (a pool process, a Triton stub).
            entry = self._state().get("processes", {}).get(name)
            if entry and group_members(int(entry["pid"])):
                _signal_group(int(entry["pid"]), signal.SIGKILL)
            self._forget(name)
            return False
        if sig == signal.SIGKILL:
            _signal_group(pid, signal.SIGKILL)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.1)
            else:
                time.sleep(0.1)
            if not pid_alive(pid) and not group_members(pid):
                break
        else:
            _signal_group(pid, signal.SIGKILL)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        # Leftover children (a stub or pool process whose parent already left).
        if group_members(pid):
            _signal_group(pid, signal.SIGKILL)
            end = time.monotonic() + 5
            while group_members(pid) and time.monotonic() < end:
                time.sleep(0.05)
        self._forget(name)
        return True

    def down(self, grace_s: float | None = None) -> list[ComponentStatus]:
        """Stop every component (gateway, workers, Triton, Redis), report what was stopped."""
        state = self._state().get("processes", {})
        names = list(dict.fromkeys([*self.config.component_names(), *state, *self._procs]))
        order = sorted(names, key=_stop_order)
        report = []
        for name in order:
            pid = self.pid(name)
            stopped = self.stop(name, grace_s)
            report.append(ComponentStatus(name, "stopped" if stopped else "not running", pid))
        if self._state_path.exists():
            self._state_path.unlink()
        return report

    def status(self, probe: bool = True) -> list[ComponentStatus]:
        """Each component: running or not, its pid, ready (one quick probe), url and log."""
        recorded = self._state().get("processes", {})
        names = list(dict.fromkeys([*self.config.component_names(), *recorded]))
        report = []
        for name in names:
            pid = self.pid(name)
            if pid is not None:
                state = "running"
            elif name in recorded:
                state = "dead"
            else:
                state = "not running"
            ready = probe and pid is not None and self.probe(name)
            report.append(
                ComponentStatus(name, state, pid, ready, self.url(name), self.log_path(name))
            )
        return report

    # --- single components (fault-tolerance tests) ---------------------------------------

    def start(self, name: str, wait: bool = True, timeout_s: float | None = None) -> int:
        """Start component ``name`` (if it is not running) on its ports and directories, as
        ``up()`` would, and wait until it is ready. Returns its pid."""
        if name.startswith("worker-"):
            queue = name.removeprefix("worker-")
            if queue not in self.config.queues:
                self.config.queues.append(queue)
        elif name not in self.config.component_names():
            raise StackError(f"{name} is not a component of this stack")
        pid = self.pid(name)
        if pid is None:
            pid = self._start(name).pid
        if wait:
            self.wait_ready(name, timeout_s)
        return pid

    def kill(self, name: str) -> int | None:
        """``kill -9`` component ``name`` and every process of its group, as a crash would.

        Returns the pid that was killed (None when it was not running).
        """
        pid = self.pid(name)
        self.stop(name, grace_s=5.0, sig=signal.SIGKILL)
        return pid

    def restart(
        self,
        name: str,
        *,
        hard: bool = False,
        grace_s: float | None = None,
        down_s: float = 0.0,
        wait: bool = True,
    ) -> int:
        """Stop ``name`` (``hard``: SIGKILL to its group; else SIGTERM to its main process and
        ``grace_s`` to exit), leave it down ``down_s`` seconds, start it again on the same
        ports and directories. Returns the new pid."""
        if hard:
            self.kill(name)
        else:
            self.stop(name, grace_s)
        if down_s > 0:
            time.sleep(down_s)
        return self.start(name, wait=wait)

    # --- workers ---------------------------------------------------------------------------

    def kill_worker(self, queue: str) -> int | None:
        """``kill -9`` the worker of ``queue`` and its pool processes, as a crash would.

        Returns the pid that was killed (None when it was not running).
        """
        return self.kill(worker_name(queue))

    def start_worker(self, queue: str, wait: bool = True) -> int:
        """Start the worker of ``queue`` (if not running) and wait until it answers a ping."""
        return self.start(worker_name(queue), wait=wait)

    def restart_worker(self, queue: str, hard: bool = True) -> int:
        """Kill (``hard``: SIGKILL, else a clean SIGTERM) and start the worker of ``queue``."""
        return self.restart(worker_name(queue), hard=hard)


def _stop_order(name: str) -> int:
    if name == "gateway":
        return 0
    if name.startswith("worker-"):
        return 1
    if name == "triton":
        return 2
    return 3  # redis last: workers flush to it on their way out


def _read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


# --------------------------------------------------------------------------- functions


def up(config: StackConfig | None = None) -> tuple[LocalStack, list[ComponentStatus]]:
    """Start the local stack (idempotent); returns it and a report per component."""
    stack = LocalStack(config or StackConfig.from_env())
    return stack, stack.up()


def down(var_dir: Path | None = None, grace_s: float | None = None) -> list[ComponentStatus]:
    """Stop the stack recorded in ``var_dir`` (default: settings.var_dir)."""
    return LocalStack.open(var_dir).down(grace_s)


def status(var_dir: Path | None = None, probe: bool = True) -> list[ComponentStatus]:
    """Report the stack recorded in ``var_dir`` (default: settings.var_dir)."""
    return LocalStack.open(var_dir).status(probe)


def parse_components(values: Iterable[str] | None) -> list[str]:
    """Validate component names given on a command line (``None``: all)."""
    if not values:
        return list(ALL_COMPONENTS)
    wrong = [v for v in values if v not in ALL_COMPONENTS]
    if wrong:
        raise ValueError(f"unknown component(s) {wrong}; choose from {list(ALL_COMPONENTS)}")
    return list(dict.fromkeys(values))
