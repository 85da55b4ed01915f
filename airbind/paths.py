"""Where the project keeps its caches, so that nothing lands in the user's home by surprise."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """The project's cache folder: ``$AIRBIND_CACHE`` or ``<repo>/.cache``, created on first use."""
    root = Path(os.environ.get("AIRBIND_CACHE", REPO_ROOT / ".cache"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def configure_tool_caches() -> Path:
    """Point DeepSpeed's, Dr.Jit's and Hugging Face's caches into :func:`cache_dir` (unless already set).

    DeepSpeed compiles its shared-memory comm op on first launch (~70 s on a 2-core CPU); keeping
    ``TORCH_EXTENSIONS_DIR`` here lets later runs and CI reuse it.
    """
    root = cache_dir()
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(root / "torch_extensions"))
    os.environ.setdefault("DRJIT_CACHE_DIR", str(root / "drjit"))
    os.environ.setdefault("HF_HOME", str(root / "huggingface"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MPLCONFIGDIR", str(root / "matplotlib"))
    return root


def build_once(final: Path, marker: str, build: Callable[[Path], Any]) -> Path:
    """``final`` if ``final/marker`` exists; else ``build(tmp)`` into a temporary sibling folder, renamed into
    place only when complete (an interrupted build leaves nothing half-written behind)."""
    final = Path(final)
    if (final / marker).is_file():
        return final
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
