"""Names that reach the file system are matched whole: a trailing newline is no valid name."""

from __future__ import annotations

import pytest

from shared.schemas.artifacts import artifact_content_type
from shared.storage import check_job_id, check_name

JOB_ID = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("name", ["mesh.glb\n", "mesh.glb\r\n", "\nmesh.glb", "mesh.glb\x00"])
def test_artifact_names_with_line_breaks_or_nul_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid artifact name"):
        check_name(name)
    assert check_name("mesh.glb") == "mesh.glb"


def test_job_ids_are_matched_whole() -> None:
    assert check_job_id(JOB_ID) == JOB_ID
    with pytest.raises(ValueError, match="invalid job id"):
        check_job_id(JOB_ID + "\n")


@pytest.mark.parametrize(
    ("capability", "name"),
    [
        ("dataset_generation", "synthetic-000000.tar"),
        ("dataset_generation", "synthetic-000000.json"),
        ("image_generation", "image-000.png"),
        ("mesh_recovery", "mesh.glb"),
    ],
)
def test_served_artifact_names_are_matched_whole(capability: str, name: str) -> None:
    assert artifact_content_type(capability, name) is not None
    assert artifact_content_type(capability, name + "\n") is None
