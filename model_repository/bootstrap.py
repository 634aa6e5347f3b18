"""Makes ``shared.*`` importable inside Triton's python-backend stub (shared by every model).

The stub embeds Python in isolated mode, which ignores ``PYTHONPATH``: honour it here
(``services.tools.triton_launcher.triton_env`` puts the repo root there), and fall back to the
repository that holds this model repository. Each ``model.py`` loads this file by path,
before importing the project.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def add_project_to_path() -> None:
    entries = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    repo_root = Path(__file__).resolve().parent.parent
    if (repo_root / "shared" / "__init__.py").exists():
        entries.append(str(repo_root))
    for entry in reversed(entries):
        if entry not in sys.path:
            sys.path.insert(0, entry)


add_project_to_path()
