"""Synthetic-scene rendering speed: renders per second, one Anny body, with and without posing.

    BODYSERVE_TORCH_THREADS=1 python bench/render.py [--sizes 256,512] [--iterations 60]
                                                    [--supersample 2] [--json out/render.json]
                                                    [--examples /tmp/render_examples]

Per image size, two loops over the same random bodies (pose within limits, phenotype, heading,
a 35 to 70 degree field of view, the body filling 80 % of the frame):

- **render only**: the posed meshes are ready; each iteration draws a look (skin, hair, clothes),
  lighting and a procedural background from a seed and renders RGB, mask, depth and parts
  (:func:`~shared.render.anny_scene.render_random_scene`): what a dataset worker pays per image
  on top of posing.
- **with the Anny forward pass**: each iteration also poses Anny (SMPL-X-convention pose and
  phenotype to the mesh, :func:`~shared.render.anny_scene.pose_anny`) and frames it.

Prints renders per second, wall and CPU milliseconds per render (the process's CPU time,
llvmpipe's threads included: steadier than wall time on a busy machine) and the median
milliseconds of each stage (posing, look, lighting and background, the GL passes with their
read-back and compositing). The numbers depend on
the machine and on what else runs on it (llvmpipe renders on the CPU with as many threads as
cores): on a shared machine, read them as indicative. ``--examples DIR`` also writes a few
renders (RGB, and the part labels in false colour) there.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import apply_torch_threads
from shared.render.anny_scene import (
    anny_scene_body,
    place_in_view,
    pose_anny,
    random_body_pose,
    random_phenotype,
)
from shared.render.appearance import sample_lighting
from shared.render.backgrounds import procedural_background
from shared.render.parts import BODY_PARTS
from shared.render.renderer import MeshRenderer
from shared.render.scene import SceneImage, camera_from_fov, render_scene

console = Console(width=110)
POOL = 16  # distinct random bodies the loops cycle through


def _yaw(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], np.float32)


def _draw_bodies(seed: int, count: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "pose": random_body_pose(rng, count, spread=0.35),
        "phenotype": random_phenotype(rng, count),
        "rotation": np.stack([_yaw(rng.uniform(-math.pi, math.pi)) for _ in range(count)]),
        "fov": rng.uniform(35, 70, count),
    }


def _pose_one(bodies: dict[str, np.ndarray], i: int, size: int) -> tuple[np.ndarray, tuple]:
    vertices = pose_anny(
        bodies["pose"][i : i + 1], bodies["phenotype"][i : i + 1], bodies["rotation"][i : i + 1]
    )[0]
    camera = camera_from_fov(size, size, float(bodies["fov"][i]))
    return vertices + place_in_view(vertices, camera, height=size, width=size), camera


def _render(
    seed: int, vertices: np.ndarray, camera: tuple, size: int, supersample: int, stages: dict
) -> SceneImage:
    """render_random_scene, stage by stage, timed."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    body = anny_scene_body(vertices, rng)
    t1 = time.perf_counter()
    lighting = sample_lighting(rng)
    background = procedural_background(rng, size, size)
    t2 = time.perf_counter()
    scene = render_scene(
        [body],
        camera,
        height=size,
        width=size,
        lighting=lighting,
        background=background,
        supersample=supersample,
    )
    t3 = time.perf_counter()
    stages["look"].append(t1 - t0)
    stages["lighting_background"].append(t2 - t1)
    stages["render"].append(t3 - t2)
    return scene


def measure(size: int, iterations: int, warmup: int, supersample: int, seed: int) -> dict[str, Any]:
    bodies = _draw_bodies(seed, POOL)
    ready = [_pose_one(bodies, i, size) for i in range(POOL)]
    results: dict[str, Any] = {}
    for mode in ("render_only", "with_anny_forward"):
        stages: dict[str, list[float]] = {
            "pose": [],
            "look": [],
            "lighting_background": [],
            "render": [],
        }
        total = cpu = 0.0
        for step in range(warmup + iterations):
            i = step % POOL
            started, cpu_started = time.perf_counter(), time.process_time()
            if mode == "with_anny_forward":
                vertices, camera = _pose_one(bodies, i, size)
                stages["pose"].append(time.perf_counter() - started)
            else:
                vertices, camera = ready[i]
            _render(seed * 1000 + step, vertices, camera, size, supersample, stages)
            if step >= warmup:
                total += time.perf_counter() - started
                cpu += time.process_time() - cpu_started
            else:  # warm-up steps are not counted
                for values in stages.values():
                    if values:
                        values.pop()
        results[mode] = {
            "renders_per_s": iterations / total,
            "ms_per_render": 1000 * total / iterations,
            # CPU time of the whole process (llvmpipe's threads included) per render: what a
            # render costs whatever else the machine runs.
            "cpu_ms_per_render": 1000 * cpu / iterations,
            "median_ms": {
                name: 1000 * statistics.median(values) for name, values in stages.items() if values
            },
        }
    return results


def write_examples(folder: Path, supersample: int, seed: int) -> list[Path]:
    """A few renders at 256 and 512: the RGB and the parts in false colour, side by side."""
    folder.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    palette = np.random.default_rng(0).integers(40, 256, (len(BODY_PARTS) + 1, 3)).astype(np.uint8)
    palette[0] = 0
    bodies = _draw_bodies(seed + 1, 6)
    written = []
    for i in range(6):
        size = 256 if i < 4 else 512
        vertices, camera = _pose_one(bodies, i, size)
        stages: dict[str, list[float]] = {"look": [], "lighting_background": [], "render": []}
        scene = _render(seed + 100 + i, vertices, camera, size, supersample, stages)
        image = np.concatenate([scene.rgb, palette[scene.parts]], axis=1)
        path = folder / f"scene_{size}_{i}.png"
        Image.fromarray(image).save(path)
        written.append(path)
    return written


def main(
    sizes: Annotated[str, typer.Option(help="Square image sizes, comma-separated.")] = "256,512",
    iterations: Annotated[int, typer.Option(help="Timed renders per size and mode.")] = 60,
    warmup: Annotated[int, typer.Option(help="Untimed renders first.")] = 5,
    supersample: Annotated[int, typer.Option(help="Antialiasing factor (1: none).")] = 2,
    seed: Annotated[int, typer.Option(help="Seeds the bodies and the looks.")] = 0,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the figures.")] = None,
    examples: Annotated[Path | None, typer.Option(help="Write example renders here.")] = None,
) -> None:
    threads = apply_torch_threads()
    side_list = [int(s) for s in sizes.split(",") if s.strip()]
    info = MeshRenderer.info()
    figures: dict[str, Any] = {
        "gl_renderer": info.get("GL_RENDERER"),
        "machine": platform.processor() or platform.machine(),
        "torch_threads": threads,
        "supersample": supersample,
        "iterations": iterations,
        "sizes": {},
    }
    for size in side_list:
        with console.status(f"{size}x{size}"):
            figures["sizes"][str(size)] = measure(size, iterations, warmup, supersample, seed)

    table = Table(title=f"Synthetic renders, one Anny body ({figures['gl_renderer']})")
    columns = ("size", "mode", "renders/s", "ms/render", "CPU ms", "pose", "look", "light+bg", "GL")
    for column in columns:
        table.add_column(column, justify="right")
    for size, modes in figures["sizes"].items():
        for mode, row in modes.items():
            median = row["median_ms"]
            table.add_row(
                f"{size}²",
                mode.replace("_", " "),
                f"{row['renders_per_s']:.1f}",
                f"{row['ms_per_render']:.1f}",
                f"{row['cpu_ms_per_render']:.1f}",
                f"{median['pose']:.1f}" if "pose" in median else "-",
                f"{median['look']:.1f}",
                f"{median['lighting_background']:.1f}",
                f"{median['render']:.1f}",
            )
    console.print(table)
    console.print(
        f"torch threads {threads}, supersample {supersample}. ms/render: wall time; CPU ms: "
        "the process's CPU time (llvmpipe's threads included); stages: median wall ms. "
        "On a shared machine the wall times are indicative."
    )
    if examples is not None:
        for path in write_examples(examples, supersample, seed):
            console.print(f"wrote {path}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    typer.run(main)
