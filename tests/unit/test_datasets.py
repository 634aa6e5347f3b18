"""Synthetic datasets in-process: specs, determinism, idempotent chunks, exact labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from shared.datasets.check import check_sample
from shared.datasets.generate import CARD_NAME, CONTACT_SHEET_NAME, DatasetMaker, FolderSink
from shared.datasets.shards import iter_samples, samples_from_bytes
from shared.datasets.spec import DatasetSpec, SpecError, check_inputs


def _spec(**changes: object) -> DatasetSpec:
    values: dict[str, object] = {
        "count": 6,
        "resolution": 96,
        "shard_size": 3,
        "seed": 11,
        "poses": {"source": "uniform"},
    }
    return DatasetSpec.model_validate(values | changes)


def test_a_sample_depends_on_its_index_alone(tmp_path: Path) -> None:
    """The same sample in any batch: every draw is a function of the index. (Byte for byte
    when made in the same batch, as a chunk re-made is; across batch sizes torch's batched
    arithmetic may differ in the last float bit.)"""
    from shared.datasets.shards import decode_record

    maker = DatasetMaker(_spec())
    alone = maker.samples([3])[0]
    assert maker.samples([3])[0] == alone
    batched = decode_record(maker.samples([0, 1, 2, 3])[3])
    single = decode_record(alone)
    assert np.abs(batched["rgb"].astype(int) - single["rgb"]).mean() < 0.5
    assert np.abs(batched["depth"] - single["depth"]).max() <= 1.001e-3  # one millimetre step
    a, b = batched["labels"]["joints3d"], single["labels"]["joints3d"]
    assert np.allclose(a, b, atol=1e-5)
    other_seed = DatasetMaker(_spec(seed=12)).samples([3])
    assert other_seed[0]["rgb.jpg"] != alone["rgb.jpg"]


def test_chunks_are_idempotent_and_the_dataset_is_complete(tmp_path: Path) -> None:
    spec = _spec()
    maker = DatasetMaker(spec)
    sink = FolderSink(tmp_path)
    first = maker.make_chunk(sink, 0)
    assert first.made and first.info.samples == 3
    again = maker.make_chunk(sink, 0)
    assert not again.made and again.info == first.info
    # A damaged shard is made again, byte for byte the same.
    original = (tmp_path / first.info.name).read_bytes()
    (tmp_path / first.info.name).write_bytes(original[:1000])
    assert maker.make_chunk(sink, 0).made
    assert (tmp_path / first.info.name).read_bytes() == original

    with pytest.raises(RuntimeError, match=r"chunks \[1\]"):
        maker.finish(sink)
    maker.make_chunk(sink, 1)
    card = maker.finish(sink)
    assert card["images"] == 6 and [s["samples"] for s in card["shards"]] == [3, 3]
    assert json.loads((tmp_path / CARD_NAME).read_text())["fingerprint"] == spec.fingerprint()
    assert (tmp_path / CONTACT_SHEET_NAME).read_bytes()[:4] == b"\x89PNG"
    keys = [s["key"] for shard in card["shards"] for s in iter_samples(tmp_path / shard["name"])]
    assert keys == [f"{i:08d}" for i in range(6)]


def test_labels_are_exact(tmp_path: Path) -> None:
    spec = _spec(count=4, shard_size=4, resolution=160, shapes={"preset": "everyone"})
    maker = DatasetMaker(spec)
    sink = FolderSink(tmp_path)
    info = maker.make_chunk(sink, 0).info
    for sample in samples_from_bytes((tmp_path / info.name).read_bytes()):
        report = check_sample(sample, vertex_stride=8)
        assert report.ok, (sample["key"], report.problems)
        labels = sample["labels"]
        coco = np.asarray(labels["keypoints2d"]["coco17"])
        assert coco.shape == (17, 3) and set(coco[:, 2]) <= {0, 1, 2}
        assert (coco[:, 2] == 2).sum() >= 5  # a person in view shows most of its keypoints
        assert len(labels["smplx"]["body_pose"]) == 21 and len(labels["joints3d"]) == 22
        x0, y0, x1, y1 = labels["bbox"]
        assert sample["mask"][y0:y1, x0:x1].sum() == sample["mask"].sum()
        assert set(np.unique(sample["parts"][sample["mask"]])) - {0} <= set(range(1, 15))


def test_mocap_poses_come_from_the_folder(tmp_path: Path) -> None:
    fixtures = Path(__file__).parent.parent / "fixtures"
    spec = _spec(count=2, poses={"source": "mocap", "folder": "mocap"})
    check_inputs(spec, root=fixtures)
    maker = DatasetMaker(spec, cache_dir=tmp_path, input_root=fixtures)
    records = maker.samples([0, 1])
    body_pose = np.asarray(json.loads(records[0]["json"])["smplx"]["body_pose"])
    assert body_pose.shape == (21, 3) and np.abs(body_pose).max() > 0.05
    assert list(tmp_path.glob("mocap-poses-*.npy"))  # ingested once, then read


def test_spec_errors_say_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="over the limit"):
        _spec(count=10**9)
    with pytest.raises(ValidationError, match="low <= high"):
        _spec(shapes={"ranges": {"age": [0.9, 0.2]}})
    with pytest.raises(ValidationError, match="applies to generator 'diffusion' only"):
        _spec(prompt="a skier")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match="holds no images"):
        check_inputs(_spec(backgrounds={"source": "folder", "folder": "empty"}), root=tmp_path)
    with pytest.raises(SpecError, match=r"without '\.\.'"):
        check_inputs(_spec(backgrounds={"source": "folder", "folder": "../x"}), root=tmp_path)


def test_background_folder_images_are_used(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "backgrounds"
    folder.mkdir()
    Image.fromarray(np.full((40, 60, 3), (250, 0, 0), np.uint8)).save(folder / "red.png")
    spec = _spec(count=1, backgrounds={"source": "folder", "folder": "backgrounds"})
    record = DatasetMaker(spec, input_root=tmp_path).samples([0])[0]
    sample = next(samples_from_bytes_one(record))
    background = sample["rgb"][~sample["mask"]].astype(int)
    assert (background[:, 0] > 200).mean() > 0.9 and (background[:, 1] < 40).mean() > 0.9


def samples_from_bytes_one(record: dict) -> object:
    from shared.datasets.shards import decode_record

    yield decode_record(record)


def test_cli_generates_and_resumes(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from services.tools.cli import app

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"count": 5, "resolution": 64, "shard_size": 2, "seed": 2,
                                "poses": {"source": "uniform"}, "name": "cli"}))  # fmt: skip
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["dataset", "generate", str(spec), "-o", str(out)])
    assert result.exit_code == 0, result.output
    shards = sorted(out.glob("cli-*.tar"))
    assert [p.name for p in shards] == ["cli-000000.tar", "cli-000001.tar", "cli-000002.tar"]
    made = {p: p.stat().st_mtime_ns for p in shards}
    again = CliRunner().invoke(app, ["dataset", "generate", str(spec), "-o", str(out)])
    assert again.exit_code == 0, again.output
    assert {p: p.stat().st_mtime_ns for p in shards} == made  # found made, not made again
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"count": 5, "resolution": 9999}))
    refused = CliRunner().invoke(app, ["dataset", "generate", str(bad)])
    assert refused.exit_code != 0 and "resolution" in refused.output


def test_diffusion_generator_paints_over_the_bodys_depth(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    from shared.datasets.shards import decode_record
    from shared.diffusion.loop import depth_painter
    from shared.diffusion.pipelines import load_pipelines
    from shared.diffusion.tiny import build_tiny_pipelines

    pipelines = load_pipelines(build_tiny_pipelines(tmp_path / "weights"))
    spec = _spec(generator="diffusion", prompt="a person", resolution=64)
    seen: list[np.ndarray] = []
    paint = depth_painter(pipelines, "a person", 64, steps=2)

    def painter(depth: np.ndarray, seed: int) -> np.ndarray:
        seen.append(depth)
        return paint(depth, seed)

    painted = decode_record(DatasetMaker(spec, painter=painter).samples([1])[0])
    rendered = decode_record(DatasetMaker(_spec(resolution=64)).samples([1])[0])
    assert painted["rgb"].shape == (64, 64, 3)
    assert np.abs(painted["rgb"].astype(int) - rendered["rgb"]).mean() > 10  # painted, not drawn
    # The labels, mask and depth are the body's, and that depth is what the painter followed.
    assert painted["labels"]["joints3d"] == rendered["labels"]["joints3d"]
    assert (painted["mask"] == rendered["mask"]).all()
    assert np.abs(seen[0] - painted["depth"]).max() <= 0.5e-3
    again = decode_record(DatasetMaker(spec, painter=painter).samples([1])[0])
    assert (again["rgb"] == painted["rgb"]).all()
    with pytest.raises(ValidationError, match="needs a prompt"):
        _spec(generator="diffusion")
    with pytest.raises(ValueError, match="needs a painter"):
        DatasetMaker(spec)
