"""Sync the image's Triton model repository into the model-repository volume.

Triton's init container runs it at every start (``triton.yaml``; kustomization.yaml mounts this
file from a ConfigMap):

- every file of the image's repository is written into the volume where its content differs,
  so an upgraded image brings its model code and configs;
- files that only the volume has are kept: the pose_prior versions the trainer published, and
  the ones Triton rejected (``pose_prior/.rejected/``);
- with ``--instance-kind KIND_GPU``, every ``instance_group`` of every ``config.pbtxt`` runs on
  the GPU: the repository ships ``KIND_CPU`` for CPU-only machines, and each model.py moves its
  torch work to the device Triton gives the instance.

Each file is written under a temporary name and renamed, so a Triton replica reading the
repository at that moment never sees half a file.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

INSTANCE_KIND = re.compile(r"(\bkind\s*:\s*)KIND_(?:CPU|GPU)\b")
SKIPPED = {"__pycache__", ".rejected"}


def wanted(path: Path, instance_kind: str | None) -> bytes:
    """The content ``path`` (a file of the image's repository) should have in the volume."""
    data = path.read_bytes()
    if instance_kind and path.name == "config.pbtxt":
        text = INSTANCE_KIND.sub(rf"\g<1>{instance_kind}", data.decode())
        data = text.encode()
    return data


def sync(source: Path, target: Path, instance_kind: str | None = None) -> list[Path]:
    """Write every file of ``source`` into ``target`` where it differs; the paths written."""
    written = []
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if not path.is_file() or SKIPPED & set(relative.parts) or path.suffix == ".pyc":
            continue
        data = wanted(path, instance_kind)
        dest = target / relative
        if dest.is_file() and dest.read_bytes() == data:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.seed-tmp")
        tmp.write_bytes(data)
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, dest)
        written.append(relative)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("/app/model_repository"))
    parser.add_argument("--target", type=Path, required=True)
    parser.add_argument(
        "--instance-kind",
        choices=["KIND_GPU", "KIND_CPU"],
        help="Set every model's instance_group kind (default: as the image has it).",
    )
    args = parser.parse_args(argv)
    if not (args.source / "bootstrap.py").is_file():
        parser.error(f"{args.source} is not bodyserve's model repository")
    written = sync(args.source, args.target, args.instance_kind)
    for relative in written:
        print(f"seeded {relative}")
    print(f"{len(written)} file(s) written into {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
