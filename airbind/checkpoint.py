"""Checkpoints without pickle: tensors in ``.safetensors``, everything else in JSON.

A checkpoint is a directory (DESIGN.md): ``config.json`` (the dataclass that built the model, plus package
versions), ``model.safetensors``, optimizer state only where resuming needs it (``optimizer-rank{r}``
.safetensors/.json), and ``trainer_state.json``. Directories are written under a temporary name and renamed
when complete; ``latest`` names the newest one.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file


def flatten_state(obj: Any, prefix: str = "s") -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state (dicts, lists, tuples, tensors, numbers, strings) into tensors and a JSON
    skeleton; dict keys keep their type (optimizer states key parameters by int)."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(x: Any, path: str) -> Any:
        if isinstance(x, torch.Tensor):
            tensors[path] = x.detach().cpu().contiguous()
            return {"__tensor__": path}
        if isinstance(x, dict):
            return {"__dict__": [[k, walk(v, f"{path}.{k}")] for k, v in x.items()]}
        if isinstance(x, (list, tuple)):
            items = [walk(v, f"{path}.{i}") for i, v in enumerate(x)]
            return {"__tuple__": items} if isinstance(x, tuple) else items
        if isinstance(x, torch.dtype):
            return {"__dtype__": str(x).removeprefix("torch.")}
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"cannot store {type(x).__name__} at {path} in a checkpoint")

    return tensors, walk(obj, prefix)


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {k: unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
        if "__dtype__" in skeleton:
            return getattr(torch, skeleton["__dtype__"])
    return skeleton


def save_state(path_stem: Path, state: Any) -> None:
    """``<stem>.safetensors`` + ``<stem>.json``."""
    tensors, skeleton = flatten_state(state)
    save_file(tensors, f"{path_stem}.safetensors")
    Path(f"{path_stem}.json").write_text(json.dumps(skeleton))


def load_state(path_stem: Path) -> Any:
    skeleton = json.loads(Path(f"{path_stem}.json").read_text())
    return unflatten_state(skeleton, load_file(f"{path_stem}.safetensors"))


def versions() -> dict[str, str]:
    import importlib.metadata as md
    out = {}
    for pkg in ("torch", "deepspeed", "timm", "open_clip_torch", "transformers", "peft", "webdataset", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


class CheckpointDir:
    """Write one checkpoint directory atomically; several ranks may add their own files before commit."""

    def __init__(self, root: Path, name: str):
        self.root, self.name = Path(root), name
        self.final = self.root / name
        self.tmp = self.root / f".{name}.partial"

    def begin(self) -> Path:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def commit(self) -> Path:
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.tmp, self.final)
        (self.root / "latest").write_text(self.name + "\n")
        return self.final


def check_world_size(ckpt: Path, world_size: int) -> None:
    """Resuming needs the rank count the checkpoint was written with (each rank reads its own optimizer file)."""
    saved = json.loads((Path(ckpt) / "config.json").read_text()).get("world_size", 1)
    if saved != world_size:
        raise ValueError(f"{ckpt}: saved with {saved} ranks, resuming with {world_size}; "
                         "resume with the same number of ranks")


def check_same_options(ckpt: Path, saved: dict[str, Any], now: dict[str, Any]) -> None:
    """Resuming needs the options that built the model: refuse when one of ``now`` (``asdict`` of the model's
    config) differs from the checkpoint's ``saved`` one, naming each (compared as the JSON they are saved as)."""
    def same(a: Any, b: Any) -> bool:
        return json.dumps(a, default=str) == json.dumps(b, default=str)
    diff = sorted(k for k in now if k in saved and not same(saved[k], now[k]))
    if diff:
        detail = "; ".join(f"{k}: saved {saved[k]!r}, now {now[k]!r}" for k in diff)
        raise ValueError(f"{ckpt}: cannot resume, the model options differ from the checkpoint's ({detail}); "
                         "pass the options it was trained with")


def write_by_ranks(root: Path, name: str, rank: int, barrier: Callable[[], None],
                   every_rank: Callable[[Path], None], rank_zero: Callable[[Path], None]) -> Path | None:
    """One checkpoint written by all ranks: rank 0 opens the partial directory, every rank adds its own files
    (``every_rank(dir)``: its optimizer partition), rank 0 the shared ones (``rank_zero(dir)``: weights, config,
    trainer state), then rank 0 commits it. Ranks wait for each other between the steps, so no rank leaves
    before the checkpoint is complete. Returns the final directory on rank 0, None on the others."""
    ckpt = CheckpointDir(root, name)
    if rank == 0:
        ckpt.begin()
    barrier()
    every_rank(ckpt.tmp)
    if rank == 0:
        rank_zero(ckpt.tmp)
    barrier()
    final = ckpt.commit() if rank == 0 else None
    barrier()
    return final


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (``latest`` pointer), or None."""
    pointer = Path(root) / "latest"
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text().strip()
    return path if (path / "model.safetensors").is_file() else None


def find_checkpoint(path: Path) -> Path | None:
    """``path`` when it is a checkpoint directory (holds model.safetensors), else the latest checkpoint of the
    run folder ``path``, else None."""
    path = Path(path)
    return path if (path / "model.safetensors").is_file() else latest(path / "checkpoints")


def checkpoint_at(path: Path, what: str = "") -> Path:
    """:func:`find_checkpoint`, raising an error that names ``path`` when there is none (``what``: e.g. "stage-two")."""
    ckpt = find_checkpoint(path)
    if ckpt is None:
        kind = f"{what} " if what else ""
        raise FileNotFoundError(f"{path}: no {kind}checkpoint (expected model.safetensors or checkpoints/latest; "
                                "train one first, e.g. make demo, or pass its path)")
    return ckpt


def load_model_weights(model: torch.nn.Module, ckpt: Path, strict: bool = True, prefix: str = "") -> list[str]:
    """Load ``model.safetensors`` (optionally only the keys under ``prefix``); returns missing keys."""
    path = Path(ckpt) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model weights in this checkpoint")
    state = load_file(path)
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        result = model.load_state_dict(state, strict=strict)
    except RuntimeError as e:  # shapes (or, strict, keys) that do not fit: e.g. a checkpoint of older code
        raise RuntimeError(f"{path}: these weights do not fit the model ({e})") from e
    return list(result.missing_keys)
