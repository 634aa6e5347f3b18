"""A dataset's input folders: named relative to the input folder, never a way out of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.datasets.spec import MAX_NAME_BYTES, DatasetSpec, SpecError, check_inputs
from shared.mocap.dataset import build_dataset
from shared.render.backgrounds import BackgroundFolder
from shared.settings import get_settings


def _spec(folder: str) -> DatasetSpec:
    return DatasetSpec.model_validate(
        {"count": 4, "backgrounds": {"source": "folder", "folder": folder}}
    )


@pytest.mark.parametrize(
    ("folder", "message"),
    [
        ("a\x00b", "printable characters"),
        ("a\nb", "printable characters"),
        ("x" * (MAX_NAME_BYTES + 1), f"at most {MAX_NAME_BYTES} bytes"),
        ("ok/" + "é" * 128, f"at most {MAX_NAME_BYTES} bytes"),  # 256 bytes in UTF-8
    ],
)
def test_names_the_file_system_would_choke_on_are_a_spec_error(
    tmp_path: Path, folder: str, message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        check_inputs(_spec(folder), root=tmp_path)


def test_messages_name_the_folder_as_given_not_the_servers_path(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for folder in ("missing", "empty"):
        with pytest.raises(SpecError) as error:
            check_inputs(_spec(folder), root=tmp_path)
        assert repr(folder) in str(error.value)
        assert str(tmp_path) not in str(error.value)


def test_a_linked_file_that_leads_outside_is_never_read(tmp_path: Path) -> None:
    inside, outside = tmp_path / "inputs" / "bg", tmp_path / "elsewhere"
    inside.mkdir(parents=True)
    outside.mkdir()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(outside / "secret.png")
    (inside / "link.png").symlink_to(outside / "secret.png")
    # Only the linked file: as if the folder held no image at all.
    with pytest.raises(SpecError, match="holds no images"):
        check_inputs(_spec("bg"), root=tmp_path / "inputs")
    Image.fromarray(np.full((8, 8, 3), 50, np.uint8)).save(inside / "own.png")
    (inside / "local.png").symlink_to(inside / "own.png")  # a link inside the folder is fine
    check_inputs(_spec("bg"), root=tmp_path / "inputs")
    assert [p.name for p in BackgroundFolder(inside).paths] == ["local.png", "own.png"]


def test_mocap_inputs_skip_files_linked_from_outside(tmp_path: Path) -> None:
    folder, outside = tmp_path / "mocap", tmp_path / "elsewhere"
    folder.mkdir()
    outside.mkdir()
    clips = get_settings().data_dir / "mocap" / "cmu_daz__Przestr-motion-capture" / "09"
    if not clips.is_dir():
        pytest.skip(f"the CMU mocap is not at {clips} (set BODYSERVE_DATA_DIR)")
    clip = clips / "09_02.bvh"
    (outside / clip.name).write_bytes(clip.read_bytes())
    (folder / clip.name).symlink_to(outside / clip.name)
    with pytest.raises(ValueError, match=r"no \.bvh or \.npz files"):
        build_dataset(folder, inside_only=True)
    assert len(build_dataset(folder).body_pose) > 0  # the trainer's own folders may link
