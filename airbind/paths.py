"""Where the project keeps its caches, so that nothing lands in the user's home by surprise."""
from __future__ import annotations

import os
from pathlib import Path

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
