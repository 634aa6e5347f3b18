"""``bodyserve stack ...`` (the local stack) and ``bodyserve triton ...`` (Triton alone).

Mounted into the ``bodyserve`` command line by ``services.tools.cli``::

    bodyserve stack up [--queue mesh_recovery] [--only redis --only triton] [--gateway-port 8000]
    bodyserve stack status
    bodyserve stack down
    bodyserve stack restart-worker mesh_recovery
    bodyserve triton serve --host 0.0.0.0      # foreground, e.g. docker-compose's triton service
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from services.capabilities import JOB_QUEUES
from services.tools.local_stack import (
    ComponentStatus,
    LocalStack,
    StackConfig,
    StackError,
    parse_components,
)
from services.tools.triton_launcher import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    TritonNotFound,
    TritonOptions,
    triton_command,
)

stack_app = typer.Typer(
    help="The local stack (Redis, Triton, Celery workers, gateway) as processes on 127.0.0.1.",
    no_args_is_help=True,
)
triton_app = typer.Typer(
    help="Triton Inference Server with bodyserve's models.", no_args_is_help=True
)
console = Console()

VarDir = Annotated[
    Path | None,
    typer.Option("--var-dir", help="Runtime folder (logs, pids); default: BODYSERVE_VAR_DIR."),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _print(report: list[ComponentStatus], title: str, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([s.as_dict() for s in report], indent=2))
        return
    table = Table(title=title, title_justify="left")
    for column in ("component", "state", "pid", "ready", "url", "log"):
        table.add_column(column, overflow="fold")
    colours = {"running": "green", "started": "green", "already running": "green", "dead": "red"}
    for s in report:
        colour = colours.get(s.state, "yellow")
        table.add_row(
            s.name,
            f"[{colour}]{s.state}[/]",
            str(s.pid or "-"),
            "[green]yes[/]" if s.ready else "no",
            s.url or "-",
            str(s.log or "-"),
        )
    console.print(table)


@stack_app.command()
def up(
    var_dir: VarDir = None,
    queue: Annotated[
        list[str] | None, typer.Option("--queue", "-q", help="A worker per queue (repeat).")
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option(help="Start only these: redis, triton, workers, gateway (repeat)."),
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            envvar="BODYSERVE_REDIS_URL", help="Use this Redis instead of starting redis-server."
        ),
    ] = None,
    redis_port: int = 6390,
    triton_http_port: int = DEFAULT_HTTP_PORT,
    triton_grpc_port: int = DEFAULT_GRPC_PORT,
    triton_metrics_port: int = DEFAULT_METRICS_PORT,
    gateway_port: Annotated[
        int | None, typer.Option(help="Default: BODYSERVE_GATEWAY_PORT (8000).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each component.")] = 300.0,
    as_json: AsJson = False,
) -> None:
    """Start what is not running yet and wait until every component is ready."""
    try:
        components = parse_components(only)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    config = StackConfig.from_env(
        var_dir=var_dir,
        redis_url=redis_url,
        redis_port=redis_port,
        triton_http_port=triton_http_port,
        triton_grpc_port=triton_grpc_port,
        triton_metrics_port=triton_metrics_port,
        gateway_port=gateway_port,
        queues=list(queue or JOB_QUEUES),
        components=components,
        startup_timeout_s=timeout,
    )
    stack = LocalStack(config)
    try:
        with console.status("starting the local stack (Triton loads its models: ~10-60 s)"):
            report = stack.up()
    except (StackError, TritonNotFound) as exc:
        console.print(f"[red]the stack did not come up:[/] {exc}")
        raise typer.Exit(1) from exc
    _print(report, f"bodyserve stack in {stack.var_dir}", as_json)
    if not as_json and "gateway" in components:
        console.print(f"gateway: {stack.base_url}")


@stack_app.command()
def down(
    var_dir: VarDir = None,
    grace: Annotated[float, typer.Option(help="Seconds between SIGTERM and SIGKILL.")] = 15.0,
    as_json: AsJson = False,
) -> None:
    """Stop every component (SIGTERM, then SIGKILL after the grace period)."""
    stack = LocalStack.open(var_dir)
    _print(stack.down(grace), f"bodyserve stack in {stack.var_dir}", as_json)


@stack_app.command()
def status(var_dir: VarDir = None, as_json: AsJson = False) -> None:
    """Each component: running, pid, ready, URL, log."""
    stack = LocalStack.open(var_dir)
    _print(stack.status(), f"bodyserve stack in {stack.var_dir}", as_json)


@stack_app.command("restart-worker")
def restart_worker(
    queue: Annotated[str, typer.Argument(help="The worker's queue.")] = JOB_QUEUES[0],
    hard: Annotated[bool, typer.Option(help="kill -9 (as a crash) rather than SIGTERM.")] = False,
    var_dir: VarDir = None,
) -> None:
    """Stop and start the Celery worker of one queue."""
    stack = LocalStack.open(var_dir)
    try:
        pid = stack.restart_worker(queue, hard=hard)
    except StackError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    console.print(f"worker {queue} running again, pid {pid}")


@triton_app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind (0.0.0.0 in a container).")] = (
        "127.0.0.1"
    ),
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    model_repository: Annotated[
        Path | None, typer.Option(help="Default: BODYSERVE_MODEL_REPOSITORY.")
    ] = None,
    load_model: Annotated[
        list[str] | None, typer.Option(help="Models loaded at startup (repeat); default all.")
    ] = None,
    log_verbose: int = 0,
    var_dir: VarDir = None,
    dry_run: Annotated[bool, typer.Option(help="Print the command line, do not run it.")] = False,
) -> None:
    """Run tritonserver in the foreground (Triton's own ports 8000-8002 by default).

    The local stack uses 8100-8102 instead, the gateway having 8000.
    """
    try:
        command = triton_command(
            TritonOptions(
                model_repository=model_repository,
                var_dir=var_dir,
                http_port=http_port,
                grpc_port=grpc_port,
                metrics_port=metrics_port,
                address=host,
                load_models=load_model or ["*"],
                log_verbose=log_verbose,
            )
        )
    except TritonNotFound as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    if dry_run:
        for key in ("LD_LIBRARY_PATH", "PATH", "PYTHONPATH"):
            typer.echo(f"{key}={command.env[key]}")
        typer.echo(" ".join(command.argv))
        return
    command.exec()
