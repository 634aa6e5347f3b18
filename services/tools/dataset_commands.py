"""``bodyserve dataset generate SPEC``: a synthetic dataset made in this process.

The same spec as ``POST /v1/datasets`` (a JSON file), the same chunks, shards, card and contact
sheet, written into a folder, with a progress bar. Re-running it into the same folder skips the
shards already made (and checked), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from shared.datasets.spec import DatasetSpec, SpecError, check_inputs
from shared.settings import get_settings

dataset_app = typer.Typer(no_args_is_help=True)
console = Console()


@dataset_app.command("generate")
def generate(
    spec_file: Annotated[Path, typer.Argument(help="The dataset spec, JSON (README).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("out/dataset"),
) -> None:
    """Make a synthetic dataset in-process: WebDataset shards, card, contact sheet."""
    # The renderer, torch and Anny load here, not for every `bodyserve` command.
    from shared.datasets.generate import DatasetMaker, FolderSink

    try:
        spec = DatasetSpec.model_validate_json(spec_file.read_text())
        check_inputs(spec)
    except (OSError, ValidationError, SpecError) as exc:
        raise typer.BadParameter(str(exc), param_hint="SPEC_FILE") from exc
    prior = None
    if spec.poses.source == "prior":
        # The pose prior (torch) loads only for datasets that draw from it.
        from shared.datasets.sampling import prior_sampler
        from shared.inference.local import InProcessBackend

        prior = prior_sampler(InProcessBackend())
    maker = DatasetMaker(spec, prior=prior, cache_dir=get_settings().var_dir / "cache")
    sink = FolderSink(out)
    started = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("images", total=spec.count)
        for chunk in range(spec.chunks):
            start = spec.chunk_range(chunk).start

            def report(done: int, start: int = start) -> None:
                bar.update(task, completed=start + done)

            result = maker.make_chunk(sink, chunk, report)
            bar.update(task, completed=start + result.info.samples)
    elapsed = time.perf_counter() - started
    card = maker.finish(
        sink, stats={"seconds": round(elapsed, 1), "images_per_second": spec.count / elapsed}
    )
    console.print(
        f"{card['images']} images in {len(card['shards'])} shards under {out} "
        f"({spec.count / elapsed:.1f} images/s); card.json, contact_sheet.png"
    )
    console.print(json.dumps({"fingerprint": card["fingerprint"]}))
